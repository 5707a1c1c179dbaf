"""`negrl-pretrain`: pretrain a built-in-vocabulary model on generated letter text, before the experiment.

    negrl-pretrain --model tiny-h128 --steps 2000 --out pretrained/tiny-h128
    python train.py model=tiny-h128 model.init=pretrained model.path=pretrained/tiny-h128

Pretrained Pythia models arrive at phase 1 already able to memorise strings fast and to copy
from context; a random-init `tiny` model cannot. This gives a tiny model those two skills on a
generated corpus over the 26 letters (no prefix token ever appears, and a password of a run is
never in it, but by a 26^-16 coincidence):

- memorise: 64-letter sequences made of 4 strings of 16 letters drawn from a fixed pool of
  `--pool` random strings, each seen many times;
- copy: a fresh random 16-letter string, then the same string again, twice per sequence.

Half the sequences are of each kind, drawn from `--seed` (independent of any run's seed). The
training is next-token prediction with negrl's own log-probs, AdamW and warm-up/cosine schedule.
The output is a `save_pretrained()` directory plus `pretraining.json` (the settings, the loss
curve, and held-out accuracy on each kind).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from negrl.backbone import PythiaBackbone
from negrl.cli import CONF_DIR
from negrl.errors import NegrlError
from negrl.objectives import ntp_loss
from negrl.phases import OptimSettings
from negrl.schedule import warmup_cosine
from negrl.vocab import ALPHABET

BLOCK = 16  # letters per string: a password's length
BLOCKS = 4  # strings per sequence


class LetterCorpus:
    """The generated pretraining text: memorise (strings from a fixed pool) and copy sequences."""

    def __init__(self, n_letters: int, pool: int, seed: int):
        self.n_letters = n_letters
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.integers(0, n_letters, size=(pool, BLOCK))

    def memorise(self, n: int) -> np.ndarray:
        """n sequences of BLOCKS pool strings each: [n, BLOCKS * BLOCK]."""
        picks = self.rng.integers(0, len(self.pool), size=(n, BLOCKS))
        return self.pool[picks].reshape(n, BLOCKS * BLOCK)

    def copy(self, n: int) -> np.ndarray:
        """n sequences `s s t t` of fresh random strings s, t: [n, BLOCKS * BLOCK]."""
        fresh = self.rng.integers(0, self.n_letters, size=(n, BLOCKS // 2, 1, BLOCK))
        return np.repeat(fresh, 2, axis=2).reshape(n, BLOCKS * BLOCK)

    def batch(self, n: int) -> torch.Tensor:
        """n sequences, the first half memorise and the second half copy, as token ids."""
        return torch.from_numpy(np.concatenate([self.memorise(n // 2), self.copy(n - n // 2)]))


def load_architecture(model: str) -> dict[str, Any]:
    """conf/model/NAME.yaml's architecture (with its defaults); only built-in-vocabulary models."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            cfg = compose(config_name="config", overrides=[f"model={model}"])
        except MissingConfigException:
            names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
            raise NegrlError(f"--model={model} is unknown; choose one of: {', '.join(names)}") from None
    m = OmegaConf.to_container(cfg.model, resolve=True)
    if m.get("vocab") != "builtin":
        raise NegrlError(f"--model={model} uses a tokenizer vocabulary; pretrain only built-in ones (tiny, tiny-h*)")
    return m["architecture"]


def letter_accuracy(backbone: PythiaBackbone, tokens: torch.Tensor, positions: list[int]) -> float:
    """Greedy next-token accuracy at the given token positions (each >= 1) of every sequence."""
    with torch.inference_mode():
        predicted = backbone.next_token_logits(tokens).argmax(-1)
    index = torch.tensor(positions)
    return (predicted[:, index - 1] == tokens[:, index]).float().mean().item()


def pretrain(model: str, steps: int, out: Path, *, pool: int, seed: int, batch: int, lr: float) -> dict[str, Any]:
    """Train, save to `out`, return the record written to out/pretraining.json."""
    architecture = load_architecture(model)
    n_letters = len(ALPHABET)
    backbone = PythiaBackbone.random_init(architecture, seed)
    corpus = LetterCorpus(n_letters, pool, seed)
    optim = OptimSettings(lr=lr, warmup_steps=min(100, steps // 10))
    opt = optim.adamw(backbone.trainable_parameters())
    schedule = LambdaLR(opt, warmup_cosine(optim.warmup_steps, steps, "decay"))
    curve, started = [], time.perf_counter()
    for step in range(steps):
        loss = ntp_loss(backbone.token_logprobs(corpus.batch(batch)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.trainable_parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            curve.append({"step": step, "loss": loss.item()})
            print(f"negrl-pretrain: step {step}/{steps} loss {loss.item():.4f}", flush=True)
    # Held-out figures: pool strings after their first 3 letters (which identify one of the pool's
    # strings), and the second copy of fresh strings; chance is 1/26 for both.
    blocks = range(0, BLOCK * BLOCKS, BLOCK)
    accuracy = {
        "memorise": letter_accuracy(
            backbone, torch.from_numpy(corpus.memorise(256)), [b + i for b in blocks for i in range(3, BLOCK)]
        ),
        "copy_second_string": letter_accuracy(
            backbone, torch.from_numpy(corpus.copy(256)), [b + i for b in blocks[1::2] for i in range(BLOCK)]
        ),
        "chance": 1 / n_letters,
    }
    record = {
        "model": model, "architecture": architecture, "steps": steps, "batch": batch, "lr": lr,
        "pool": pool, "seed": seed, "sequence_length": BLOCK * BLOCKS, "wall_time_s": time.perf_counter() - started,
        "loss_curve": curve, "accuracy": accuracy,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    backbone.model.save_pretrained(out)
    (out / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a built-in-vocabulary model: tiny, tiny-h128, tiny-h256")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", required=True, help="the checkpoint directory to write (must not exist)")
    parser.add_argument("--pool", type=int, default=2048, help="strings in the memorise pool")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        for key in ("steps", "pool", "batch"):
            if getattr(args, key) < 1:
                raise NegrlError(f"--{key}={getattr(args, key)} must be at least 1")
        if not args.lr > 0:
            raise NegrlError(f"--lr={args.lr} must be positive")
        out = Path(args.out)
        if out.exists():
            raise NegrlError(f"--out={out} already exists; give a new directory")
        record = pretrain(args.model, args.steps, out, pool=args.pool, seed=args.seed, batch=args.batch, lr=args.lr)
    except NegrlError as err:
        print(f"negrl-pretrain: error: {err}", file=sys.stderr)
        return 2
    acc = record["accuracy"]
    print(
        f"negrl-pretrain: wrote {out} in {record['wall_time_s']:.0f} s; accuracy on pool strings "
        f"{acc['memorise']:.3f}, on the second copy of fresh strings {acc['copy_second_string']:.3f} "
        f"(chance {acc['chance']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

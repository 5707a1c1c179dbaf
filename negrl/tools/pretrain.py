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
training is next-token prediction through the phases' own Trainer, step, AdamW and warm-up/cosine schedule.
The output is a `save_pretrained()` directory plus `pretraining.json` (the settings, the loss
curve, and held-out accuracy on each kind).

Bad arguments (a number out of its range, an `--out` that exists or cannot be created) exit
with code 2 and one line on stderr before any work; a non-finite loss stops training with
code 1. Either way nothing is written.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from negrl.core.errors import NegrlError, RunFailed
from negrl.method.objectives import ntp_loss
from negrl.method.phases import OptimSettings, PhaseModule
from negrl.model.backbone import Backbone
from negrl.model.vocab import ALPHABET
from negrl.run.config import CONF_DIR, SEED_MAX
from negrl.run.rundir import as_umask_allows
from negrl.run.runner import make_trainer, quiet_lightning

BLOCK = 16  # letters per string: a password's length
BLOCKS = 4  # strings per sequence
#: Lightning settings of the pretraining Trainer (its own progress lines instead of a bar).
TRAINER = {"accelerator": "auto", "devices": 1, "precision": "32-true", "enable_progress_bar": False}


@dataclass(frozen=True)
class Integer:
    """An integer argument in [low, high] (no upper bound: None); `why` says where the bounds come from."""

    default: int
    low: int
    high: int | None = None
    why: str = ""

    def describe(self) -> str:
        span = f"of at least {self.low}" if self.high is None else f"from {self.low} to {self.high}"
        return f"an integer {span}{self.why}"

    def parse(self, flag: str, text: str) -> int:
        """The value of `flag=text`, or a NegrlError naming it and the range."""
        try:
            value = int(text)
        except ValueError:
            raise NegrlError(f"{flag}={text} is not an integer; give {self.describe()}") from None
        if value < self.low:
            raise NegrlError(f"{flag}={text} must be at least {self.low}; give {self.describe()}")
        if self.high is not None and value > self.high:
            raise NegrlError(f"{flag}={text} must be at most {self.high}; give {self.describe()}")
        return value


@dataclass(frozen=True)
class PositiveFloat:
    """A finite number > 0."""

    default: float

    def describe(self) -> str:
        return "a finite number > 0"

    def parse(self, flag: str, text: str) -> float:
        """The value of `flag=text`, or a NegrlError naming it."""
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise NegrlError(f"{flag}={text} must be a finite positive number, e.g. {flag}={self.default:g}")
        return value


#: Every numeric argument: its help, type, default and range, checked before any work.
NUMBERS: dict[str, tuple[str, Integer | PositiveFloat]] = {
    "steps": ("training steps", Integer(2000, 1)),
    "pool": ("strings in the memorise pool", Integer(2048, 1, 10**6, " (the pool is held in memory)")),
    "batch": ("sequences per step", Integer(64, 1, 4096, " (a batch is held in memory)")),
    "lr": ("peak learning rate", PositiveFloat(1e-3)),
    "seed": (
        "seed of the corpus and the initial weights",
        Integer(0, 0, SEED_MAX, " (the range of numpy and torch seeds)"),
    ),
}


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


def load_architecture(model: str) -> tuple[str, dict[str, Any]]:
    """conf/model/NAME.yaml's model type and architecture (with its defaults); only built-in-vocabulary models."""
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
    return m["model_type"], m["architecture"]


def letter_accuracy(backbone: Backbone, tokens: torch.Tensor, positions: list[int]) -> float:
    """Greedy next-token accuracy at the given token positions (each >= 1) of every sequence."""
    with torch.inference_mode():
        predicted = backbone.next_token_logits(tokens).argmax(-1)
    index = torch.tensor(positions)
    return (predicted[:, index - 1] == tokens[:, index]).float().mean().item()


class PretrainPhase(PhaseModule):
    """Next-token prediction on the letter corpus, through the phases' own training step."""

    phase, name = 0, "pretraining"

    def compute_loss(self, batch, reference=None):
        loss = ntp_loss(self.backbone.token_logprobs(batch["text"]))
        return loss, {}

    def non_finite_message(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], step: int, precision: str) -> str:
        return f"non-finite loss {loss.item()} at step {step}; lower --lr (it is {self.optim.lr:g})"


class CorpusBatches(Dataset):
    """`steps` batches of the corpus, drawn in order as the loader asks for them."""

    def __init__(self, corpus: LetterCorpus, steps: int, batch: int):
        self.corpus, self.steps, self.batch = corpus, steps, batch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"text": self.corpus.batch(self.batch)}


class LossCurve(Callback):
    """The loss every 100 steps and at the last one, printed and kept."""

    def __init__(self, steps: int):
        self.steps, self.points = steps, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx % 100 == 0 or batch_idx == self.steps - 1:
            loss = float(pl_module.metrics_row["train/loss"])
            self.points.append({"step": batch_idx, "loss": loss})
            print(f"negrl-pretrain: step {batch_idx}/{self.steps} loss {loss:.4f}", flush=True)


def pretrain(model: str, steps: int, out: Path, *, pool: int, seed: int, batch: int, lr: float) -> dict[str, Any]:
    """Train, save to `out`, return the record written to out/pretraining.json."""
    model_type, architecture = load_architecture(model)
    n_letters = len(ALPHABET)
    backbone = Backbone.random_init(architecture, seed, model_type)
    corpus = LetterCorpus(n_letters, pool, seed)
    optim = OptimSettings(lr=lr, warmup_steps=min(100, steps // 10), cosine_over="decay")
    curve, started = LossCurve(steps), time.perf_counter()
    loader = DataLoader(CorpusBatches(corpus, steps, batch), batch_size=None, shuffle=False)
    with quiet_lightning(), tempfile.TemporaryDirectory() as root:
        trainer = make_trainer(TRAINER, optim.grad_clip, steps, [curve], Path(root))
        trainer.fit(PretrainPhase(backbone, optim=optim, total_steps=steps), train_dataloaders=loader)
    backbone.cpu()
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
        "loss_curve": curve.points, "accuracy": accuracy,
    }  # fmt: skip
    save(backbone, record, out)
    return record


def check_out(out: Path) -> None:
    """`--out` must be a new directory that can be created: its nearest existing parent a writable directory."""
    if out.exists() or out.is_symlink():
        raise NegrlError(f"--out={out} already exists; give a new directory")
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise NegrlError(f"--out={out} cannot be created: {parent} is a file; give a path under a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NegrlError(f"--out={out} cannot be created: {parent} is not writable; give a directory you can write to")


def save(backbone: Backbone, record: dict[str, Any], out: Path) -> None:
    """Write the checkpoint and pretraining.json to the new directory `out`, whole or not at all."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise RunFailed(f"cannot write --out={out}: {err.strerror}; give a directory you can write to") from None
    try:
        backbone.model.save_pretrained(staging)
        (staging / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            raise FileExistsError(errno.EEXIST, "it appeared during training")
        as_umask_allows(staging)
        staging.rename(out)
    except OSError as err:
        raise RunFailed(f"cannot write --out={out}: {err.strerror}; give a new directory you can write to") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are NegrlErrors, so that they too are one line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise NegrlError(f"{message}; see {self.prog} --help")


def parse_args(argv: list[str] | None) -> tuple[str, Path, dict[str, int | float]]:
    """The model, the output directory and the numeric settings, all checked: nothing is done yet."""
    parser = Parser(prog="negrl-pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="a built-in-vocabulary model: tiny, tiny-h128, tiny-h256")
    parser.add_argument("--out", required=True, help="the checkpoint directory to write (must not exist)")
    for name, (text, spec) in NUMBERS.items():
        parser.add_argument(
            f"--{name}", default=str(spec.default), help=f"{text}: {spec.describe()}; default {spec.default:g}"
        )
    args = parser.parse_args(argv)
    numbers = {name: spec.parse(f"--{name}", getattr(args, name)) for name, (_, spec) in NUMBERS.items()}
    out = Path(args.out)
    check_out(out)
    return args.model, out, numbers


def main(argv: list[str] | None = None) -> int:
    """The console script: 0 after writing the checkpoint, 2 on bad input, 1 on a failed run."""
    try:
        model, out, numbers = parse_args(argv)
        record = pretrain(model, out=out, **numbers)
    except (NegrlError, RunFailed) as err:
        print(f"negrl-pretrain: error: {err}", file=sys.stderr)
        return err.exit_code
    acc = record["accuracy"]
    print(
        f"negrl-pretrain: wrote {out} in {record['wall_time_s']:.0f} s; accuracy on pool strings "
        f"{acc['memorise']:.3f}, on the second copy of fresh strings {acc['copy_second_string']:.3f} "
        f"(chance {acc['chance']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

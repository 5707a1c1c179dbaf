"""Turn a `model` config into a backbone and the password vocabulary it uses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from negrl.backbone import (
    PythiaBackbone,
    check_architecture_keys,
    check_checkpoint_dir,
    hub_reachable,
    hub_unreachable_message,
)
from negrl.errors import NegrlError
from negrl.vocab import ALPHABET, PasswordVocab


def load_tokenizer_encode(source: str) -> Callable[[str], list[int]]:
    """`encode(text) -> ids` (no special tokens) for a tokenizer.json file, a directory or a hub id."""
    if source.endswith(".json"):
        if not Path(source).is_file():
            raise NegrlError(f"model.tokenizer={source} does not exist; point it at a tokenizer.json file")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(source)
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir() or not hub_reachable())
    except (OSError, ValueError) as err:
        raise NegrlError(hub_unreachable_message(source, err)) from None
    return lambda text: tok.encode(text, add_special_tokens=False)


#: The `tokens.*` that `model.token_ids` (conf/model/base/pythia.yaml, inherited by pythia-*) were recorded for.
RECORDED_FOR = {"letters": ALPHABET, "letter_format": " {}", "regular_prefix": " regular", "reverse_prefix": " reverse"}


def check_model(model_cfg: dict[str, Any]) -> None:
    """What a `model` config asks for must exist and agree: the init, the checkpoint, its architecture (each
    value's type and choices are checked by `negrl.config`)."""
    name, init, path = model_cfg.get("name", "?"), model_cfg.get("init", "pretrained"), model_cfg.get("path")
    if path and init == "random":
        raise NegrlError(
            f"model.path={path} loads trained weights but model.init=random; "
            "add model.init=pretrained, or drop model.path for a random init"
        )
    builtin = model_cfg.get("vocab", "tokenizer") == "builtin"
    if builtin and init != "random" and not path:
        raise NegrlError(
            f"model={name} has no published weights; set model.init=random, or pretrain some with "
            f"`negrl-pretrain --model {name} --out DIR` and pass model.path=DIR"
        )
    if not builtin and init == "pretrained" and not path and not model_cfg.get("hub_id"):
        raise NegrlError(f"model={name} has no hub_id; set model.path=DIR or model.init=random")
    architecture = dict(model_cfg.get("architecture") or {})
    check_architecture_keys(architecture, name)
    if path:
        check_checkpoint_dir(path, architecture, name)


def load_model(
    model_cfg: dict[str, Any], tokens_cfg: dict[str, Any], seed: int
) -> tuple[PythiaBackbone, PasswordVocab]:
    """Build the backbone (`model.init`: pretrained from `model.path` or the hub, or random) and its vocab.

    `vocab: builtin` models (tiny) use letters 0..25 and two prefix tokens; their weights are random
    or a `negrl-pretrain` checkpoint given as `model.path`. Others map letters
    and prefixes through the tokenizer (`model.tokenizer`, else `model.path`, else the hub id),
    checked to be single tokens; a random-init model with no tokenizer at hand falls back to
    the ids recorded in `model.token_ids` (GPT-NeoX-20B's ids, docs/experiment.md).
    """
    check_model(model_cfg)
    init, path, hub_id = model_cfg.get("init", "pretrained"), model_cfg.get("path"), model_cfg.get("hub_id")
    builtin = model_cfg.get("vocab", "tokenizer") == "builtin"
    if path:
        backbone = PythiaBackbone.from_checkpoint(path)
    elif init == "random":
        backbone = PythiaBackbone.random_init(dict(model_cfg["architecture"]), seed)
    else:
        backbone = PythiaBackbone.from_hub(hub_id, model_cfg.get("revision"))

    if builtin:
        vocab = PasswordVocab.builtin(len(tokens_cfg["letters"]))
    else:
        vocab = _tokenizer_vocab(model_cfg, tokens_cfg, path or hub_id, fallback=init == "random" and not path)
    n_embed = backbone.model.get_input_embeddings().num_embeddings
    top = max(*vocab.letter_ids, vocab.regular_id, vocab.reverse_id)
    if top >= n_embed:
        raise NegrlError(f"token id {top} does not fit the model's vocabulary of {n_embed}; check model.tokenizer")
    return backbone, vocab


def _tokenizer_vocab(model_cfg, tokens_cfg, default_source: str | None, fallback: bool) -> PasswordVocab:
    source = model_cfg.get("tokenizer") or default_source
    try:
        if not source:
            raise NegrlError("no tokenizer source; set model.tokenizer=PATH")
        encode = load_tokenizer_encode(str(source))
    except NegrlError as err:
        recorded = model_cfg.get("token_ids")
        if not (fallback and recorded):
            raise
        if dict(tokens_cfg) != RECORDED_FOR:
            raise NegrlError(
                f"{err}; model.token_ids are recorded for the default tokens.* only, so with "
                f"tokens.letters={tokens_cfg['letters']!r} (and the other tokens.*) the tokenizer is needed"
            ) from None
        print(f"negrl: no tokenizer reachable for {source}; using the recorded model.token_ids (random init)")
        return PasswordVocab(tuple(recorded["letters"]), recorded["regular"], recorded["reverse"])
    return PasswordVocab.from_tokenizer(
        encode,
        tokens_cfg["letters"],
        tokens_cfg["letter_format"],
        tokens_cfg["regular_prefix"],
        tokens_cfg["reverse_prefix"],
    )

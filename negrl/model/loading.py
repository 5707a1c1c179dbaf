"""Turn a `model` config into a backbone and the token ids it uses: the family's model (pretrained, a checkpoint
or random), the tied-embedding choice, the BOS, the adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from negrl.core.errors import NegrlError
from negrl.model.backbone import Backbone
from negrl.model.families import (
    check_architecture_builds,
    check_architecture_keys,
    check_checkpoint_dir,
)
from negrl.model.hub import hub_reachable, hub_unreachable_message
from negrl.model.vocab import ALPHABET, PasswordVocab

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class TextTokenizer:
    """A tokenizer as negrl uses it: `encode(text)` without special tokens, and the token it puts before plain
    text when it adds its special tokens (`bos_id`; None if it puts none)."""

    encode: Encode
    bos_id: int | None

    @classmethod
    def from_encoders(cls, plain: Encode, special: Encode) -> TextTokenizer:
        with_specials, ids = special("a"), plain("a")
        leading = with_specials[0] if with_specials[1 : 1 + len(ids)] == ids and len(with_specials) > len(ids) else None
        return cls(plain, leading)


def load_tokenizer(source: str) -> TextTokenizer:
    """The tokenizer of a tokenizer.json file, a directory or a hub id."""
    if source.endswith(".json"):
        if not Path(source).is_file():
            raise NegrlError(f"model.tokenizer={source} does not exist; point it at a tokenizer.json file")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(source)
        return TextTokenizer.from_encoders(
            lambda text: tok.encode(text, add_special_tokens=False).ids,
            lambda text: tok.encode(text, add_special_tokens=True).ids,
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir() or not hub_reachable())
    except (OSError, ValueError) as err:
        raise NegrlError(hub_unreachable_message(source, err)) from None
    return TextTokenizer.from_encoders(
        lambda text: tok.encode(text, add_special_tokens=False), lambda text: tok.encode(text, add_special_tokens=True)
    )


#: The `tokens.*` that `model.token_ids` (conf/model/*.yaml) were recorded for.
RECORDED_FOR = {"letters": ALPHABET, "letter_format": " {}", "regular_prefix": " regular", "reverse_prefix": " reverse"}


def check_model(model_cfg: dict[str, Any], tokens_cfg: dict[str, Any] | None = None) -> None:
    """What a `model` config asks for must exist and agree: the init, the checkpoint and its family, the
    architecture, the BOS (each value's type and choices are checked by `negrl.run.config`)."""
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
    if builtin:
        need = len((tokens_cfg or {}).get("letters", ALPHABET)) + 2  # the letters and the two prefixes
        have = (model_cfg.get("architecture") or {}).get("vocab_size")
        if isinstance(have, int) and have < need:
            raise NegrlError(
                f"model.architecture.vocab_size={have} is smaller than model={name}'s built-in vocabulary ({need} "
                f"tokens: {need - 2} letters and the 2 prefixes); use model.architecture.vocab_size={need}"
            )
    if builtin and (tokens_cfg or {}).get("bos") is True:
        raise NegrlError(f"tokens.bos=true: model={name}'s built-in vocabulary has no BOS token; drop tokens.bos")
    tokenizer = model_cfg.get("tokenizer")
    if tokenizer and not Path(tokenizer).exists():
        raise NegrlError(
            f"model.tokenizer={tokenizer} does not exist; give a tokenizer.json or a directory holding one, "
            "or drop model.tokenizer"
        )
    architecture = dict(model_cfg.get("architecture") or {})
    check_architecture_keys(model_cfg["model_type"], architecture, name)
    check_architecture_builds(model_cfg["model_type"], architecture, name)
    if path:
        check_checkpoint_dir(path, model_cfg["model_type"], architecture, name)


def load_model(
    model_cfg: dict[str, Any], tokens_cfg: dict[str, Any], seed: int, adapter_cfg: dict[str, Any] | None = None
) -> tuple[Backbone, PasswordVocab]:
    """Build the backbone (`model.init`: pretrained from `model.path` or the hub, or random) and its vocab.

    `vocab: builtin` models (tiny) use letters 0..25 and two prefix tokens; their weights are random
    or a `negrl-pretrain` checkpoint given as `model.path`. Others map letters
    and prefixes through the tokenizer (`model.tokenizer`, else `model.path`, else the hub id),
    checked to be single tokens; a random-init model with no tokenizer at hand falls back to
    the ids recorded in `model.token_ids`. Then: the BOS (`tokens.bos`), the tied-embedding choice
    (`model.tied`), the adapter (`adapter.*`, negrl.model.adapters).
    """
    check_model(model_cfg, tokens_cfg)
    init, path, hub_id = model_cfg.get("init", "pretrained"), model_cfg.get("path"), model_cfg.get("hub_id")
    model_type, name = model_cfg["model_type"], model_cfg.get("name", "?")
    builtin = model_cfg.get("vocab", "tokenizer") == "builtin"
    if path:
        backbone = Backbone.from_checkpoint(path)
    elif init == "random":
        backbone = Backbone.random_init(dict(model_cfg["architecture"]), seed, model_type)
    else:
        backbone = Backbone.from_hub(hub_id, model_cfg.get("revision"), model_type, name)

    if builtin:
        vocab = PasswordVocab.builtin(len(tokens_cfg["letters"]))
    else:
        vocab = _tokenizer_vocab(model_cfg, tokens_cfg, path or hub_id, fallback=init == "random" and not path)
    vocab = replace(vocab, bos_id=_bos(tokens_cfg.get("bos", "auto"), vocab.bos_id, backbone, name))
    n_embed = backbone.model.get_input_embeddings().num_embeddings
    top = max(*vocab.letter_ids, vocab.regular_id, vocab.reverse_id, -1 if vocab.bos_id is None else vocab.bos_id)
    if top >= n_embed:
        raise NegrlError(f"token id {top} does not fit the model's vocabulary of {n_embed}; check model.tokenizer")
    backbone.bos_id = vocab.bos_id
    backbone.shared_at_load = backbone.shares_embeddings
    backbone.tied = model_cfg.get("tied", "untie")
    if backbone.tied == "untie":
        backbone.untie_embeddings()
    if adapter_cfg and adapter_cfg.get("name", "none") != "none":
        from negrl.model.adapters import apply_adapter

        apply_adapter(backbone, adapter_cfg, model_cfg)
    return backbone, vocab


def _bos(setting: Any, tokenizer_bos: int | None, backbone: Backbone, name: str) -> int | None:
    """`tokens.bos`: auto (the tokenizer's, or the recorded one), true (that, else the model config's
    bos_token_id) or false (none)."""
    if setting is False:
        return None
    if setting == "auto" or tokenizer_bos is not None:
        return tokenizer_bos
    configured = backbone.model.config.bos_token_id
    if configured is None:
        raise NegrlError(f"tokens.bos=true: model={name} has no BOS token (bos_token_id is unset); drop tokens.bos")
    return int(configured)


def _tokenizer_vocab(model_cfg, tokens_cfg, default_source: str | None, fallback: bool) -> PasswordVocab:
    source = model_cfg.get("tokenizer") or default_source
    try:
        if not source:
            raise NegrlError("no tokenizer source; set model.tokenizer=PATH")
        tokenizer = load_tokenizer(str(source))
    except NegrlError as err:
        recorded = model_cfg.get("token_ids")
        if not (fallback and recorded):
            raise
        if {k: tokens_cfg[k] for k in RECORDED_FOR} != RECORDED_FOR:
            raise NegrlError(
                f"{err}; model.token_ids are recorded for the default tokens.* only, so with "
                f"tokens.letters={tokens_cfg['letters']!r} (and the other tokens.*) the tokenizer is needed"
            ) from None
        print(f"negrl: no tokenizer reachable for {source}; using the recorded model.token_ids (random init)")
        return PasswordVocab(tuple(recorded["letters"]), recorded["regular"], recorded["reverse"], recorded.get("bos"))
    vocab = PasswordVocab.from_tokenizer(
        tokenizer.encode,
        tokens_cfg["letters"],
        tokens_cfg["letter_format"],
        tokens_cfg["regular_prefix"],
        tokens_cfg["reverse_prefix"],
    )
    return replace(vocab, bos_id=tokenizer.bos_id)


def model_record(backbone: Backbone, model_cfg: dict[str, Any], adapter_cfg: dict[str, Any], freeze: bool) -> dict:
    """results.json's `model`: the family, where the weights came from, the tied-embedding choice, the BOS, the
    adapter, and how many weights each phase trains."""
    adapter = adapter_cfg.get("name", "none")
    trains = {"1": backbone.trainable_count(), "2": backbone.trainable_count(freeze_second_half=freeze)}
    return {
        "name": model_cfg.get("name"),
        "model_type": model_cfg["model_type"],
        "hub_id": model_cfg.get("hub_id"),
        "init": model_cfg.get("init"),  # as the user set it; `path`: where trained weights came from
        "path": model_cfg.get("path"),
        "tied_embeddings": bool(backbone.shared_at_load),
        "tied": model_cfg.get("tied", "untie") if backbone.shared_at_load else None,
        "bos_id": backbone.bos_id,
        "adapter": dict(adapter_cfg) if adapter != "none" else None,
        "parameters": sum(p.numel() for p in backbone.model.parameters()),  # a shared matrix once
        "trainable_parameters": {**trains, "3": trains["1"]},
    }

"""The Hugging Face hub, reached or not: a quick probe of its endpoint, the one-line error when a model is out of
reach, and the check that every pretrained model of a command is at hand. Imports no torch, so that train.py can
refuse an unreachable model before it loads torch and the model code."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

from negrl.core.errors import NegrlError


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: not HF_HUB_OFFLINE, and a TCP connection to its endpoint
    opens within `timeout_s`. When it cannot, loading reads only the local cache (one quick error, not a
    minute of retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def hub_unreachable_message(hub_id: str, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else " (unreachable: cache only)"
    return (
        f"cannot load {hub_id} from the Hugging Face hub or its cache{offline}: {reason[:160]}; "
        "connect once to cache it, or pass model.path=DIR (a saved checkpoint), or model.init=random"
    )


def check_weights_at_hand(models: list[dict[str, Any]]) -> None:
    """Each `model.init=pretrained` model of the hub (no model.path) must be at hand now: the hub reachable, or its
    config in the local cache (checked by the command line for every job of a sweep before the first starts; the
    run itself checks it again when it loads the weights). One probe of the network for all of them."""
    wanted = {(m["hub_id"], m.get("revision")) for m in models if m.get("init") == "pretrained" and not m.get("path")
              and m.get("hub_id")}  # fmt: skip
    if not wanted or hub_reachable():
        return
    from huggingface_hub import try_to_load_from_cache

    for hub_id, revision in sorted(wanted, key=str):
        if not isinstance(try_to_load_from_cache(hub_id, "config.json", revision=revision), str):
            raise NegrlError(hub_unreachable_message(hub_id, OSError(f"{hub_id} is not in the local cache")))

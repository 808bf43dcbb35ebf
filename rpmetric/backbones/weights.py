"""Reading checkpoint tensors safely: safetensors, or torch.load with weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, Tuple

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["read_state_dict", "load_strict"]


def read_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from common containers.

    Pickled files are opened with ``weights_only=True``, which refuses arbitrary objects.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types; all mean the same here
            raise CheckpointError(
                f"{path} could not be read with torch.load(weights_only=True); rpmetric never unpickles "
                f"arbitrary objects, so convert the checkpoint to safetensors. ({_load_failure(err)})"
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dictionary of tensors.")
    return {_strip(k, "module."): v for k, v in state.items()}


def _load_failure(err: Exception) -> str:
    """The gist of torch.load's error on one line: torch's message spans lines, carries ANSI escapes and
    suggests weights_only=False, so keep only the unpickler's reason when it gives one."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err))
    _, marker, after = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (after if marker else text).splitlines() if line.strip()]
    reason = lines[0] if lines else type(err).__name__
    return reason.split(". Please use")[0].rstrip(".")


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def load_strict(module: nn.Module, state: Dict[str, torch.Tensor], where: str, ignore: Iterable[str] = ()) -> None:
    """Load every tensor, or fail naming the keys that do not fit (never strict=False)."""
    ignore = tuple(ignore)
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or bad_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)):
            if keys:
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise CheckpointError(f"The weights of {where} do not fit the architecture of its config; " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def split_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Tuple[Dict[str, torch.Tensor], bool]:
    """The tensors under ``prefix`` with it removed, and whether any were found."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return sub, bool(sub)

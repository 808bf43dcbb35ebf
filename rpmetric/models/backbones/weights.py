"""Reading checkpoint tensors safely: safetensors, or torch.load with weights_only=True."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, Tuple

import torch
from torch import nn

from ...errors import CheckpointError

__all__ = ["read_weights", "read_state_dict", "read_safetensors", "build_checked", "check_fit"]


def read_weights(files) -> Dict[str, torch.Tensor]:
    """The tensors of fetched files (see :func:`rpmetric.models.hub.fetch`) that the metric reads.

    Only keys that ``files.keeps`` (the vision tower of a CLIP checkpoint): a safetensors file is
    read by key, so other tensors are never read; a ``.bin`` is memory-mapped where torch can (zip
    files), so the pages of other tensors are never touched, and otherwise read once, filtered and
    dropped. A sharded checkpoint reads only ``files.shards``, the shards that hold such tensors.
    """
    paths = files.shards or (files.weights,)
    state: Dict[str, torch.Tensor] = {}
    for path in paths:
        part = read_state_dict(path, keep=files.keeps)
        clash = next((k for k in part if k in state), None)
        if clash is not None:
            raise CheckpointError(f"{path} holds {clash!r}, which an earlier shard of {files.weights} holds too; "
                                  "a tensor belongs to one shard.")
        state.update(part)
    return state


def read_safetensors(path: Path, keep: Callable[[str], bool] = lambda key: True) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose keys ``keep`` accepts, or a :class:`CheckpointError` naming it.

    safetensors checks the header before it allocates (a header over 100 MB, offsets outside the
    file or a size that does not match the shape are refused), so no file costs more than its size;
    tensors are read by key, so those left out are never read.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys() if keep(key)}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); download or save it "
                              "again.") from None


def read_state_dict(path: Path, keep: Callable[[str], bool] = lambda key: True) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file whose keys ``keep`` accepts, unwrapped from common containers.

    Pickled files are opened with ``weights_only=True``, which refuses arbitrary objects, and
    memory-mapped when they are zip files (torch's format since 1.6), so that tensors left out are
    not read.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state = read_safetensors(path, keep)
    else:
        state = _torch_load(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dictionary of tensors.")
    state = {k: v for k, v in state.items() if not isinstance(k, str) or keep(k)}
    bad = next(((k, v) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path} is not a dictionary of tensors: its entry {bad[0]!r} is a "
                              f"{type(bad[1]).__name__}.")
    return {_strip(k, "module."): v for k, v in state.items()}


def _torch_load(path: Path):
    import zipfile

    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # pickle errors come in many types; all mean the same here
        raise CheckpointError(
            f"{path} could not be read with torch.load(weights_only=True); rpmetric never unpickles "
            f"arbitrary objects, so convert the checkpoint to safetensors. ({_load_failure(err)})"
        ) from None


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


# What a library's constructor raises for a config it cannot build (a width its heads do not divide,
# an unknown keyword): on the meta device these are config errors, never a fault of the machine.
_BUILD_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, AssertionError, ZeroDivisionError,
                 RuntimeError, NotImplementedError)


def build_checked(make: Callable[[], nn.Module], state: Dict[str, torch.Tensor], config: str, weights: str,
                  ignore: Callable[[nn.Module], Iterable[str]] = lambda module: ()) -> nn.Module:
    """``make()`` with ``state`` loaded, checked before anything is allocated.

    ``make`` runs first on the meta device, where no memory is allocated: a config the library cannot
    build fails there naming ``config``, and a model whose tensors do not match the checkpoint's
    (a width of 10^9, say) fails naming ``weights``. Only a model that fits is then built for real,
    so building never costs more than the checkpoint holds.

    Args:
        ignore: given the model, key prefixes of ``state`` to leave out (e.g. its classifier).
    """
    try:
        with torch.device("meta"):
            skeleton = make()
    except _BUILD_ERRORS as err:
        reason = re.sub(r"\s+", " ", str(err)).strip()
        raise ValueError(f"{config} describes a model that cannot be built ({type(err).__name__}: {reason}).") from None
    prefixes = tuple(ignore(skeleton))
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    check_fit(skeleton, state, weights)
    module = make()
    module.load_state_dict(state, strict=True)
    return module


def check_fit(module: nn.Module, state: Dict[str, torch.Tensor], where: str) -> None:
    """Fail naming the keys that do not fit: missing, unexpected or of the wrong shape."""
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


def split_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Tuple[Dict[str, torch.Tensor], bool]:
    """The tensors under ``prefix`` with it removed, and whether any were found."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return sub, bool(sub)

"""Checkpoint key remaps in timm's habit: a table of (old key pattern, new key) swaps, plus the
query/key/value projections that one library keeps apart and the other fuses into one."""

from __future__ import annotations

import re
from typing import Callable, Dict, Sequence, Tuple

import torch

__all__ = ["remap_keys"]


def remap_keys(state: Dict[str, torch.Tensor], swaps: Sequence[Tuple[str, str]], dropped: "re.Pattern",
               qkv: "re.Pattern", parts: Tuple[str, str, str], fused: Callable[[int, str], str]
               ) -> Dict[str, torch.Tensor]:
    """``state`` with keys renamed by ``swaps`` and q/k/v projections concatenated (in ``parts``
    order) under ``fused(block, "weight" | "bias")``.

    ``qkv`` matches a projection key with groups (block, part, weight-or-bias); keys ``dropped``
    matches are left out; a key that nothing matches is kept as is, so that a strict load names it.

    Example:
        >>> out = remap_keys({"l.0.q.w": torch.zeros(1), "l.0.k.w": torch.ones(1), "l.0.v.w": torch.ones(1),
        ...                   "norm.w": torch.ones(2)}, [(r"norm\\.w", "ln.w")], re.compile("x"),
        ...                   re.compile(r"l\\.(\\d+)\\.(q|k|v)\\.(w)"), ("q", "k", "v"), lambda b, kind: f"qkv{b}.{kind}")
        >>> sorted(out), out["qkv0.w"].tolist()
        (['ln.w', 'qkv0.w'], [0.0, 1.0, 1.0])
    """
    out, groups = {}, {}
    for key, value in state.items():
        if dropped.fullmatch(key):
            continue
        m = qkv.fullmatch(key)
        if m:
            groups.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, target in swaps:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, target, key)] = value
                break
        else:
            out[key] = value
    for (block, kind), found in groups.items():
        if set(found) != set(parts):
            raise ValueError(f"Block {block} has only {sorted(found)} of {'/'.join(parts)} {kind}.")
        out[fused(block, kind)] = torch.cat([found[p] for p in parts], dim=0)
    return out

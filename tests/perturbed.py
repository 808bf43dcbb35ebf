"""A backbone that makes BLAS rounding visible on every machine.

On a 2-core AMD EPYC with MKL, the same image embeds to vectors that differ by about 1e-7 with
its batch position, the batch size and the thread count. Other machines happen to give identical
bits, so a test that relies on bit-identical rows passes there by luck. ``PositionNoise`` adds a
perturbation of order 1e-6 that depends on exactly those things, so such a test fails everywhere
and rpmetric's guarantees must hold by construction.

- ``install(monkeypatch)`` wraps every backbone rpmetric builds in this process;
- ``python tests/perturbed.py ARGS`` runs ``rpmetric ARGS`` with wrapped backbones (for
  subprocesses and torchrun).
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

SCALE = 1e-6


class PositionNoise(nn.Module):
    """``backbone(x)`` plus ``SCALE * sin(1 + i + 3 N + 5 T [+ 7 c])`` times a fixed direction, for row
    ``i`` of a batch of ``N`` on ``T`` threads (and the ``c``-th call, with ``per_call``).

    The sine never repeats over integers, so no two positions, batch sizes or thread counts get the
    same perturbation, and it stays within ``SCALE``.
    """

    def __init__(self, backbone: nn.Module, per_call: bool = False):
        super().__init__()
        self.backbone = backbone
        self.per_call = per_call
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        n, threads = out.shape[0], torch.get_num_threads()
        phase = 1 + 3 * n + 5 * threads + (7 * self.calls if self.per_call else 0)
        self.calls += 1
        rows = torch.tensor([math.sin(phase + i) for i in range(n)], dtype=out.dtype, device=out.device)
        direction = torch.linspace(-1.0, 1.0, out.shape[-1], dtype=out.dtype, device=out.device)
        return out + SCALE * out.detach().abs().mean(dim=-1, keepdim=True) * rows[:, None] * direction


def wrap(metric, per_call: bool = False):
    """Wrap the backbone of a RobustDistance (or Encoder) in place; returns it."""
    encoder = getattr(metric, "encoder", metric)
    encoder.backbone = PositionNoise(encoder.backbone, per_call=per_call)
    return metric


def install(monkeypatch, per_call: bool = False) -> None:
    """Every backbone that rpmetric builds from now on (in this process) is wrapped."""
    import rpmetric.models.encoder

    build = rpmetric.models.encoder.build_backbone
    monkeypatch.setattr(rpmetric.models.encoder, "build_backbone", lambda files: PositionNoise(build(files), per_call))


def _main(argv) -> int:
    import rpmetric.models.encoder
    from rpmetric.cli import main

    build = rpmetric.models.encoder.build_backbone
    rpmetric.models.encoder.build_backbone = lambda files: PositionNoise(build(files))
    return main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

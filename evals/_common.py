"""Shared bits of the benchmark scripts: a random-weight model in the Hub layout, and timing.

Importing it puts ``tests/`` on ``sys.path``: the benchmarks build their models with the tests'
``tinymodels``, so both save the same files the same way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tinymodels  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def save_random_open_clip(arch: str, folder: Path, seed: int = 0):
    """An open_clip architecture with random weights, saved in the Hub layout into ``folder``.

    Pass a folder that will be deleted (e.g. inside ``tempfile.TemporaryDirectory()``): a ViT-B/32
    takes about 600 MB.

    Returns:
        ``(folder, model)``: the model is open_clip's own, loaded by open_clip from the saved
        files, the reference for raw-encoder timings and outputs.
    """
    import open_clip

    folder = tinymodels.save_open_clip(Path(folder), open_clip.get_model_config(arch), seed)
    return folder, tinymodels.load_reference_open_clip(folder)


def interleaved_clock_timings(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                              clocks: Optional[Mapping[str, Callable[[], float]]] = None
                              ) -> Dict[str, Dict[str, List[float]]]:
    """``{clock: {name: [seconds per call]}}``, alternating the functions so that machine load hits
    all alike, after ``warmup`` rounds; ``clocks`` defaults to :data:`CLOCKS` (wall and CPU time)."""
    clocks = CLOCKS if clocks is None else clocks
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {clock: {name: [] for name in fns} for clock in clocks}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = {clock: read() for clock, read in clocks.items()}
            fn()
            for clock, read in clocks.items():
                times[clock][name].append(read() - start[clock])
    return times


def interleaved_timings(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, List[float]]:
    """Wall-clock seconds per call of each function (see :func:`interleaved_clock_timings`)."""
    return interleaved_clock_timings(fns, repeats, warmup, {"wall": time.perf_counter})["wall"]


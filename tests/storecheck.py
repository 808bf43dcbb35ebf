"""Comparing two stores' records: what the Ray engine and one process must write alike (tests and evals/bench_scale.py)."""

from __future__ import annotations

import json
from pathlib import Path


def records(store_path: Path) -> dict:
    """A store's manifest and shard records by file name, without the checksums (of embedding bits,
    which differ at 1e-7 with batch composition)."""
    out = {}
    for path in sorted(Path(store_path).glob("*.json")):
        record = json.loads(path.read_text())
        record.pop("blake2b", None)
        for shard in record.get("shards", []):
            shard.pop("blake2b")
        out[path.name] = record
    return out

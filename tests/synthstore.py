"""Embedding stores written from given vectors, through the store's own shard writer and manifest.

For tests and benchmarks of the readers (search, dedup, kNN) at sizes no model could embed here:
the shards, records and manifest are those ``rpmetric embed`` writes, for a folder of files named
``img/000000123.jpg`` (which need not exist: the readers never open them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from rpmetric.stores import store as store_mod


def write_store(out: Path, shards: Iterable[np.ndarray], *, dtype: str = "float16", shard_size: Optional[int] = None,
                model: str = "synthetic", root: Optional[Path] = None) -> Path:
    """Write the arrays of ``shards`` (each ``[n, dim]``, rows in store order) as a finished store
    in ``out``; rows are named ``img/{row:09d}.jpg`` under ``root`` (default ``out/../images``).
    Only one shard is held at a time, so the store may be larger than memory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(root) if root is not None else out.parent / "images"
    row, k, size = 0, 0, shard_size
    for k, emb in enumerate(shards):
        size = size or len(emb)
        paths = [f"img/{r:09d}.jpg" for r in range(row, row + len(emb))]
        store_mod._write_shard(out, k, np.ascontiguousarray(emb, dtype=dtype), paths, [], "synthetic",
                               {p: [1000, 1_700_000_000_000_000_000] for p in paths})
        row += len(emb)
    plan = {"format": store_mod.FORMAT, "format_version": store_mod.FORMAT_VERSION,
            "rpmetric_version": store_mod.__version__, "model": {"name": model}, "model_ref": model,
            "model_identity": None, "dtype": dtype, "normalized": True, "shard_size": size or 1,
            "source": str(root), "root": str(root), "complete": False, "special": [], "plan_id": "synthetic",
            # The files' sizes and mtimes only serve an update of the store from its source, which
            # a synthetic store has not: left out (10 M entries would cost GBs to build and write).
            "stats": {}}
    store_mod._finish_manifest(out, plan, k + 1 if row or k else 1)
    return out


def chunks(x: np.ndarray, size: int):
    """``x`` cut into consecutive shards of ``size`` rows."""
    return (x[a:a + size] for a in range(0, len(x), size))

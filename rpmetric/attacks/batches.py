"""The resumable batch loop that every attack evaluation shares: fixed batches over the whole key
list, the ones a run log already holds skipped, each finished batch appended to the log before
the next one starts, so an interruption loses at most the batch in flight.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

from ..datasets import collate_images
from ..datasets.loading import data_loader

__all__ = ["fixed_batches", "attack_in_batches"]


def fixed_batches(n: int, batch_size: int) -> List[List[int]]:
    """Indices ``0 .. n-1`` in batches of ``batch_size``, the last one shorter: the boundaries depend
    on ``n`` and ``batch_size`` only, so a resumed run re-forms exactly the same batches.

    Example:
        >>> fixed_batches(5, 2)
        [[0, 1], [2, 3], [4]]
    """
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


def attack_in_batches(dataset, keys: Sequence[str], batch_size: int, log, attack: Callable[[dict, List[str]], List[dict]],
                      *, item: str, source: str, desc: str, workers: int = 0, progress: bool = True,
                      postfix: Optional[Callable[[Dict[str, dict]], dict]] = None) -> List[dict]:
    """Run ``attack`` over ``dataset`` batch by batch and return one record per key, in ``keys``' order.

    Args:
        dataset: a map-style dataset whose item ``i`` is the images of ``keys[i]``, collated by
            :func:`rpmetric.datasets.collate_images` (a batch carries ``"index"`` and ``"errors"``).
        keys: the records' unique keys; each record ``attack`` returns has a ``"key"``.
        batch_size: keys per batch (fixed boundaries, see :func:`fixed_batches`).
        log: a :class:`~rpmetric.runlog.RunLog` (its ``done`` records are kept and its file is closed
            at the end, also on an error or an interruption), or None.
        attack: ``attack(batch, batch_keys) -> records``.
        item, source: how a load error names the record and where to fix it (``"Triplet"``,
            ``"`data`"``).
        desc: the progress bar's label.
        workers: data-loader worker processes.
        progress: show a tqdm bar.
        postfix: ``postfix(done) -> dict`` shown on the bar after each batch.

    Raises:
        ValueError: a record cannot be loaded; the message names it and the reason.

    Example:
        >>> import torch
        >>> class Items(torch.utils.data.Dataset):
        ...     def __len__(self): return 3
        ...     def __getitem__(self, i): return {"index": i, "x": torch.full((1,), float(i))}
        >>> attack = lambda batch, keys: [{"key": k, "x": float(v)} for k, v in zip(keys, batch["x"])]
        >>> [r["x"] for r in attack_in_batches(Items(), ["a", "b", "c"], 2, None, attack, item="Item",
        ...                                    source="`items`", desc="demo", progress=False)]
        [0.0, 1.0, 2.0]
    """
    done: Dict[str, dict] = dict(log.done) if log is not None else {}
    todo = [b for b in fixed_batches(len(keys), batch_size) if not all(keys[i] in done for i in b)]
    loader = data_loader(dataset, batch_sampler=todo, num_workers=workers, collate_fn=collate_images)
    from tqdm.auto import tqdm

    bar = tqdm(loader, total=len(todo), desc=desc, unit="batch", disable=not progress)
    try:
        for batch in bar:
            errors = batch.get("errors")
            if errors:
                index, message = errors[0]
                raise ValueError(f"{item} {keys[index]!r} cannot be loaded: {message} ({len(errors)} bad "
                                 f"{item.lower()}(s) in this batch); fix or remove them from {source}.")
            new = [r for r in attack(batch, [keys[i] for i in batch["index"]]) if r["key"] not in done]
            if log is not None:
                log.append(new)
            done.update((r["key"], r) for r in new)
            if postfix is not None:
                bar.set_postfix(**postfix(done))
    finally:
        if log is not None:
            log.close()  # releases the log for the next run
    return [done[k] for k in keys]

"""Torch datasets that decode a reader's records into tensors, inside DataLoader workers.

Images stay uint8 from the file to the batch: decoding and resizing in 8 bits is what PIL and
torchvision's transforms do, costs a worker a fraction of the float path, and moves a quarter of
the bytes between processes. The consumer turns a batch into [0, 1] floats on its device with
:func:`rpmetric.images.unit_float`.
"""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..images import DECODE_ERRORS, decode_failure, read_pixels
from .records import JNDPair, OddOneOut, ScoredPair, Triplet

__all__ = ["TripletImages", "PairImages", "OddOneOutImages", "ScoredPairImages", "collate_images", "data_loader"]


def data_loader(dataset, **kwargs) -> torch.utils.data.DataLoader:
    """``torch.utils.data.DataLoader(dataset, **kwargs)`` whose workers die with the process that
    started them (see :func:`exit_with_parent`): every loader of the package is made here."""
    return torch.utils.data.DataLoader(dataset, worker_init_fn=partial(exit_with_parent, os.getpid()), **kwargs)


def exit_with_parent(parent: int, worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: on Linux the worker is killed as soon as ``parent`` exits
    (``PR_SET_PDEATHSIG``), so that a main process that is killed or interrupted leaves no worker
    behind to print ``ConnectionResetError`` tracebacks from its broken pipes. Elsewhere, and if
    prctl is unavailable, torch's own watchdog ends an orphaned worker within seconds.

    The worker also stays silent when the main process gives up a transfer: a batch's tensors reach
    the main process through multiprocessing's resource sharer, whose server thread in the worker
    reports a connection the main process dropped (Ctrl-C mid-transfer) through ``sys.excepthook``.
    In a worker that can only mean the consumer went away; errors of the data itself reach the main
    process through the DataLoader, not this hook."""
    sys.excepthook = _quiet_on_dropped_connections(sys.excepthook)
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def _quiet_on_dropped_connections(previous):
    def hook(kind, value, tb):
        if not issubclass(kind, (ConnectionError, EOFError)):
            previous(kind, value, tb)

    return hook


class _ImageRecords(torch.utils.data.Dataset):
    """Shared decoding: ``image_fields`` are decoded, ``value_field`` is passed through.

    A file that is missing or unreadable, or whose decoding or resizing fails (a decoder error,
    an allocation that fails: any of ``rpmetric.images.DECODE_ERRORS``), does not raise here: the
    item carries ``"error"`` instead, naming the file, so the caller decides between failing with a
    clear message and skipping it (a worker's exception would end the whole run, wrapped in a
    multi-line traceback).
    """

    image_fields: Sequence[str] = ()
    value_field: str = ""

    def __init__(self, records: Sequence, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Dict:
        record = self.records[i]
        item = {"index": i, self.value_field: float(getattr(record, self.value_field))}
        for field in self.image_fields:
            path = getattr(record, field)
            try:
                x = read_pixels(path)[None]
                if self.transform is not None:
                    x = self.transform(x)
                item[field] = x[0].contiguous()
            except DECODE_ERRORS as err:
                return {"index": i, "error": decode_failure(path, err)}
        return item


class TripletImages(_ImageRecords):
    """Decoded 2AFC triplets: ``{"index": i, "ref", "left", "right": [3, H, W] uint8, "p": float}``.

    Args:
        triplets: :class:`Triplet` records, e.g. from :func:`read_nights`.
        transform: picklable callable on a ``[1, 3, H, W]`` uint8 tensor (it runs in the
            DataLoader workers), e.g. ``functools.partial(rpmetric.models.preprocess.resize_and_crop,
            pp=metric.spec.preprocessing)``, which resizes in 8 bits; None keeps the images as loaded.

    A missing or unreadable image gives ``{"index": i, "error": message}`` instead.

    Example:
        >>> from pathlib import Path
        >>> ds = TripletImages([Triplet("0", Path("missing.png"), Path("l.png"), Path("r.png"), 1.0)])
        >>> ds[0]["error"]
        'Image file not found: missing.png'
    """

    image_fields = ("ref", "left", "right")
    value_field = "p"

    def __init__(self, triplets: Sequence[Triplet], transform=None):
        super().__init__(triplets, transform)


class PairImages(_ImageRecords):
    """Decoded JND pairs: ``{"index": i, "p0", "p1": [3, H, W] uint8, "same": float}``; see :class:`TripletImages`."""

    image_fields = ("p0", "p1")
    value_field = "same"

    def __init__(self, pairs: Sequence[JNDPair], transform=None):
        super().__init__(pairs, transform)


class OddOneOutImages(_ImageRecords):
    """Decoded odd-one-out triplets: ``{"index": i, "im1", "im2", "im3": [3, H, W] uint8, "odd": float}``
    (``odd`` the human choice's position, 1, 2 or 3); see :class:`TripletImages`."""

    image_fields = ("im1", "im2", "im3")
    value_field = "odd"

    def __init__(self, triplets: Sequence[OddOneOut], transform=None):
        super().__init__(triplets, transform)
class ScoredPairImages(_ImageRecords):
    """Decoded scored pairs: ``{"index": i, "ref", "dist": [3, H, W] uint8, "score": float}``; see
    :class:`TripletImages`."""

    image_fields = ("ref", "dist")
    value_field = "score"

    def __init__(self, pairs: Sequence[ScoredPair], transform=None):
        super().__init__(pairs, transform)


def collate_images(items: List[Dict]) -> Dict:
    """Batch items of :class:`TripletImages` / :class:`PairImages` (a ``collate_fn`` for DataLoader).

    Returns a dict with ``"index"`` (the good items' indices, a list), one entry per image field
    (a stacked ``[B, 3, H, W]`` tensor when all sizes agree, else a list of ``[3, H, W]``), the
    value field as a float64 tensor, and ``"errors"``: ``[(index, message)]`` of the bad items.

    Example:
        >>> batch = collate_images([{"index": 0, "p0": torch.zeros(3, 2, 2), "p1": torch.ones(3, 2, 2), "same": 1.0},
        ...                         {"index": 1, "error": "broken"}])
        >>> batch["index"], batch["p0"].shape, batch["errors"]
        ([0], torch.Size([1, 3, 2, 2]), [(1, 'broken')])
    """
    good = [it for it in items if "error" not in it]
    batch: Dict = {"index": [it["index"] for it in good],
                   "errors": [(it["index"], it["error"]) for it in items if "error" in it]}
    if not good:
        return batch
    for key in good[0]:
        if key == "index":
            continue
        values = [it[key] for it in good]
        if isinstance(values[0], torch.Tensor):
            same_size = all(v.shape == values[0].shape for v in values)
            batch[key] = torch.stack(values) if same_size else values
        else:
            batch[key] = torch.tensor(values, dtype=torch.float64)
    return batch

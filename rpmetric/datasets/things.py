"""THINGS odd-one-out (Hebart et al.; DreamSim's evaluation): a triplet file and images by id.

The layout is DreamSim's (``evaluation/eval_datasets.py``): a text file with one triplet per line,
three image ids separated by white space (``things_valset.txt``, from https://osf.io/b2a4j), and a
folder of images named ``{id}.png``. The human odd one out is the **third** id of each line: the
first two are the pair people kept together, as DreamSim scores it (a triplet is right when
``d(im1, im2)`` is the smallest of the three distances).

Here ``ROOT`` is the image folder and the triplet file is ``ROOT/things_valset.txt`` unless another
is given. Images may be ``.png`` (DreamSim's), ``.jpg`` or ``.jpeg``; an id with two such files is
ambiguous and a bad row. Images must stay inside ``ROOT`` (symlinks resolved). Blank lines are
skipped; any other line that does not hold three distinct ids is a bad row, named by its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

from ..files import read_utf8
from .records import BadItem, OddOneOut

__all__ = ["THINGS_TRIPLETS", "THINGS_ODD_POSITION", "THINGS_IMAGE_SUFFIXES", "read_things"]

THINGS_TRIPLETS = "things_valset.txt"  # DreamSim's name for the file of test triplets
THINGS_ODD_POSITION = 3  # the human odd one out: the last id of a line
THINGS_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# A triplet file is a few MB (DreamSim's holds about 50k lines); refuse the wrong file before reading it.
_MAX_TRIPLET_BYTES = 512 * 2**20


def read_things(root: Union[str, Path], triplets: Union[str, Path, None] = None, *,
                skipped: Optional[List[BadItem]] = None) -> List[OddOneOut]:
    """The odd-one-out triplets of a THINGS triplet file, in file order.

    Args:
        root: the folder of images, ``{id}.png``.
        triplets: the triplet file; None reads ``root/things_valset.txt``.
        skipped: if given, bad lines (not three distinct ids, an image missing, ambiguous or
            outside ``root``) are appended here as :class:`BadItem` and left out, instead of raising.

    Returns:
        :class:`OddOneOut` records with ``id`` the line number (as text) and ``odd`` 3.

    Raises:
        FileNotFoundError: no image folder or no triplet file; an image missing (unless ``skipped``).
        ValueError: the triplet file is not UTF-8 text or holds no usable triplet; a bad line
            (unless ``skipped``); the message names the file and the line.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog", "car"):
        ...     Image.new("RGB", (4, 4)).save(root / f"{name}.png")
        >>> _ = (root / "things_valset.txt").write_text("cat dog car\\n")
        >>> [t.im3.name for t in read_things(root)], read_things(root)[0].odd
        (['car.png'], 3)
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"THINGS image folder not found: {root}")
    path = root / THINGS_TRIPLETS if triplets is None else Path(triplets)
    if not path.is_file():
        raise FileNotFoundError(f"THINGS triplet file not found: {path}; give it with --triplets FILE (DreamSim's "
                                f"{THINGS_TRIPLETS}, https://osf.io/b2a4j), or put it in the image folder.")
    size = path.stat().st_size
    if size > _MAX_TRIPLET_BYTES:
        raise ValueError(f"{path} holds {size / 2**20:.0f} MiB, far more than a triplet file; give the file of "
                         "triplets (three image ids a line).")
    text = read_utf8(path, "a THINGS triplet file holds three image ids a line, as UTF-8 text")
    images = _images_by_id(root)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        ids = line.split()
        if not ids:
            continue
        try:
            paths = [_image(root, images, ident) for ident in _three_ids(ids)]
        except (ValueError, FileNotFoundError) as err:
            message = f"{path}, line {number}: {err}"
            if skipped is None:
                raise type(err)(message + "; fix the line or pass `skipped=[]` to skip it") from None
            skipped.append(BadItem(str(number), message))
            continue
        records.append(OddOneOut(str(number), *paths, THINGS_ODD_POSITION))
    if not records:
        raise ValueError(f"THINGS triplet file {path} holds no usable triplet (three image ids a line).")
    return records


def _three_ids(ids: List[str]) -> List[str]:
    if len(ids) != 3:
        raise ValueError(f"a line must hold three image ids, but holds {len(ids)} ({' '.join(ids)!r})")
    twice = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
    if twice is not None:
        raise ValueError(f"the image id {twice!r} occurs twice in one triplet; a triplet needs three different images")
    return ids


def _images_by_id(root: Path) -> Dict[str, List[Path]]:
    """``{id: [files]}`` of the image files directly in ``root`` (one listing, not a lookup per id)."""
    found: Dict[str, List[Path]] = {}
    for p in sorted(root.iterdir()):
        if not p.name.startswith(".") and p.suffix.lower() in THINGS_IMAGE_SUFFIXES:
            found.setdefault(p.stem, []).append(p)
    return found


def _image(root: Path, images: Dict[str, List[Path]], ident: str) -> Path:
    files = images.get(ident)
    if not files:
        raise FileNotFoundError(f"image file not found: {root / (ident + '.png')} (image id {ident!r})")
    if len(files) > 1:
        raise ValueError(f"the image id {ident!r} has {len(files)} files ({', '.join(f.name for f in files)}), so "
                         "which one is meant is ambiguous; keep one")
    image = files[0]
    if not image.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{image} leads outside the image folder {root} (to {image.resolve()}); images must stay "
                         "inside ROOT")
    if not image.is_file():
        raise FileNotFoundError(f"image file not found: {image} (image id {ident!r})")
    return image

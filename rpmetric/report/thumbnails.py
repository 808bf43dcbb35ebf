"""Downscaled JPEG copies of images for review pages, never the originals.

A page shows thousands of images, some of them hostile (a decompression bomb, a truncated file, a
FIFO named like an image, a text file called ``.jpg``). Each one that cannot be made into a
thumbnail gets a placeholder and the one-line reason instead; none stops the page.

Thumbnails are named by a digest of the file's path, size, mtime and the thumbnail size, so a
rerun after an interruption reuses the ones already made, and a changed file gets a new one.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import numpy as np

from ..files import atomic_path
from ..images import DECODE_ERRORS, pixel_limit, read_rgb

__all__ = ["Thumb", "Thumbnails", "DEFAULT_SIZE", "DATASET_SAMPLE"]

DEFAULT_SIZE = 160  # longest side, in pixels
_NAME = re.compile(r"^[0-9a-f]{24}\.jpg$")  # the names this module writes (and may prune)
# Pillow's convert("RGB") clips these modes rather than scaling them; read_rgb scales them.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class Thumb:
    """A thumbnail: ``href`` relative to the page and its pixel size, or ``reason`` why there is none."""

    href: Optional[str] = None
    width: int = 0
    height: int = 0
    reason: Optional[str] = None


# A WebDataset or Parquet store's row names a sample by its key: there is no image file to show.
DATASET_SAMPLE = Thumb(reason="a dataset sample (WebDataset/Parquet): no image file to show")


class Thumbnails:
    """Thumbnails in ``folder`` (``PAGE_files/``), linked from a page beside it.

    Args:
        folder: where the JPEG files go; created on the first thumbnail.
        size: the longest side of a thumbnail, in pixels.
        workers: threads decoding images (Pillow decodes and resizes outside the GIL).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (640, 320), (200, 10, 10)).save(d / "a.png")
        >>> thumbs = Thumbnails(d / "page_files", size=64)
        >>> t = thumbs.of_file(d / "a.png")
        >>> t.href.startswith("page_files/"), (t.width, t.height)
        (True, (64, 32))
        >>> thumbs.of_file(d / "missing.png").reason
        'no such file'
    """

    def __init__(self, folder: Union[str, Path], size: int = DEFAULT_SIZE, workers: Optional[int] = None):
        self.folder = Path(folder)
        self.size = int(size)
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self._made: Dict[str, Thumb] = {}
        self.used = set()  # file names the page links to

    def of_file(self, path: Union[str, Path]) -> Thumb:
        """The thumbnail of an image file (made once per path), or a placeholder's reason."""
        key = str(path)
        if key not in self._made:
            self._made[key] = self._file(Path(path))
        thumb = self._made[key]
        if thumb.href is not None:
            self.used.add(Path(thumb.href).name)
        return thumb

    def of_files(self, paths: Iterable[Union[str, Path]], progress: bool = False) -> None:
        """Make the thumbnails of many files at once, in threads (then :meth:`of_file` is a look-up)."""
        todo = list(dict.fromkeys(str(p) for p in paths if str(p) not in self._made))
        if not todo:
            return
        from tqdm.auto import tqdm

        pool = ThreadPoolExecutor(max(1, self.workers))
        try:
            results = pool.map(lambda p: (p, self._file(Path(p))), todo)
            for p, thumb in tqdm(results, total=len(todo), desc="thumbnails", unit="image", disable=not progress,
                                 leave=False):
                self._made[p] = thumb
        finally:  # on Ctrl-C or a write error, drop the queued images rather than finish them all
            pool.shutdown(wait=True, cancel_futures=True)

    def of_pixels(self, pixels: np.ndarray) -> Thumb:
        """A thumbnail of ``H x W x 3`` uint8 pixels (e.g. an attacked image), named by its content."""
        from PIL import Image

        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
        thumb = self._save(Image.fromarray(pixels), digest)
        self.used.add(Path(thumb.href).name)
        return thumb

    def prune(self) -> None:
        """Delete the thumbnails of an earlier page in the folder that this page no longer links to
        (only files named as this module names them: nothing else in the folder is touched)."""
        if not self.folder.is_dir():
            return
        for entry in os.scandir(self.folder):
            if _NAME.match(entry.name) and entry.name not in self.used and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except OSError:  # a stale file that cannot go does no harm
                    pass

    # -- one file --------------------------------------------------------------------------------
    def _file(self, path: Path) -> Thumb:
        try:
            st = os.stat(path)  # follows symlinks: a link to an image is the image
        except FileNotFoundError:
            return Thumb(reason="no such file")
        except OSError as err:
            return Thumb(reason=f"cannot be read ({err.strerror})")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            return Thumb(reason="not a regular file")
        digest = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{self.size}".encode()).hexdigest()
        done = self._existing(digest)
        if done is not None:
            return done
        try:
            image = self._decode(path)
        except Exception as err:  # noqa: BLE001 - a hostile file may break a decoder in any way
            # (struct.error, IndexError, EOFError, ...): it is that image's placeholder, not the page's end.
            return Thumb(reason=_reason(path, err))
        return self._save(image, digest)  # an unwritable folder is the page's error, not the image's

    def _decode(self, path: Path):
        """The image at thumbnail size, decoding no more than needed (JPEG's draft mode decodes at 1/2,
        1/4 or 1/8 scale); the pixel limit is checked from the header, before decoding."""
        from PIL import Image, ImageOps

        limit = pixel_limit()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, as an error
            try:
                opened = Image.open(path)
            except Image.DecompressionBombError:
                raise ValueError(f"more than twice the limit of {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS)") from None
            with opened as img:
                if limit is not None and img.size[0] * img.size[1] > limit:
                    raise ValueError(f"{img.size[0]} x {img.size[1]} pixels, over the limit of {limit:,} "
                                     "(PIL.Image.MAX_IMAGE_PIXELS)")
                if img.mode in _WIDE_MODES:  # 16-bit or float pixels: scaled as the metric reads them
                    img = Image.fromarray(read_rgb(path))
                else:
                    if img.format == "JPEG":
                        img.draft("RGB", (2 * self.size, 2 * self.size))
                    img = ImageOps.exif_transpose(img)
                    img = img.convert("RGB")
                img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS, reducing_gap=3.0)
                return img

    def _existing(self, digest: str) -> Optional[Thumb]:
        name = digest[:24] + ".jpg"
        target = self.folder / name
        if not target.is_file():
            return None
        from PIL import Image

        try:
            with Image.open(target) as img:  # one of ours: check it is whole, and read its size
                img.verify()
                width, height = img.size
        except DECODE_ERRORS:
            return None
        return Thumb(self._href(name), width, height)

    def _save(self, image, digest: str) -> Thumb:
        name = digest[:24] + ".jpg"
        with atomic_path(self.folder / name) as tmp:  # an interrupted page never leaves half a JPEG
            image.save(tmp, "JPEG", quality=82)
        return Thumb(self._href(name), image.size[0], image.size[1])

    def _href(self, name: str) -> str:
        return f"{self.folder.name}/{name}"


def _reason(path: Path, err: BaseException) -> str:
    """A short reason for a placeholder (without the path, which the caption shows)."""
    if isinstance(err, MemoryError):
        return "out of memory"
    text = str(err).replace(f"{path}: ", "").replace(str(path), "the file").strip() or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."

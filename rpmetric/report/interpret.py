"""Figures of :mod:`rpmetric.interpret`'s results: the grid of feature inversions that ``rpmetric
invert`` writes, and the distance-map figure of ``rpmetric explain``; and each inversion as a PNG.

The builders take tensors the commands already have and return a :class:`matplotlib.figure.Figure`
on the Agg canvas (see :mod:`rpmetric.report.figures`; matplotlib is the ``plot`` extra); save one
with :func:`rpmetric.report.save_figure`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..files import atomic_path
from .figures import _new_figure

__all__ = ["to_rgb8", "save_png", "inversion_grid", "distance_map_figure"]

_TILE = 1.7  # inches per image tile


def to_rgb8(image) -> np.ndarray:
    """``H x W x 3`` uint8 of an image ``[3, H, W]`` (a tensor or array) in [0, 1], rounded to nearest.

    Example:
        >>> import torch
        >>> to_rgb8(torch.tensor([[[0.0, 1.0]], [[0.5, 0.2]], [[1.0, 0.0]]])).tolist()
        [[[0, 128, 255], [255, 51, 0]]]
    """
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"An image must have shape [3, H, W], but got {image.shape}.")
    return np.floor(np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def save_png(image, path: Union[str, Path]) -> None:
    """Write an image ``[3, H, W]`` in [0, 1] as an 8-bit RGB PNG (atomically: a reader never sees
    half a file).

    Example:
        >>> import tempfile, torch
        >>> from rpmetric.images import read_rgb
        >>> path = Path(tempfile.mkdtemp()) / "gray.png"
        >>> save_png(torch.full((3, 2, 4), 0.5), path)
        >>> read_rgb(path).shape, int(read_rgb(path)[0, 0, 0])
        ((2, 4, 3), 128)
    """
    from PIL import Image

    with atomic_path(path) as part:
        Image.fromarray(to_rgb8(image)).save(part, format="PNG")


def inversion_grid(inputs: Sequence, tiles: Sequence[Sequence], cosines: Sequence[Sequence[float]],
                   rows: Sequence[str], columns: Sequence[str]):
    """The grid of ``rpmetric invert``: one row per input image, its input first and then one
    column per model, with the final cosine to the target under each inversion.

    Args:
        inputs: the input images ``[3, H, W]`` in [0, 1], one per row.
        tiles: ``tiles[i][j]``: the inversion of input ``i`` by model ``j``, ``[3, h, w]`` in [0, 1].
        cosines: ``cosines[i][j]``: its cosine to the target embedding.
        rows, columns: the images' and the models' names.

    Returns:
        A Figure; each inversion's axes is labelled ``"tile:i,j"`` (``axes.get_label()``), its
        caption is the axes' xlabel.

    Example:
        >>> import torch
        >>> figure = inversion_grid([torch.zeros(3, 4, 4)], [[torch.ones(3, 4, 4)]], [[0.9912]], ["x.png"], ["vit"])
        >>> [ax.get_xlabel() for ax in figure.axes if ax.get_label() == "tile:0,0"]
        ['cos 0.9912']
    """
    n_rows, n_cols = len(inputs), len(columns)
    if not (len(tiles) == len(cosines) == len(rows) == n_rows) or any(
            len(r) != n_cols or len(c) != n_cols for r, c in zip(tiles, cosines)):
        raise ValueError(f"inversion_grid needs {n_rows} row(s) of {n_cols} tile(s) and cosine(s) each, and a name "
                         "per row and column.")
    figure = _new_figure(_TILE * (n_cols + 1), _TILE * n_rows + 0.5)
    axes = figure.subplots(n_rows, n_cols + 1, squeeze=False)
    for i in range(n_rows):
        _show(axes[i][0], to_rgb8(inputs[i]))
        axes[i][0].set_ylabel(rows[i], fontsize="small")
        axes[i][0].set_label(f"input:{i}")
        for j in range(n_cols):
            ax = axes[i][j + 1]
            _show(ax, to_rgb8(tiles[i][j]))
            ax.set_label(f"tile:{i},{j}")
            ax.set_xlabel(f"cos {cosines[i][j]:.4f}", fontsize="small")
    axes[0][0].set_title("input", fontsize="small")
    for j, name in enumerate(columns):
        axes[0][j + 1].set_title(name, fontsize="small")
    return figure


def distance_map_figure(a, b, maps: Sequence[Tuple[str, object, str]], names: Tuple[str, str] = ("A", "B"),
                        title: Optional[str] = None):
    """The figure of ``rpmetric explain``: A, B, and each map overlaid on B with its colour bar.

    Args:
        a, b: the images ``[3, H, W]`` in [0, 1].
        maps: ``(title, map [H, W], unit)`` per map; the unit labels its colour bar. A map with
            negative values gets a diverging colour scale centred on 0.
        names: the images' names, shown above them.
        title: the figure's title (e.g. the model's name).

    Returns:
        A Figure; the image axes are labelled ``"a"``, ``"b"``, and each map's ``"map:TITLE"``.

    Example:
        >>> import torch
        >>> m = torch.zeros(4, 4); m[1, 2] = 0.25
        >>> figure = distance_map_figure(torch.zeros(3, 4, 4), torch.ones(3, 4, 4), [("occlusion", m, "distance")])
        >>> [ax.get_label() for ax in figure.axes][:3]
        ['a', 'b', 'map:occlusion']
    """
    figure = _new_figure(_TILE * 1.5 * (2 + len(maps)) + 0.6 * len(maps), _TILE * 1.5 + 0.6)
    axes = figure.subplots(1, 2 + len(maps), squeeze=False)[0]
    for ax, image, name, label in ((axes[0], a, names[0], "a"), (axes[1], b, names[1], "b")):
        _show(ax, to_rgb8(image))
        ax.set_title(name, fontsize="small")
        ax.set_label(label)
    base = to_rgb8(b)
    grey = (base.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255
    for ax, (name, values, unit) in zip(axes[2:], maps):
        values = values.detach().float().cpu().numpy() if hasattr(values, "detach") else np.asarray(values, np.float32)
        low, high = float(values.min()), float(values.max())
        if low < 0:
            bound = max(-low, high) or 1.0
            cmap, vmin, vmax = "RdBu_r", -bound, bound
        else:
            cmap, vmin, vmax = "inferno", 0.0, high if high > 0 else 1.0
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name} on {names[1]}", fontsize="small")
        ax.set_label(f"map:{name}")
        bar = figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(unit, fontsize="small")
        bar.ax.tick_params(labelsize="x-small")
    if title:
        figure.suptitle(title, fontsize="small")
    return figure


def _show(ax, rgb: np.ndarray) -> None:
    ax.imshow(rgb, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])

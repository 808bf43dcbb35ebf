"""``rpmetric invert IMAGE... --model M [--model M2 ...] --out GRID.png``: feature inversions of
each image's embedding under each model, in a grid (see :mod:`rpmetric.interpret.inversion`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .common import add_device_option, at_least, finite


def init_choice(text: str):
    """``--init``: ``noise``, ``gray`` or ``image:PATH`` (returned as a Path).

    Example:
        >>> init_choice("gray"), init_choice("image:start.png")
        ('gray', PosixPath('start.png'))
    """
    if text in ("noise", "gray"):
        return text
    if text.startswith("image:") and len(text) > len("image:"):
        return Path(text[len("image:"):])
    raise argparse.ArgumentTypeError(f"must be noise, gray or image:PATH, but got {text!r}")


init_choice.__name__ = "noise|gray|image:PATH"


def register(sub) -> None:
    from ..interpret.inversion import DEFAULT_L2, DEFAULT_LR, DEFAULT_STEPS, DEFAULT_TV
    from ..models.spec import default_model

    p = sub.add_parser(
        "invert", help="feature inversion: images whose embedding matches each input's, one column per model",
        description="For each IMAGE and each --model, optimise pixels (Adam, from --init) until their embedding has "
                    "the largest cosine to the image's embedding, with total variation, a random shift per step and "
                    "an optional l2 term as regularisers. Writes a grid (one row per image: the input, then one "
                    "inversion per model with its final cosine) to --out, each inversion as a PNG beside it "
                    "(OUT-IMAGE-MODEL.png), and prints the cosines. Robust encoders' inversions look like the input; "
                    "clean encoders' look like noise. Needs matplotlib: pip install \"rpmetric[plot]\".")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="the images whose embeddings to invert")
    p.add_argument("--model", action="append", default=None, metavar="M",
                   help="zoo name (see `rpmetric models`), hf-hub:ORG/NAME[@REV], or a local folder; repeat for one "
                        f"column per model (default: {default_model()})")
    p.add_argument("--out", type=Path, required=True, metavar="GRID.png",
                   help="the grid; its suffix picks the format: .png, .svg or .pdf")
    p.add_argument("--steps", type=at_least(1), default=DEFAULT_STEPS, help="Adam steps (default: %(default)s)")
    p.add_argument("--lr", type=finite(0), default=DEFAULT_LR,
                   help="Adam's learning rate, in [0, 1] pixel units (default: %(default)s)")
    p.add_argument("--init", type=init_choice, default="noise", metavar="noise|gray|image:PATH",
                   help="start from uniform noise in [0.25, 0.75], mid-grey, or an image file, which must have the "
                        "images' size (or is brought to --size) (default: noise)")
    p.add_argument("--size", type=at_least(1), default=None, metavar="S",
                   help="resize each image's shorter side to S and crop the centre S x S; the inversions are made at "
                        "that size (default: the images' own size, which they must then share)")
    p.add_argument("--tv", type=finite(0), default=DEFAULT_TV,
                   help="weight of the total-variation term (mean absolute difference of neighbouring pixels; 0 turns "
                        "it off) (default: %(default)s)")
    p.add_argument("--jitter", type=at_least(0), default=None, metavar="PX",
                   help="largest random shift per step, in pixels (0 turns it off) (default: 1/32 of the shorter side, "
                        "at least 1)")
    p.add_argument("--l2", type=finite(0), default=DEFAULT_L2,
                   help="weight of the l2 term (mean squared distance of the pixels from 0.5) (default: %(default)s)")
    p.add_argument("--seed", type=at_least(0), default=0,
                   help="seeds the init noise and the shifts: the same seed gives the same images (default: 0)")
    add_device_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..files import check_writable
    from ..interpret import cosine, invert
    from ..metric import RobustDistance
    from ..models.spec import default_model
    from ..report.figures import check_figure_path, save_figure
    from ..report.interpret import inversion_grid, save_png
    from .common import format_table
    from .interpret_args import check_files, load_same_size, model_label

    models = args.model or [default_model()]
    init_path = args.init if isinstance(args.init, Path) else None
    check_figure_path(args.out, "--out")
    check_files(list(args.images) + ([init_path] if init_path else []))
    check_writable(args.out, "--out")
    why = "the inversions of one run share one size"
    images = load_same_size(list(args.images) + ([init_path] if init_path else []), args.size, why)
    init = images.pop() if init_path else args.init
    batch = torch.cat(images)
    columns = _labels([model_label(m) for m in models])
    rows = _labels([p.stem for p in args.images])
    tiles = [[None] * len(models) for _ in images]
    cosines = [[0.0] * len(models) for _ in images]
    table = []
    for j, model in enumerate(models):
        metric = RobustDistance(model, device=args.device)
        with torch.no_grad():
            target = metric.embed(batch)
        result = invert(metric, target, steps=args.steps, lr=args.lr, init=init, tv=args.tv, jitter=args.jitter,
                        l2=args.l2, seed=args.seed, progress=not args.quiet)
        values = cosine(metric, result, target).tolist()
        unit = metric.to_unit(result).cpu()
        for i in range(len(images)):
            path = args.out.with_name(_file_name(f"{args.out.stem}-{rows[i]}-{columns[j]}") + ".png")
            save_png(unit[i], path)  # as each model finishes: an interruption keeps the models done
            tiles[i][j], cosines[i][j] = unit[i], values[i]
            table.append((str(args.images[i]), model, f"{values[i]:.4f}", str(path)))
        del metric
    figure = inversion_grid([x[0] for x in images], tiles, cosines, rows, columns)
    save_figure(figure, args.out)
    print(format_table(table, ["image", "model", "cosine", "inversion"]))
    print(f"wrote {args.out}")
    return 0


def _labels(names):
    """``names`` with repeats told apart by their position (``x``, ``x#2``)."""
    return [name if names.count(name) == 1 else f"{name}#{i + 1}" for i, name in enumerate(names)]


def _file_name(text: str) -> str:
    """``text`` as a safe file name: characters other than letters, digits, ``.``, ``_`` and ``-``
    become ``_``.

    Example:
        >>> _file_name("grid-cat photo-r-clip#2")
        'grid-cat_photo-r-clip_2'
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)

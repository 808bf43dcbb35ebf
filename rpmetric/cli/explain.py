"""``rpmetric explain A B --model M --out MAP.png``: where B differs from A in the metric's eyes, as
occlusion and/or gradient maps overlaid on B (see :mod:`rpmetric.interpret.maps`)."""

from __future__ import annotations

from pathlib import Path

from .common import add_device_option, add_model_option, at_least, finite, format_distance

_UNITS = {"occlusion": "change of distance d(A, B)", "gradient": "|∂d/∂B| (distance per unit pixel)",
          "gradient-difference": "|∂d/∂B · (B − A)| (distance)"}


def register(sub) -> None:
    from ..interpret import maps

    p = sub.add_parser(
        "explain", help="a map of where image B differs from image A, in distance units",
        description="Draw image A, image B and a map of where B makes the distance d(A, B) (printed first) come "
                    "from, overlaid on B with a colour bar. occlusion: the change of d(A, B) when a --patch square "
                    "of B (every --stride pixels) is replaced by A's pixels there, averaged over the windows that "
                    "cover each pixel (distance units; windows where A and B agree score 0). gradient: "
                    "|dd/dB x (B - A)| summed over channels, the gradient averaged over --samples noisy copies of "
                    "B (SmoothGrad), and blurred (distance units; 0 where A and B agree); --sensitivity drops the "
                    "(B - A) weight. A and B must have the same size, or be brought to one with --size. Needs "
                    "matplotlib: pip install \"rpmetric[plot]\".")
    p.add_argument("images", type=Path, nargs=2, metavar="IMAGE", help="the images A and B")
    add_model_option(p)
    p.add_argument("--out", type=Path, required=True, metavar="MAP.png",
                   help="the figure; its suffix picks the format: .png, .svg or .pdf")
    p.add_argument("--method", choices=("occlusion", "gradient", "both"), default="occlusion",
                   help="which map(s) to draw (default: %(default)s)")
    p.add_argument("--patch", type=at_least(1), default=maps.DEFAULT_PATCH,
                   help="occlusion's window side in pixels, at most the images' shorter side (default: %(default)s)")
    p.add_argument("--stride", type=at_least(1), default=maps.DEFAULT_STRIDE,
                   help="occlusion's step between windows in pixels; the last windows are flush with the border "
                        "(default: %(default)s)")
    p.add_argument("--size", type=at_least(1), default=None, metavar="S",
                   help="resize each image's shorter side to S and crop the centre S x S (default: the images' own "
                        "size, which they must then share)")
    p.add_argument("--samples", type=at_least(1), default=maps.DEFAULT_SAMPLES,
                   help="gradient: noisy copies of B to average over (default: %(default)s)")
    p.add_argument("--noise", type=finite(0), default=maps.DEFAULT_NOISE,
                   help="gradient: std of the copies' Gaussian noise, in [0, 1] pixel units (default: %(default)s)")
    p.add_argument("--smooth", type=finite(0), default=maps.DEFAULT_SMOOTH,
                   help="gradient: std of the Gaussian blur in pixels, 0 for none (default: %(default)s)")
    weight = p.add_mutually_exclusive_group()
    weight.add_argument("--sensitivity", dest="times_difference", action="store_false",
                        help="gradient: the plain |dd/dB|, without the |B - A| weight: where small changes of B move "
                             "the distance most (distance per unit pixel value; need not vanish where A and B agree)")
    weight.add_argument("--times-difference", dest="times_difference", action="store_true",
                        help="gradient: weight each pixel's gradient by |B - A| (the default; kept for scripts that "
                             "pass it)")
    p.set_defaults(times_difference=True)
    p.add_argument("--batch-size", type=at_least(1), default=maps.DEFAULT_BATCH_SIZE,
                   help="occluded or noisy copies per forward pass (default: %(default)s)")
    p.add_argument("--seed", type=at_least(0), default=0, help="seeds the gradient's noise (default: %(default)s)")
    add_device_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..files import check_writable
    from ..interpret import distance_map
    from ..metric import RobustDistance
    from ..report.figures import check_figure_path, save_figure
    from ..report.interpret import distance_map_figure
    from .interpret_args import check_files, load_same_size, model_label

    check_figure_path(args.out, "--out")
    if args.noise > 1:
        raise ValueError(f"--noise must be at most 1 (a std in [0, 1] pixel units), but got {args.noise:g}.")
    check_files(args.images)
    check_writable(args.out, "--out")
    a, b = load_same_size(args.images, args.size, "a distance map compares pixels at the same positions")
    side = min(a.shape[-2:])
    if args.method in ("occlusion", "both") and args.patch > side:
        raise ValueError(f"--patch {args.patch} is larger than the images ({a.shape[-1]} x {a.shape[-2]} pixels); pass "
                         f"--patch {side} or less, or a larger --size.")
    metric = RobustDistance(args.model, device=args.device)
    with torch.no_grad():
        print(f"d(A, B) = {format_distance(float(metric(a, b)[0]))}")
    methods = ["occlusion", "gradient"] if args.method == "both" else [args.method]
    panels = []
    for method in methods:
        values = distance_map(metric, a, b, method, patch=args.patch, stride=args.stride, samples=args.samples,
                              noise=args.noise, smooth=args.smooth, times_difference=args.times_difference,
                              batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)[0].cpu()
        if method == "occlusion":
            title, unit = f"occlusion ({args.patch} px, stride {args.stride})", _UNITS["occlusion"]
        else:
            title = "gradient × |B − A|" if args.times_difference else "gradient sensitivity |∂d/∂B|"
            unit = _UNITS["gradient-difference" if args.times_difference else "gradient"]
        panels.append((title, values, unit))
    names = (f"A: {args.images[0].name}", f"B: {args.images[1].name}")
    figure = distance_map_figure(a[0], b[0], panels, names=names, title=model_label(args.model or metric.spec.name))
    save_figure(figure, args.out)
    print(f"wrote {args.out}")
    return 0

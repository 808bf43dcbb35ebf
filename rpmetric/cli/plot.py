"""``rpmetric plot RESULT.json [...] --out FIG.png|svg|pdf``: compare evaluation results in one figure."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    from ..report.figures import FIGURE_FORMATS

    p = sub.add_parser(
        "plot", help="draw results of `rpmetric eval --out` side by side (bars, robustness curves)",
        description="Compare results written by `rpmetric eval nights|bapps|jnd|things|triplets --out`, one series per file: "
                    "grouped bars per split or category of the 2AFC score (or JND mAP) and, for results with "
                    "--attack, of the clean and the robust accuracy (one bar per radius); below them, when a "
                    "result has several --eps radii, robust accuracy against eps (starting at eps = 0 with the "
                    "clean accuracy; dashed, the worst case under --counterattack). Needs matplotlib: "
                    'pip install "rpmetric[plot]".')
    p.add_argument("results", type=Path, nargs="+", metavar="RESULT.json", help="result files of `rpmetric eval`")
    p.add_argument("--out", type=Path, required=True, metavar="FIG",
                   help=f"the figure; its suffix picks the format: {', '.join('.' + f for f in FIGURE_FORMATS)}")
    p.add_argument("--labels", nargs="+", default=None, metavar="NAME",
                   help="one legend label per result file (default: the model names, with the file names "
                        "added where two files share a model)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..files import check_writable
    from ..report.figures import check_figure_path, comparison_figure, save_figure

    check_figure_path(args.out, "--out")
    if args.labels is not None and len(args.labels) != len(args.results):
        raise ValueError(f"--labels gives {len(args.labels)} label(s) for {len(args.results)} result file(s); give "
                         "one per file, in the same order.")
    check_writable(args.out, "--out")
    figure = comparison_figure(args.results, labels=args.labels)
    save_figure(figure, args.out)
    print(f"wrote {args.out}")
    return 0

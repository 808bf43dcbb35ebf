"""Options and helpers shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..models.spec import default_model


def add_model_option(parser: argparse.ArgumentParser, *, required: bool = False, extra_help: str = "") -> None:
    default = "" if required else f" (default: {default_model()})"
    parser.add_argument(
        "--model", default=None, required=required,
        help=f"zoo name (see `rpmetric models`), hf-hub:ORG/NAME[@REV], or a local folder{extra_help}{default}",
    )


def at_least(low: int):
    """An argparse ``type`` for integers >= ``low``, so a bad value is refused while parsing, with the
    option's name (e.g. ``--batch-size 0``).

    Example:
        >>> at_least(1)("3")
        3
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, but got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, but got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def finite(low: float = -float("inf")):
    """An argparse ``type`` for finite numbers >= ``low``, so ``--lr inf`` or ``--margin nan`` is
    refused while parsing, with the option's name.

    Example:
        >>> finite(0)("3e-4")
        0.0003
    """
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, but got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, but got {text!r}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, but got {text!r}")
        return value

    parse.__name__ = "finite number" if low == -float("inf") else f"number >= {low:g}"
    return parse


def add_html_option(parser: argparse.ArgumentParser, shows: str) -> None:
    """``--html PAGE.html``: a review page of the results (see :mod:`rpmetric.report`)."""
    parser.add_argument("--html", type=Path, default=None, metavar="PAGE.html",
                        help=f"also write a review page: {shows}; a self-contained HTML file that opens offline, "
                             "with downscaled JPEG thumbnails in PAGE_files/ beside it")


def check_html_option(args) -> None:
    """Refuse an unwritable ``--html`` page before any work (no-op without the option)."""
    if getattr(args, "html", None) is not None:
        from ..report.page import check_page_path

        check_page_path(args.html)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")


def format_table(rows, headers) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_distance(value: float) -> str:
    """A distance with 6 significant digits, so that distinct images never print as 0.

    Example:
        >>> format_distance(0.0), format_distance(0.1234567), format_distance(2.5e-8)
        ('0', '0.123457', '2.5e-08')
    """
    return f"{value:.6g}"


def rerun_command(argv, add=(), drop=()) -> str:
    """The shell command that reruns ``rpmetric ARGV`` with the options ``add`` and without ``drop``."""
    import shlex

    words = [w for w in argv if w not in drop] + [w for w in add if w not in argv]
    return shlex.join(["rpmetric", *words])

"""Options and helpers shared by several commands."""

from __future__ import annotations

import argparse

from ..spec import default_model


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None,
        help=f"zoo name (see `rpmetric models`), hf-hub:ORG/NAME[@REV], or a local folder (default: {default_model()})",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")


def format_table(rows, headers) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

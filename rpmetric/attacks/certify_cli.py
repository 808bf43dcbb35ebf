"""Command-line options of the certification (``rpmetric eval nights|bapps --certify``)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import List, Optional, Tuple

from ..counterattack import pixel_unit_notice
from .certify import DEFAULT_RADII, CertifyConfig

__all__ = ["add_certify_options", "certify_settings_from_args", "certify_headers", "certify_columns",
           "certify_settings_record"]

_OPTIONS = ("sigma", "n0", "n", "alpha", "radii", "noise_batch", "noise_seed")


def add_certify_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--certify`` and its knobs; they default to None so that
    :func:`certify_settings_from_args` can tell what was given.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_certify_options(parser)
        >>> config, radii = certify_settings_from_args(parser.parse_args(["--certify", "--sigma", "64"]))
        >>> round(config.sigma, 4), config.n0, config.n, [round(r * 255) for r in radii]
        (0.251, 100, 1000, [36, 72, 108])
    """
    group = parser.add_argument_group(
        "certified accuracy (randomized smoothing of the reference; sigma and radii in units of 1/255 of [0, 1])")
    group.add_argument("--certify", action="store_true",
                       help="also report certified 2AFC accuracy by randomized smoothing (Cohen et al. 2019): "
                            "Gaussian noise on the reference at the model's input size, the left and right images "
                            "clean; each triplet costs n0 + n encoder forwards (a small --batch-size, e.g. 4, "
                            "logs and shows progress more often)")
    group.add_argument("--sigma", type=float, default=None, metavar="S",
                       help="noise std in units of 1/255 of the [0, 1] range, like --radii (64 means 64/255 = 0.251); "
                            "required with --certify")
    group.add_argument("--n0", type=int, default=None, metavar="N", help="noise samples that select the class "
                                                                        "(default 100)")
    # --n alone is ambiguous to torchrun (--nnodes, --nproc-per-node, ...), which parses the whole command line
    group.add_argument("--certify-n", "--n", dest="n", type=int, default=None, metavar="N",
                       help="fresh noise samples that estimate its probability; under torchrun spell it --certify-n "
                            "(default 1000)")
    group.add_argument("--alpha", type=float, default=None, metavar="A",
                       help="level of the one-sided Clopper-Pearson bound: each certified radius holds with "
                            "probability >= 1 - A over the noise (default 0.001)")
    group.add_argument("--radii", type=_radius, nargs="+", default=None, metavar="R",
                       help="l2 radii at which to report certified accuracy, in units of 1/255 of the [0, 1] range, "
                            "on the image at the model's input size (default 36 72 108)")
    group.add_argument("--noise-batch", type=int, default=None, metavar="M",
                       help="noisy references per encoder pass (default 256)")
    group.add_argument("--noise-seed", type=int, default=None, metavar="S",
                       help="seed of the noise; with each triplet's id it fixes the triplet's noise (default 0)")


def certify_settings_from_args(args: argparse.Namespace) -> Optional[Tuple[CertifyConfig, List[float]]]:
    """``(CertifyConfig, radii)`` in absolute units from the parsed options; None without ``--certify``.

    Raises:
        ValueError: a certification option without ``--certify``, ``--certify`` without ``--sigma``,
            or a bad value (sigma <= 0, n0 or n < 1, alpha outside (0, 1), a negative radius).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_certify_options(parser)
        >>> certify_settings_from_args(parser.parse_args(["--certify", "--sigma", "0"]))
        Traceback (most recent call last):
        ...
        ValueError: --sigma must be a finite number > 0, in units of 1/255 of the [0, 1] range (64 means 64/255), but got 0.
    """
    given = {name: getattr(args, name, None) for name in _OPTIONS}
    if not getattr(args, "certify", False):
        stray = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
        if stray:
            raise ValueError(f"{', '.join(stray)} only apply to a certification; add --certify --sigma S.")
        return None
    sigma = given["sigma"]
    if sigma is None:
        raise ValueError("--certify needs --sigma S, the noise std in units of 1/255 of the [0, 1] range "
                         "(e.g. --sigma 64 for 64/255 = 0.25).")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"--sigma must be a finite number > 0, in units of 1/255 of the [0, 1] range (64 means "
                         f"64/255), but got {sigma:g}.")
    for name in ("n0", "n", "noise_batch"):
        if given[name] is not None and given[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, but got {given[name]}.")
    alpha = given["alpha"]
    if alpha is not None and not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), e.g. 0.001, but got {alpha:g}.")
    radii = list(given["radii"]) if given["radii"] is not None else [r * 255 for r in DEFAULT_RADII]
    bad = next((r for r in radii if not (math.isfinite(r) and r >= 0)), None)
    if bad is not None:
        raise ValueError(f"--radii must be finite numbers >= 0, in units of 1/255 of the [0, 1] range (36 means "
                         f"36/255), but got {bad:g}.")
    for option, value in [("--sigma", sigma), *(("--radii", r) for r in radii)]:
        notice = pixel_unit_notice(option, value)
        if notice:
            print(f"rpmetric {getattr(args, 'command', '')}: warning: {notice}", file=sys.stderr)
    defaults = CertifyConfig(sigma=1.0)
    config = CertifyConfig(
        sigma=sigma / 255,
        n0=defaults.n0 if given["n0"] is None else given["n0"],
        n=defaults.n if given["n"] is None else given["n"],
        alpha=defaults.alpha if alpha is None else alpha,
        seed=defaults.seed if given["noise_seed"] is None else given["noise_seed"],
        noise_batch=defaults.noise_batch if given["noise_batch"] is None else given["noise_batch"])
    return config, sorted({r / 255 for r in radii})


def certify_settings_record(config: CertifyConfig, radii: List[float]) -> dict:
    """The certification as the JSON's ``settings`` record it: the config (sigma on [0, 1] and in
    1/255), the radii in both units, and the rules the figures follow."""
    return {**config.to_dict(), "radii": radii, "radii_255": [r * 255 for r in radii],
            "ties": "a noise sample at equal distances votes for neither image; equal n0 votes abstain",
            "label": "human choice p > 0.5 (p == 0.5 counts as left), as the binary accuracy",
            "noise": "N(0, sigma^2) on the reference at the model's input size, not clipped; seeded by "
                     "(noise seed, group/id, block of 32 samples)"}


def certify_headers(radii: List[float]) -> List[str]:
    """Table headers of :func:`certify_columns`.

    Example:
        >>> certify_headers([36 / 255, 72 / 255])
        ['smoothed (%)', 'abstain (%)', 'cert @36/255 (%)', 'cert @72/255 (%)']
    """
    return ["smoothed (%)", "abstain (%)", *(f"cert @{r * 255:.4g}/255 (%)" for r in radii)]


def certify_columns(summary: Optional[dict]) -> List[str]:
    """Table cells of one group's ``certify`` summary (:func:`rpmetric.attacks.certify.certified_summary`)."""
    if summary is None:
        return []
    values = [summary["clean_accuracy"], summary["abstained"], *(p["accuracy"] for p in summary["certified"])]
    return [f"{100 * v:.2f}" for v in values]


def _radius(text: str) -> float:
    """An argparse ``type`` for one of the ``--radii``, whose error says why a positional argument
    after them was read as a radius."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be numbers, but got {text!r}; --radii takes every value up to the next option, so put "
            "positional arguments (ROOT) before --radii") from None

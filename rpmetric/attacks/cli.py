"""Command-line options of the attack, for any command that evaluates 2AFC (``rpmetric eval``)."""

from __future__ import annotations

import argparse
from typing import Optional

from .config import AttackConfig, Norm

__all__ = ["add_attack_options", "attack_config_from_args"]

_OPTIONS = ("eps", "steps", "restarts", "n_samples", "seed", "eot_samples")


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--attack linf|l2`` and its knobs; all default to None so that
    :func:`attack_config_from_args` can tell what was given.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_attack_options(parser)
        >>> attack_config_from_args(parser.parse_args(["--attack", "linf", "--eps", "8"]))["eps"] == 8 / 255
        True
    """
    group = parser.add_argument_group("robust evaluation (APGD-CE on the reference image)")
    group.add_argument("--attack", choices=[n.value for n in Norm], default=None,
                       help="also report robust binary accuracy under APGD-CE in this norm, on the reference "
                            "image at the model's input size, in [0, 1]")
    group.add_argument("--eps", type=float, default=None, metavar="E",
                       help="attack radius: in units of 1/255 for linf (default 4, i.e. 4/255), absolute for "
                            "l2 (default 3)")
    group.add_argument("--steps", type=int, default=None, metavar="S", help="APGD iterations (default 100)")
    group.add_argument("--restarts", type=int, default=None, metavar="R", help="APGD random restarts (default 1)")
    group.add_argument("--n-samples", type=int, default=None, metavar="N",
                       help="attack only the first N triplets of each split or category (default: all)")
    group.add_argument("--seed", type=int, default=None, metavar="S", help="APGD seed (default 0)")
    group.add_argument("--eot-samples", type=int, default=None, metavar="K",
                       help="with --counterattack: gradient samples per step of the adaptive attack, each through "
                            "the defence with another seed (default 4)")


def attack_config_from_args(args: argparse.Namespace) -> Optional[dict]:
    """Keyword arguments for :func:`rpmetric.attacks.evaluate_attack` from the parsed options, with
    ``eps`` in absolute units; None when ``--attack`` was not given.

    Raises:
        ValueError: an attack option without ``--attack``, or a bad value (checked now, not after
            the clean evaluation).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_attack_options(parser)
        >>> attack_config_from_args(parser.parse_args([]))
        >>> attack_config_from_args(parser.parse_args(["--attack", "l2"]))
        {'norm': 'l2', 'eps': 3.0, 'steps': 100, 'restarts': 1, 'seed': 0, 'eot_samples': 4, 'n_samples': None}
    """
    given = {name: getattr(args, name, None) for name in _OPTIONS}
    if args.attack is None:
        stray = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
        if stray:
            raise ValueError(f"{', '.join(stray)} only apply to a robust evaluation; add --attack linf or --attack l2.")
        return None
    norm = Norm.parse(args.attack)
    eps = given["eps"]
    if eps is not None and norm is Norm.LINF:
        eps = eps / 255  # the command line states l-inf radii as the papers do, in 1/255 units
    defaults = AttackConfig()
    config = AttackConfig.create(
        norm, eps,
        steps=defaults.steps if given["steps"] is None else given["steps"],
        restarts=defaults.restarts if given["restarts"] is None else given["restarts"],
        seed=defaults.seed if given["seed"] is None else given["seed"],
        eot_samples=defaults.eot_samples if given["eot_samples"] is None else given["eot_samples"])
    n_samples = given["n_samples"]
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"Argument `--n-samples` must be at least 1, but got {n_samples}.")
    return {"norm": config.norm.value, "eps": config.eps, "steps": config.steps, "restarts": config.restarts,
            "seed": config.seed, "eot_samples": config.eot_samples, "n_samples": n_samples}

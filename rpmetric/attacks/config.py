"""The attack's settings: a fixed vocabulary of norms and one validated, JSON-ready config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional, Union

from ..validation import check_int, check_real

__all__ = ["Norm", "Target", "AttackConfig", "SUITE", "SQUARE_QUERIES", "radius_label", "suite_for"]

# The attack ensemble of --attack-suite, in the order it runs and reports (see rpmetric.attacks.suite).
SUITE = ("apgd-ce", "apgd-margin", "apgd-targeted", "square")
SQUARE_QUERIES = 5000  # pyautoattack's SquareAttack default (n_queries), as AutoAttack runs it


def _parse_choice(cls, value, argument: str):
    """``value`` (a member, or its value in any case) as a member of the enum ``cls``."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value.lower())
        except ValueError:
            pass
    raise ValueError(f"Argument `{argument}` must be one of {tuple(m.value for m in cls)}, but got {value!r}.")


class Norm(str, Enum):
    """Threat model of the attack: the norm that bounds the perturbation of the reference image."""

    LINF = "linf"
    L2 = "l2"

    @classmethod
    def parse(cls, value: Union[str, "Norm"]) -> "Norm":
        """``"linf"``/``"l2"`` (any case) or a Norm, as a Norm.

        Example:
            >>> Norm.parse("Linf")
            <Norm.LINF: 'linf'>
        """
        return _parse_choice(cls, value, "norm")

    @property
    def default_eps(self) -> float:
        """The published radius: 4/255 in l-inf, 3 in l2 (on [0, 1] images at 224x224)."""
        return 4 / 255 if self is Norm.LINF else 3.0

    @property
    def autoattack_name(self) -> str:
        """The name pyautoattack's APGD expects."""
        return "Linf" if self is Norm.LINF else "L2"


class Target(str, Enum):
    """Which images of a triplet the attack perturbs (the threat model).

    - ``ref``: the reference only, as in the published protocol (Croce et al.).
    - ``distorted``: the distorted image people judged closer to the reference, pushed away from it
      (Ghildyal & Liu, TMLR 2023). ``p == 0.5`` follows the label rule (left).
    - ``both``: all three images at once, each in its own ball.
    """

    REF = "ref"
    DISTORTED = "distorted"
    BOTH = "both"

    @classmethod
    def parse(cls, value: Union[str, "Target"]) -> "Target":
        """``"ref"``/``"distorted"``/``"both"`` (any case) or a Target, as a Target.

        Example:
            >>> Target.parse("Both")
            <Target.BOTH: 'both'>
        """
        return _parse_choice(cls, value, "target")


def suite_for(target: Union[str, Target]) -> tuple:
    """The attacks of the full suite that apply to ``target``: with ``distorted`` the cosine to the
    image people did not choose is fixed (that image is not perturbed), so the targeted attack,
    which ascends it, has no gradient and is left out.

    Example:
        >>> suite_for("distorted")
        ('apgd-ce', 'apgd-margin', 'square')
    """
    if Target.parse(target) is Target.DISTORTED:
        return tuple(a for a in SUITE if a != "apgd-targeted")
    return SUITE


@dataclass(frozen=True)
class AttackConfig:
    """APGD-CE on the reference image of each triplet.

    Attributes:
        norm: the threat model.
        eps: the radius, on [0, 1] pixels at the model's input size (l-inf: a fraction of the
            range, e.g. 4/255; l2: absolute, e.g. 3).
        steps: APGD iterations per restart.
        restarts: random restarts; each attacks only the triplets still judged correctly.
        seed: seeds APGD's random start (reset for every batch, so a batch's result depends on
            its content only and a resumed run gives the same numbers).
        eot_samples: adaptive attack on a counterattack only: gradient samples per step, each
            through a copy of the defence with a different seed (expectation over transformation).
        target: which images of the triplet are perturbed (:class:`Target`).
        suite: empty for APGD-CE alone (the published protocol); otherwise the attacks of the
            ensemble, of :data:`SUITE`, each run on every triplet (the worst case counts).
        square_queries: Square's query budget per restart (with ``"square"`` in ``suite``).

    Example:
        >>> AttackConfig.create("l2").eps
        3.0
    """

    norm: Norm = Norm.LINF
    eps: float = 4 / 255
    steps: int = 100
    restarts: int = 1
    seed: int = 0
    eot_samples: int = 4
    target: Target = Target.REF
    suite: tuple = ()
    square_queries: int = SQUARE_QUERIES

    @classmethod
    def create(cls, norm: Union[str, Norm] = "linf", eps: Optional[float] = None, steps: int = 100,
               restarts: int = 1, seed: int = 0, eot_samples: int = 4, target: Union[str, Target] = "ref",
               suite=(), square_queries: int = SQUARE_QUERIES) -> "AttackConfig":
        """A checked config; ``eps=None`` picks the published radius of ``norm``; ``suite=True``
        picks the attacks of :data:`SUITE` that apply to ``target`` (:func:`suite_for`)."""
        norm = Norm.parse(norm)
        eps = norm.default_eps if eps is None else check_real("eps", eps)
        if not math.isfinite(eps):
            raise ValueError(f"Argument `eps` must be finite, but got {eps!r}.")
        if eps < 0:
            raise ValueError(f"Argument `eps` must be at least 0, but got {eps!r}.")
        if norm is Norm.LINF and eps > 1:
            raise ValueError(f"Argument `eps` must be at most 1 for linf (a fraction of the [0, 1] range), but "
                             f"got {eps!r}; for 4/255 pass 4/255, not 4.")
        target = Target.parse(target)
        return cls(norm, eps, check_int("steps", steps, 1), check_int("restarts", restarts, 1),
                   check_int("seed", seed, 0), check_int("eot_samples", eot_samples, 1), target,
                   _checked_suite(suite, target), check_int("square_queries", square_queries, 1))

    @property
    def attacks(self) -> tuple:
        """The attacks that run: the suite's, or APGD-CE alone."""
        return self.suite or ("apgd-ce",)

    def to_dict(self, defended: bool = True) -> dict:
        """The config as JSON-ready data (what results and run logs record); ``eot_samples`` only
        when ``defended`` (the attack runs on a counterattack), as it applies to nothing else."""
        config = {"attack": "suite" if self.suite else "apgd-ce", "target": self.target.value,
                  "norm": self.norm.value, "eps": self.eps, "steps": self.steps, "restarts": self.restarts,
                  "seed": self.seed}
        if self.suite:
            config["suite"] = list(self.suite)
            if "square" in self.suite:
                config["square_queries"] = self.square_queries
        return {**config, "eot_samples": self.eot_samples} if defended else config


def _checked_suite(suite, target: Target) -> tuple:
    if suite is True:
        return suite_for(target)
    if suite is False or suite is None:
        return ()
    if isinstance(suite, str) or not all(isinstance(a, str) for a in suite):
        raise TypeError(f"Argument `suite` must be True, False or a sequence of attack names of {SUITE}, but got "
                        f"{suite!r}.")
    names = tuple(dict.fromkeys(suite))
    bad = next((a for a in names if a not in SUITE), None)
    if bad is not None:
        raise ValueError(f"Argument `suite` names an unknown attack {bad!r}; choose from {SUITE}.")
    if "apgd-targeted" in names and target is Target.DISTORTED:
        raise ValueError("The targeted attack does not apply to target 'distorted': it ascends the cosine to the image "
                         "people did not choose, which that threat model leaves unperturbed; drop 'apgd-targeted'.")
    return tuple(a for a in SUITE if a in names)  # the suite's order, whatever order they were given in


def radius_label(norm: str, eps: float) -> str:
    """A radius as the command line states it: ``4/255`` for linf (``0`` for none), ``0.5`` for l2.

    Example:
        >>> radius_label("linf", 8 / 255), radius_label("linf", 0.0), radius_label("l2", 0.5)
        ('8/255', '0', '0.5')
    """
    if eps == 0:
        return "0"
    return f"{eps * 255:.4g}/255" if Norm.parse(norm) is Norm.LINF else f"{eps:.4g}"

"""The attack's settings: a fixed vocabulary of norms and one validated, JSON-ready config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional, Union

from ..validation import check_int, check_real

__all__ = ["Norm", "AttackConfig", "radius_label"]


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
        if isinstance(value, Norm):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        raise ValueError(f"Argument `norm` must be one of {tuple(n.value for n in cls)}, but got {value!r}.")

    @property
    def default_eps(self) -> float:
        """The published radius: 4/255 in l-inf, 3 in l2 (on [0, 1] images at 224x224)."""
        return 4 / 255 if self is Norm.LINF else 3.0

    @property
    def autoattack_name(self) -> str:
        """The name pyautoattack's APGD expects."""
        return "Linf" if self is Norm.LINF else "L2"


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

    @classmethod
    def create(cls, norm: Union[str, Norm] = "linf", eps: Optional[float] = None, steps: int = 100,
               restarts: int = 1, seed: int = 0, eot_samples: int = 4) -> "AttackConfig":
        """A checked config; ``eps=None`` picks the published radius of ``norm``."""
        norm = Norm.parse(norm)
        eps = norm.default_eps if eps is None else check_real("eps", eps)
        if not math.isfinite(eps):
            raise ValueError(f"Argument `eps` must be finite, but got {eps!r}.")
        if eps < 0:
            raise ValueError(f"Argument `eps` must be at least 0, but got {eps!r}.")
        if norm is Norm.LINF and eps > 1:
            raise ValueError(f"Argument `eps` must be at most 1 for linf (a fraction of the [0, 1] range), but "
                             f"got {eps!r}; for 4/255 pass 4/255, not 4.")
        return cls(norm, eps, check_int("steps", steps, 1), check_int("restarts", restarts, 1),
                   check_int("seed", seed, 0), check_int("eot_samples", eot_samples, 1))

    def to_dict(self, defended: bool = True) -> dict:
        """The config as JSON-ready data (what results and run logs record); ``eot_samples`` only
        when ``defended`` (the attack runs on a counterattack), as it applies to nothing else."""
        config = {"attack": "apgd-ce", "norm": self.norm.value, "eps": self.eps, "steps": self.steps,
                  "restarts": self.restarts, "seed": self.seed}
        return {**config, "eot_samples": self.eot_samples} if defended else config


def radius_label(norm: str, eps: float) -> str:
    """A radius as the command line states it: ``4/255`` for linf (``0`` for none), ``0.5`` for l2.

    Example:
        >>> radius_label("linf", 8 / 255), radius_label("linf", 0.0), radius_label("l2", 0.5)
        ('8/255', '0', '0.5')
    """
    if eps == 0:
        return "0"
    return f"{eps * 255:.4g}/255" if Norm.parse(norm) is Norm.LINF else f"{eps:.4g}"

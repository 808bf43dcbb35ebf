"""Adversarial evaluation of 2AFC agreement: APGD on the reference image of each triplet, or on
the other threat models (:class:`Target`), alone or as an ensemble (:data:`SUITE`).

- :func:`evaluate_attack`: clean and robust binary accuracy of a metric on a dataset, optionally
  with a test-time counterattack judged non-adaptively and adaptively.
- :class:`TwoAFCLogits`: the 2AFC decision as a 2-class classifier, for any classification attack;
  :class:`TripletView` lays out the rows a threat model perturbs (``ref``, ``distorted``, ``both``).
- :func:`run_apgd`: pyautoattack's APGD (cross-entropy, margin or target-logit loss) on a batch;
  :func:`run_square`: its Square attack (black-box), on the same classifiers.
- :func:`add_attack_options` / :func:`attack_config_from_args`: the command-line options.
- :func:`certify`: certified 2AFC accuracy by randomized smoothing of the reference
  (:mod:`rpmetric.attacks.certify`), with per-triplet radii.
"""

from .apgd import ApgdResult, perturbation_norms, run_apgd
from .certify import CertifyConfig, CertifyResult, certified_summary, certify, certify_task
from .cli import add_attack_options, attack_columns, attack_config_from_args, attack_groups, attack_headers
from .config import SUITE, AttackConfig, Norm, Target, radius_label
from .evaluate import AttackResult, evaluate_attack
from .logits import TwoAFCLogits, human_labels
from .square import run_square
from .threat import DistortedLogits, JointLogits, TripletView

__all__ = [
    "evaluate_attack",
    "AttackResult",
    "AttackConfig",
    "Norm",
    "Target",
    "SUITE",
    "TripletView",
    "DistortedLogits",
    "JointLogits",
    "run_square",
    "TwoAFCLogits",
    "human_labels",
    "run_apgd",
    "ApgdResult",
    "perturbation_norms",
    "add_attack_options",
    "attack_config_from_args",
    "attack_groups",
    "attack_columns",
    "attack_headers",
    "radius_label",
    "certify",
    "CertifyResult",
    "CertifyConfig",
    "certify_task",
    "certified_summary",
]

"""Adversarial evaluation of 2AFC agreement: APGD on the reference image of each triplet.

- :func:`evaluate_attack`: clean and robust binary accuracy of a metric on a dataset, optionally
  with a test-time counterattack judged non-adaptively and adaptively.
- :class:`TwoAFCLogits`: the 2AFC decision as a 2-class classifier, for any classification attack.
- :func:`run_apgd`: pyautoattack's APGD-CE on a batch of references.
- :func:`add_attack_options` / :func:`attack_config_from_args`: the command-line options.
- :func:`certify`: certified 2AFC accuracy by randomized smoothing of the reference
  (:mod:`rpmetric.attacks.certify`), with per-triplet radii.
"""

from .apgd import ApgdResult, perturbation_norms, run_apgd
from .certify import CertifyConfig, CertifyResult, certified_summary, certify, certify_task
from .cli import add_attack_options, attack_columns, attack_config_from_args, attack_groups, attack_headers
from .config import AttackConfig, Norm, radius_label
from .evaluate import AttackResult, evaluate_attack
from .logits import TwoAFCLogits, human_labels

__all__ = [
    "evaluate_attack",
    "AttackResult",
    "AttackConfig",
    "Norm",
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

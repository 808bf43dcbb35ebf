"""The README's attack-suite figures on the test-time counterattack: two tiny random-weight models
(the tests' tiny ViT and ConvNeXt, not real metrics) on a generated NIGHTS folder.

For each model and each threat model (``--attack-target ref|distorted|both``) it runs
``rpmetric eval nights --attack linf --counterattack --attack-suite`` and prints one markdown row:
the plain metric's robust accuracy per attack and for the ensemble, then the defended metric's
clean, non-adaptive and adaptive (BPDA + EOT for the APGD attacks, Square black-box on the
defended decision) figures, per attack and for the ensemble.

Every triplet's left or right image is the reference itself and people chose it (p = 0 or 1), so
the clean accuracy is 100% by construction.

    python evals/suite_tiny.py [--triplets 24] [--eps 4] [--steps 20] [--square-queries 1000] [--eot-samples 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import _common  # noqa: F401  (puts tests/ on sys.path)
import tinymodels
from figure_tiny import nights

from rpmetric.cli import main

MODELS = (("tiny ViT", tinymodels.TINY_VIT_CFG), ("tiny ConvNeXt", tinymodels.TINY_CONVNEXT_CFG))


def run(args) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = nights(tmp / "nights", args.triplets)
        print("| model (random weights) | target | clean | APGD-CE | APGD-margin | APGD-targeted | Square | ensemble "
              "| TTC clean | TTC non-adaptive | TTC adaptive APGD-CE (BPDA+EOT) | adaptive APGD-margin "
              "| adaptive APGD-targeted | Square on TTC | TTC adaptive ensemble |")
        print("|" + "---|" * 15)
        for label, cfg in MODELS:
            model = tinymodels.save_open_clip(tmp / label.replace(" ", "-"), cfg)
            for target in ("ref", "distorted", "both"):
                out = tmp / f"{label}-{target}.json"
                argv = ["eval", "nights", str(root), "--model", str(model), "--workers", "0", "--device", "cpu",
                        "--attack", "linf", "--eps", str(args.eps), "--steps", str(args.steps), "--counterattack",
                        "--eot-samples", str(args.eot_samples), "--attack-suite", "--square-queries",
                        str(args.square_queries), "--attack-target", target, "--out", str(out)]
                assert main(argv) == 0
                total = json.loads(out.read_text())["attack"]["total"]
                suite, ca = total["suite"], total["counterattack"]
                adaptive = ca["adaptive_suite"]

                def cell(table, name):
                    return f"{100 * table[name]:.1f}" if name in table else "n/a"

                names = ("apgd-ce", "apgd-margin", "apgd-targeted", "square")
                cells = [label, target, f"{100 * total['clean_accuracy']:.1f}", *(cell(suite, n) for n in names),
                         cell(suite, "ensemble"), f"{100 * ca['clean_accuracy']:.1f}",
                         f"{100 * ca['nonadaptive_accuracy']:.1f}", *(cell(adaptive, n) for n in names),
                         cell(adaptive, "ensemble")]
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triplets", type=int, default=24)
    parser.add_argument("--eps", type=float, default=4.0, help="l-inf radius in 1/255")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--square-queries", type=int, default=1000)
    parser.add_argument("--eot-samples", type=int, default=4)
    run(parser.parse_args())

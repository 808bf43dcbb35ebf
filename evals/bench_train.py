"""Training speed of the heads against plain passes of the same backbone, in the same run.

- Baselines: the open_clip visual tower (random weights of ``--arch``) at its input size, on a
  batch of ``3 * --lora-batch`` images: forward and backward into all its weights (what one step
  of ordinary fine-tuning costs), and a forward without gradients (what embedding the images
  costs). Reported as images/s.
- LoRA: one training step of the trainer (``rpmetric.training``: LoRA forward of ref, left and right,
  hinge loss, backward into the adapters only, Adam step), on ``--lora-batch`` triplets.
  Reported as images/s (3 per triplet) and as a ratio to the forward+backward baseline's images/s.
- MLP: epochs of the trainer on cached embeddings (batch 512, as published). Reported as steps/s,
  triplets/s, and how many times faster a step is than embedding its 3 x 512 images once
  (no gradients), which is the work the cache saves per step; that time is extrapolated from the
  no-grad baseline's images/s, since a 1536-image batch takes minutes on a CPU. That the cached
  epochs never run the backbone is not measured here but asserted by
  tests/test_training.py::test_mlp_training_beats_the_untrained_head_and_embeds_each_image_once.

    python evals/bench_train.py [--arch ViT-B-32] [--lora-batch 4] [--repeats 3] [--threads 2]

With ``--adversarial-study`` it instead measures what ``--adversarial linf --eps 4`` does on the
tiny test ViT and generated NIGHTS data (tests/test_training.py's learnable rule): clean val 2AFC
and robust val accuracy (APGD-CE, l-inf 4/255) of heads trained with and without it.

    python evals/bench_train.py --adversarial-study [--epochs 6] [--attack-steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleaved_timings, save_random_open_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture, random weights")
    parser.add_argument("--lora-batch", type=int, default=4, help="triplets per LoRA step (published: 32)")
    parser.add_argument("--mlp-triplets", type=int, default=4096, help="cached triplets per MLP epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adversarial-study", action="store_true", help="measure adversarial training instead")
    parser.add_argument("--epochs", type=int, default=6, help="(study) training epochs")
    parser.add_argument("--attack-steps", type=int, default=20, help="(study) APGD steps of the robust evaluation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.adversarial_study:
        adversarial_study(args)
        return

    from rpmetric.datasets import Triplet
    from rpmetric.models import load_encoder
    from rpmetric.models.encoder import Encoder
    from rpmetric.models.heads import HeadConfig, attach_head, head_dropouts, head_parameters
    from rpmetric.training import TrainConfig, _head_training, _Run

    with tempfile.TemporaryDirectory(prefix="rpmetric-bench-train-") as tmp:
        folder, reference = save_random_open_clip(args.arch, Path(tmp) / "model")
        plain = reference.visual.train(False)
        plain.requires_grad_(True)
        base = load_encoder(str(folder))
        size = base.image_size
        images = torch.rand(3 * args.lora_batch, 3, size, size)

        def plain_step():
            plain.zero_grad(set_to_none=True)
            plain(images).sum().backward()

        def plain_forward():
            with torch.no_grad():
                plain(images)

        # LoRA through the trainer's own step.
        lora_config = TrainConfig(HeadConfig("lora"), batch_size=args.lora_batch)
        module, _ = attach_head(load_encoder(str(folder)).backbone, lora_config.head)
        lora_model = Encoder(module, base.spec)
        params = head_parameters(module)
        lora_optimizer = torch.optim.Adam(params, lr=lora_config.lr)
        lora_run = _Run(lora_config, {"train": []}, torch.device("cpu"), progress=False)
        p = torch.randint(0, 2, (args.lora_batch,)).double()

        def lora_step():
            with _head_training(params, head_dropouts(module)):
                ref, left, right = lora_model(images).chunk(3)
                lora_run.step(lora_optimizer, ref, left, right, p)

        times = interleaved_timings({"plain_forward_backward": plain_step, "plain_forward_no_grad": plain_forward,
                                     "lora_step": lora_step}, repeats=args.repeats, warmup=1)
        plain_s, lora_s = statistics.median(times["plain_forward_backward"]), statistics.median(times["lora_step"])
        forward_s = statistics.median(times["plain_forward_no_grad"])

        # MLP on cached embeddings, through the trainer's epoch loop.
        mlp_config = TrainConfig(HeadConfig("mlp"), epochs=1)
        dim = base(images[:1]).shape[1]
        mlp_module, _ = attach_head(base.backbone, mlp_config.head, dim=dim)
        mlp_model = Encoder(mlp_module, base.spec)
        n = args.mlp_triplets
        # Records are never opened: the epoch reads only the cached embeddings and p.
        records = [Triplet(str(i), Path("ref.png"), Path("left.png"), Path("right.png"), float(i % 2)) for i in range(n)]
        mlp_run = _Run(mlp_config, {"train": records}, torch.device("cpu"), progress=False)
        mlp_run.cache = {"train": tuple(torch.randn(n, dim) for _ in range(3))}
        mlp_params = head_parameters(mlp_module)
        mlp_optimizer = torch.optim.Adam(mlp_params, lr=mlp_config.lr)

        def mlp_epoch():
            with _head_training(mlp_params, []):
                mlp_run.train_epoch(mlp_model, mlp_optimizer, epoch=1)

        mlp_times = interleaved_timings({"mlp_epoch": mlp_epoch}, repeats=args.repeats, warmup=1)
        steps = -(-n // mlp_config.batch)
        mlp_step_s = statistics.median(mlp_times["mlp_epoch"]) / steps

    plain_images_per_s = images.shape[0] / plain_s
    forward_images_per_s = images.shape[0] / forward_s
    lora_images_per_s = images.shape[0] / lora_s
    batch_images = 3 * mlp_config.batch
    report = {
        "arch": args.arch, "threads": args.threads, "image_size": size, "baseline_batch_images": images.shape[0],
        "plain_forward_backward_images_per_s": round(plain_images_per_s, 2),
        "plain_forward_no_grad_images_per_s": round(forward_images_per_s, 2),
        "lora_train_images_per_s": round(lora_images_per_s, 2),
        "lora_over_plain": round(lora_images_per_s / plain_images_per_s, 3),
        "mlp_batch": mlp_config.batch,
        "mlp_steps_per_s": round(1.0 / mlp_step_s, 1),
        "mlp_triplets_per_s": round(mlp_config.batch / mlp_step_s),
        # Embedding the step's 3 x batch images once without gradients (extrapolated) over the step.
        "mlp_step_vs_embedding_its_images": round((batch_images / forward_images_per_s) / mlp_step_s),
    }
    print(json.dumps(report, indent=2))


def adversarial_study(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_training
    import tinymodels

    import rpmetric
    from rpmetric.attacks.evaluate import evaluate_attack
    from rpmetric.datasets import read_nights
    from rpmetric.models.heads import HeadConfig
    from rpmetric.training import TrainConfig, train_nights

    rows = []
    with tempfile.TemporaryDirectory(prefix="rpmetric-adv-study-") as tmp:
        tmp = Path(tmp)
        root = test_training.write_learnable_nights(tmp / "nights", sizes={"train": 96, "val": 32, "test": 8})
        model = str(tinymodels.save_open_clip(tmp / "vit", tinymodels.TINY_VIT_CFG))
        val = read_nights(root, "val")

        def measure(name, metric):
            result = evaluate_attack(metric, val, steps=args.attack_steps, progress=False)
            rows.append({"model": name, "clean_binary_acc": result.clean_accuracy,
                         "robust_binary_acc_linf_4": result.robust_accuracy})

        measure("base (no head)", rpmetric.RobustDistance(model, device="cpu"))
        for head in ("mlp", "lora"):
            for adversarial in (None, "linf"):
                config = TrainConfig(HeadConfig(head, hidden=64, r=4, alpha=4.0), epochs=args.epochs,
                                     batch_size=8, lr=1e-2, adversarial=adversarial)
                out = tmp / f"{head}-{adversarial}"
                train_nights(root, model, out, config, progress=False, device="cpu")
                measure(f"{head}{' + adversarial' if adversarial else ''}", rpmetric.RobustDistance(str(out), device="cpu"))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

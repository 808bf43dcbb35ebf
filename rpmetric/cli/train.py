"""``rpmetric train nights ROOT --model BACKBONE --head mlp|lora --out DIR``: fine-tune a head on NIGHTS."""

from __future__ import annotations

from pathlib import Path

from .common import add_device_option, format_table


def register(sub) -> None:
    from ..heads import HEAD_TYPES
    from ..training import ADVERSARIAL_NORMS

    p = sub.add_parser("train", help="fine-tune an MLP or LoRA head on human judgements (NIGHTS)",
                       description="Fine-tune a head on a frozen robust backbone with DreamSim's hinge loss, keep the "
                                   "epoch best on val, score it on test, and write a head folder that "
                                   "RobustDistance(model=DIR) and --model DIR load.")
    datasets = p.add_subparsers(dest="dataset", metavar="DATASET")
    datasets.required = True
    q = datasets.add_parser("nights", help="train on NIGHTS (train split; val selects; test is reported)")
    q.add_argument("root", type=Path, metavar="ROOT", help="NIGHTS folder (data.csv, ref/, distort/)")
    q.add_argument("--model", required=True, metavar="BACKBONE",
                   help="base model: zoo name, hf-hub:ORG/NAME[@REV] or a folder (written into the head's config; "
                        "use a zoo name or Hub id to share the head)")
    q.add_argument("--head", required=True, choices=HEAD_TYPES, help="mlp: residual MLP on the embedding; lora: "
                                                                     "low-rank updates inside the backbone")
    q.add_argument("--out", required=True, type=Path, metavar="DIR", help="head folder to write")
    q.add_argument("--epochs", type=int, default=8, help="epochs (default: 8)")
    q.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and dropout (default: 0)")
    q.add_argument("--resume", action="store_true", help="continue the interrupted run in DIR from its last epoch")
    q.add_argument("--batch-size", type=int, default=None, help="default: 512 for mlp, 32 for lora")
    q.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default: 3e-4)")
    q.add_argument("--weight-decay", type=float, default=0.0, help="default: 0")
    q.add_argument("--margin", type=float, default=0.05, help="hinge loss margin (default: 0.05)")
    q.add_argument("--hidden", type=int, default=512, help="MLP hidden size (default: 512)")
    q.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default: 16)")
    q.add_argument("--lora-alpha", type=float, default=0.5, help="LoRA alpha; the update is scaled by alpha/r "
                                                                 "(default: 0.5)")
    q.add_argument("--lora-dropout", type=float, default=0.3, help="LoRA dropout (default: 0.3)")
    q.add_argument("--adversarial", default=None, choices=ADVERSARIAL_NORMS,
                   help="train on references attacked with PGD (default: off)")
    q.add_argument("--eps", type=float, default=4.0, help="attack radius in 1/255 units (default: 4, i.e. 4/255)")
    q.add_argument("--attack-steps", type=int, default=10, help="PGD steps per batch (default: 10)")
    q.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default: 0)")
    add_device_option(q)
    q.set_defaults(func=run)


def run(args) -> int:
    from ..heads import HeadConfig
    from ..training import TrainConfig, train_nights

    head = HeadConfig(args.head, hidden=args.hidden, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    config = TrainConfig(head=head, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, margin=args.margin, seed=args.seed,
                         adversarial=args.adversarial, eps=args.eps, attack_steps=args.attack_steps,
                         workers=args.workers)
    result = train_nights(args.root, args.model, args.out, config, resume=args.resume, device=args.device)
    rows = [("val (untrained)", "", f"{100 * result.val_history[0]:.2f}"),
            (f"val (epoch {result.best_epoch}, kept)", "", f"{100 * result.val_history[result.best_epoch]:.2f}")]
    rows += [(name, r["n"], f"{100 * r['score']:.2f}") for name, r in result.test.items()]
    print(format_table(rows, ["split", "n", "2AFC %"]))
    print(f"head written to {result.out} (load it with --model {result.out})")
    return 0

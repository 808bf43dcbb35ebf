"""``rpmetric train nights ROOT --model BACKBONE --head mlp|lora --out DIR``: fine-tune a head on NIGHTS."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .common import add_device_option, add_model_option, at_least, finite, format_table, rerun_command


def register(sub) -> None:
    from ..models.heads import HEAD_TYPES, HeadConfig
    from ..training import ADVERSARIAL_NORMS, DEFAULT_BATCH, TrainConfig

    p = sub.add_parser("train", help="fine-tune an MLP or LoRA head on human judgements (NIGHTS)",
                       description="Fine-tune a head on a frozen robust backbone with DreamSim's hinge loss, keep the "
                                   "epoch best on val, score it on test, and write a head folder that "
                                   "RobustDistance(model=DIR) and --model DIR load.")
    datasets = p.add_subparsers(dest="dataset", metavar="DATASET")
    datasets.required = True
    q = datasets.add_parser("nights", help="train on NIGHTS (train split; val selects; test is reported)")
    q.add_argument("root", type=Path, metavar="ROOT", help="NIGHTS folder (data.csv, ref/, distort/)")
    add_model_option(q, required=True, extra_help="; the base model, written into the head's config (a folder by its "
                                                  "absolute path: use a zoo name or Hub id to share the head)")
    q.add_argument("--head", required=True, choices=HEAD_TYPES, help="mlp: residual MLP on the embedding; lora: "
                                                                     "low-rank updates inside the backbone")
    q.add_argument("--out", required=True, type=Path, metavar="DIR", help="head folder to write")
    # Defaults come from the dataclasses, so the CLI and the Python API train the same recipe.
    train, head = _defaults(TrainConfig), _defaults(HeadConfig)
    q.add_argument("--epochs", type=at_least(1), default=train["epochs"], help="epochs (default: %(default)s)")
    q.add_argument("--seed", type=int, default=train["seed"],
                   help="seed of initialisation, shuffling and dropout (default: %(default)s)")
    again = q.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in DIR from its last epoch (without a checkpoint in DIR, a "
                            "new run starts, with a warning)")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh in a DIR that holds a head or a training run, replacing it (without it, "
                            "such a DIR is refused)")
    q.add_argument("--allow-outside-root", action="store_true",
                   help="accept data.csv paths that lead out of ROOT (../, absolute paths, symlinks to elsewhere)")
    q.add_argument("--batch-size", type=at_least(1), default=train["batch_size"],
                   help=f"default: {', '.join(f'{n} for {h}' for h, n in DEFAULT_BATCH.items())}")
    q.add_argument("--lr", type=finite(0), default=train["lr"], help="Adam learning rate (default: %(default)s)")
    q.add_argument("--weight-decay", type=finite(0), default=train["weight_decay"], help="default: %(default)s")
    q.add_argument("--betas", type=float, nargs=2, default=list(train["betas"]), metavar=("B1", "B2"),
                   help=f"Adam betas (default: {' '.join(f'{b:g}' for b in train['betas'])}, DreamSim's; torch's "
                        "default is 0.9 0.999)")
    q.add_argument("--margin", type=finite(0), default=train["margin"], help="hinge loss margin (default: %(default)s)")
    q.add_argument("--hidden", type=at_least(1), default=head["hidden"], help="MLP hidden size (default: %(default)s)")
    q.add_argument("--lora-r", type=at_least(1), default=head["r"], help="LoRA rank (default: %(default)s)")
    q.add_argument("--lora-alpha", type=float, default=head["alpha"],
                   help="LoRA alpha; the update is scaled by alpha/r (default: %(default)s)")
    q.add_argument("--lora-dropout", type=float, default=head["dropout"], help="LoRA dropout (default: %(default)s)")
    q.add_argument("--adversarial", default=train["adversarial"], choices=ADVERSARIAL_NORMS,
                   help="train on references attacked with PGD (default: off)")
    # None: not given, so that they can be refused without --adversarial instead of silently ignored.
    q.add_argument("--eps", type=float, default=None,
                   help=f"with --adversarial: attack radius in 1/255 units (default: {train['eps']:g}, "
                        f"i.e. {train['eps']:g}/255)")
    q.add_argument("--attack-steps", type=at_least(1), default=None,
                   help=f"with --adversarial: PGD steps per batch (default: {train['attack_steps']})")
    q.add_argument("--workers", type=at_least(0), default=train["workers"],
                   help="DataLoader processes decoding images (default: %(default)s)")
    add_device_option(q)
    q.set_defaults(func=run, rerun=(("--resume",), ()))


def _defaults(cls) -> dict:
    """A dataclass's field defaults by name (fields without one are left out)."""
    return {name: f.default for name, f in cls.__dataclass_fields__.items() if f.default is not dataclasses.MISSING}


def config_from_args(args):
    """The :class:`~rpmetric.training.TrainConfig` the parsed options describe."""
    from ..models.heads import HeadConfig
    from ..training import TrainConfig

    attack = {"eps": args.eps, "attack_steps": args.attack_steps}
    given = [f"--{name.replace('_', '-')}" for name, value in attack.items() if value is not None]
    if given and args.adversarial is None:
        verb, pronoun = ("apply", "them") if len(given) > 1 else ("applies", "it")
        raise ValueError(f"{' and '.join(given)} only {verb} to adversarial training; add --adversarial linf, or drop "
                         f"{pronoun}.")
    head = HeadConfig(args.head, hidden=args.hidden, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout)
    return TrainConfig(head=head, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, betas=tuple(args.betas), margin=args.margin, seed=args.seed,
                       adversarial=args.adversarial, workers=args.workers,
                       **{name: value for name, value in attack.items() if value is not None})


def run(args) -> int:
    import sys

    from ..models.cards import CARD_NAME
    from ..models.heads import CONFIG_NAME, WEIGHTS_NAME
    from ..training import CHECKPOINT_NAME, train_nights

    config = config_from_args(args)
    args.progress = args.out / CHECKPOINT_NAME  # written after each epoch; --resume continues from it
    # The card shows the command that trains this head from nothing: without --resume or --overwrite.
    command = rerun_command(args.argv, drop=("--resume", "--overwrite"))
    result = train_nights(args.root, args.model, args.out, config, resume=args.resume, overwrite=args.overwrite,
                          allow_outside_root=args.allow_outside_root, device=args.device, command=command)
    rows = [("val (untrained)", "", f"{100 * result.val_history[0]:.2f}"),
            (f"val (epoch {result.best_epoch}, kept)", "", f"{100 * result.val_history[result.best_epoch]:.2f}")]
    rows += [(name, r["n"], f"{100 * r['score']:.2f}") for name, r in result.test.items()]
    print(format_table(rows, ["split", "n", "2AFC %"]))
    if result.best_epoch == 0:
        print(f"rpmetric train: warning: no epoch beat the untrained head on val ({100 * result.val_history[0]:.2f}%), "
              "so the head written is the untrained one; try another --lr or more --epochs.", file=sys.stderr)
    checkpoint = Path(CHECKPOINT_NAME).parent
    print(f"head written to {result.out} (load it with --model {result.out}); to share it, upload {CARD_NAME} (its model "
          f"card), {CONFIG_NAME} and {WEIGHTS_NAME}, not {checkpoint}/ (the resume state): "
          f"hf upload ORG/NAME {result.out} --exclude '{checkpoint}/*'")
    return 0

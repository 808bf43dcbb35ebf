"""Fine-tuning a head on NIGHTS with DreamSim's hinge loss; selection on val, scores on test.

Under an MLP head the backbone is frozen, so every image goes through it once, up front, and
scores (val, test) are computed from those cached embeddings. Training then takes one of two ways:

- *cached*: an MLP without adversarial training runs its epochs on the cached embeddings only;
- *images*: LoRA (it changes the backbone's output) runs the backbone on every batch; adversarial
  training runs it on the attacked reference (with an MLP, left and right come from the cache).

The encoder stays frozen and in eval mode as everywhere in rpmetric; the trainer opts in only the
head: its parameters get ``requires_grad`` and its own dropout modules (LoRA's) go to train mode.

A checkpoint (head, optimiser, RNG state, history) is written after every epoch into the output
folder's ``checkpoint/`` sub-folder, so ``resume=True`` continues exactly: the final weights equal
an uninterrupted run's. The folder itself keeps only what a head repo needs (``rpmetric_config.json``,
``head.safetensors`` and the model card ``README.md``); ``checkpoint/`` is left out when sharing the head.
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks.logits import TwoAFCLogits, human_labels
from .datasets import TripletImages, collate_images, read_nights
from .datasets.loading import data_loader
from .evaluation import nights_total
from .files import atomic_write, check_writable
from .fingerprint import model_identity, records_fingerprint
from .functional import cosine_distance
from .images import unit_float
from .metric import check_device
from .models import load_encoder
from .models.cards import write_head_card
from .models.encoder import Encoder
from .models.heads import (CONFIG_NAME, WEIGHTS_NAME, HeadConfig, attach_head, base_model_reference,
                           head_dropouts, head_parameters, head_state_dict, load_head_state, save_head_folder)
from .models.preprocess import resize_and_crop
from .scoring import twoafc_score
from .unique import embed_unique
from .validation import check_int

__all__ = ["TrainConfig", "TrainResult", "hinge_loss", "train_nights", "CHECKPOINT_NAME", "ADVERSARIAL_NORMS",
           "DREAMSIM_BETAS"]

# Relative to the head folder: in a sub-folder, so that the folder's top level is what to upload.
CHECKPOINT_NAME = "checkpoint/checkpoint.pt"
_OLD_CHECKPOINT_NAME = "checkpoint.pt"  # beside the head files, where rpmetric 0.1.0 wrote it; still resumed
_OLD_BETAS = (0.9, 0.999)  # what runs recorded without betas used (torch's default)
DREAMSIM_BETAS = (0.5, 0.999)  # DreamSim's train.py: Adam(betas=(beta1=0.5, 0.999))
ADVERSARIAL_NORMS = ("linf",)
TEST_SPLITS = ("test_imagenet", "test_no_imagenet")
DEFAULT_BATCH = {"mlp": 512, "lora": 32}


@dataclass(frozen=True)
class TrainConfig:
    """How to train (DreamSim's recipe by default).

    Attributes:
        head: the head to train.
        epochs: passes over the train split.
        batch_size: None gives 512 for an MLP and 32 for LoRA.
        lr, weight_decay, betas: Adam's settings (``betas`` as DreamSim's, not torch's default).
        margin: of the hinge loss.
        seed: seeds the head's initialisation, the shuffling and dropout.
        adversarial: None, or ``"linf"`` to train on PGD-attacked references.
        eps: the attack radius in 1/255 units of [0, 1] pixels (4 means 4/255).
        attack_steps: PGD steps per batch (step size ``2.5 * eps / attack_steps``).
        workers: DataLoader worker processes for decoding images.
    """

    head: HeadConfig
    epochs: int = 8
    batch_size: Optional[int] = None
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: Tuple[float, float] = DREAMSIM_BETAS
    margin: float = 0.05
    seed: int = 0
    adversarial: Optional[str] = None
    eps: float = 4.0
    attack_steps: int = 10
    workers: int = 0

    def __post_init__(self):
        for name in ("epochs", "attack_steps"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), low=1))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, low=1))
        if self.adversarial is not None and self.adversarial not in ADVERSARIAL_NORMS:
            raise ValueError(f"Argument `adversarial` must be one of {ADVERSARIAL_NORMS} or None, "
                             f"but got {self.adversarial!r}.")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Argument `betas` must be two numbers in [0, 1), e.g. {DREAMSIM_BETAS}, but got "
                             f"{self.betas!r}.")
        object.__setattr__(self, "betas", betas)
        if not self.eps > 0:
            raise ValueError(f"Argument `eps` must be positive (in 1/255 units), but got {self.eps!r}.")
        for name in ("lr", "margin", "weight_decay"):  # as the CLI's `finite(0)` options
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Argument `{name}` must be a finite number >= 0, but got {value!r}.")

    @property
    def batch(self) -> int:
        return self.batch_size or DEFAULT_BATCH[self.head.type]

    @property
    def cached(self) -> bool:
        """Train on embeddings computed once (an MLP without adversarial training)."""
        return self.head.type == "mlp" and self.adversarial is None

    @property
    def embeds_once(self) -> bool:
        """Embed every image once up front: the backbone is frozen under an MLP head."""
        return self.head.type == "mlp"

    def describe(self) -> dict:
        out = asdict(self)
        out["head"] = self.head.to_dict()
        out["betas"] = list(self.betas)
        out["batch_size"] = self.batch
        return out


@dataclass
class TrainResult:
    """What :func:`train_nights` returns.

    Attributes:
        out: the head folder (loadable with ``RobustDistance(model=str(out))``).
        val_history: val 2AFC score after each epoch; entry 0 is the untrained head.
        best_epoch: the epoch whose head was kept (0: none beat the untrained head).
        test: ``{"test_imagenet", "test_no_imagenet", "total": {"n", "score"}}`` of the kept head.
    """

    out: Path
    val_history: List[float] = field(default_factory=list)
    best_epoch: int = 0
    test: Dict[str, Dict[str, float]] = field(default_factory=dict)


def hinge_loss(d0: torch.Tensor, d1: torch.Tensor, p: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """DreamSim's hinge loss on ``d0 - d1``: the image people preferred must be closer by ``margin``.

    With ``p`` the share preferring the right image, the target is ``+1`` when ``p > 0.5``
    (``d1`` should be smaller) and ``-1`` otherwise; the loss is ``mean(max(0, margin - target * (d0 - d1)))``.

    Example:
        >>> hinge_loss(torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.2]), torch.tensor([1.0, 0.0]), margin=0.05)
        tensor(0.1750)
    """
    target = 2.0 * human_labels(p).to(d0.dtype) - 1.0
    return torch.clamp(margin - target * (d0 - d1), min=0.0).mean()


# -- the training run -------------------------------------------------------------------------
def train_nights(root, base_model: str, out, config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 allow_outside_root: bool = False, device=None, progress: bool = True,
                 command: Optional[str] = None) -> TrainResult:
    """Train a head on NIGHTS' train split, keep the best on val, score it on test, save it.

    Args:
        root: NIGHTS folder (``data.csv``, ``ref/``, ``distort/``).
        base_model: the backbone (zoo name, ``hf-hub:ORG/NAME`` or a folder); written into the
            head folder (a folder by its absolute path), so use a zoo name or Hub id to share the head.
        out: the head folder to write (``rpmetric_config.json`` and ``head.safetensors``, the files
            to share; the resume state goes to ``checkpoint/checkpoint.pt`` inside it).
        config: the recipe.
        resume: continue the run whose checkpoint is in ``out``; without one, a new run starts
            (with a warning), as an evaluation's ``resume`` without its log does.
        overwrite: start afresh in an ``out`` that holds a head or a training run, replacing it.
        allow_outside_root: accept data.csv paths that lead out of ``root`` (see :func:`read_nights`).
        device: None picks CUDA when available.
        command: how this run was started (``rpmetric train`` passes its command line), shown in
            the head's model card (``README.md``, see :mod:`rpmetric.models.cards`).

    Raises:
        ValueError: ``out`` holds a checkpoint and neither ``resume`` nor ``overwrite`` is given, or a
            head (without a checkpoint to resume) and ``overwrite`` is False; a checkpoint of a
            different run: other options, other base model files or other NIGHTS records (see
            :mod:`rpmetric.fingerprint`); ``out`` cannot be written (checked before any image is read).

    Example:
        >>> result = train_nights("/data/nights", "r-clip-f-vitb16", "heads/mlp",
        ...                       TrainConfig(HeadConfig("mlp")))  # doctest: +SKIP
        >>> result.test["total"]["score"]  # doctest: +SKIP
        0.93
    """
    out = Path(out)
    device = check_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint_path = out / CHECKPOINT_NAME
    check_writable(out, "the head folder", folder=True)
    if resume and overwrite:
        raise ValueError("`resume=True` continues the run in the output folder and `overwrite=True` replaces it; "
                         "pass one of them.")
    found = next((p for p in (checkpoint_path, out / _OLD_CHECKPOINT_NAME) if p.is_file()), None)
    if found is not None and not resume and not overwrite:
        raise ValueError(f"{out} already holds a training run ({found.relative_to(out)}); pass `resume=True` to "
                         "continue it, `overwrite=True` to start afresh, or choose another output folder.")
    head_files = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if (out / name).exists()]
    if head_files and not overwrite and not (resume and found is not None):
        raise ValueError(f"{out} already holds a head ({', '.join(head_files)}); pass `overwrite=True` to replace it, "
                         "or choose another output folder.")
    if resume and found is None:
        warnings.warn(f"no checkpoint to resume in {checkpoint_path}; starting a new run.", stacklevel=2)
        resume = False
    splits = {name: read_nights(root, name, allow_outside_root=allow_outside_root)
              for name in ("train", "val") + TEST_SPLITS}
    # A folder by its absolute path: in the head folder and in the run's settings (resume).
    base_model = base_model_reference(base_model)

    base = load_encoder(base_model).to(device)
    torch.manual_seed(config.seed)
    run = _Run(config, splits, device, progress)
    if config.embeds_once:
        run.cache = {name: run.embed(base, triplets, f"embedding {name}") for name, triplets in splits.items()}
        dim = run.cache["train"][0].shape[1]
    else:
        dim = None
    module, head_config = attach_head(base.backbone, config.head, dim=dim)
    config = replace(config, head=head_config)
    run.config = config
    model = Encoder(module, base.spec).to(device)
    params = head_parameters(module)
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    # What a resumed run must share with the saved one; `epochs` may grow (train longer).
    recipe = {k: v for k, v in config.describe().items() if k not in ("epochs", "workers")}
    # The base model's resolved location and file digests, and a hash of the triplets (ids, paths,
    # votes): a resume must read the same files and the same data, not only the same names.
    settings = {"base_model": base_model, "config": recipe, "sizes": {name: len(t) for name, t in splits.items()},
                **model_identity(base.spec), "records": records_fingerprint(t for ts in splits.values() for t in ts)}

    if resume:
        state = _read_checkpoint(found, settings)
        load_head_state(module, state["head"], where=str(found))
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, best_epoch, best_state = state["history"], state["best_epoch"], state["best_head"]
    else:
        history, best_epoch, best_state = [run.val_score(model)], 0, head_state_dict(module)
    out.mkdir(parents=True, exist_ok=True)

    epochs = tqdm(range(len(history), config.epochs + 1), desc="training", unit="epoch", disable=not progress,
                  total=config.epochs, initial=len(history) - 1)
    for epoch in epochs:
        with _head_training(params, head_dropouts(module)):
            run.train_epoch(model, optimizer, epoch)
        history.append(run.val_score(model))
        epochs.set_postfix(val_2afc=f"{history[-1]:.4f}", best=f"{max(history):.4f}")
        if history[-1] > history[best_epoch]:
            best_epoch, best_state = epoch, head_state_dict(module)
        _write_checkpoint(checkpoint_path, {"settings": settings, "head": head_state_dict(module),
                                            "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                                            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                                            "history": history, "best_epoch": best_epoch, "best_head": best_state})
        (out / _OLD_CHECKPOINT_NAME).unlink(missing_ok=True)  # a resumed old-layout run moves to checkpoint/

    load_head_state(module, best_state)
    test = {name: {"n": len(splits[name]), "score": run.score(model, name)} for name in TEST_SPLITS}
    test["total"] = nights_total(test)
    training = {"dataset": "nights", "root": str(Path(root).resolve()), **config.describe(),
                "loss": "hinge on d0 - d1", "best_epoch": best_epoch, "val_history": history,
                "val_2afc": history[best_epoch], "val_n": len(splits["val"]), "test": test}
    training.pop("head")
    save_head_folder(out, base_model, config.head, best_state, training)
    write_head_card(out, command)
    return TrainResult(out=out, val_history=history, best_epoch=best_epoch, test=test)


class _Run:
    """The data side of one run: loaders, embeddings, epochs and scores."""

    def __init__(self, config: TrainConfig, splits: Dict[str, list], device: torch.device, progress: bool):
        self.config = config
        self.splits = splits
        self.device = device
        self.progress = progress
        self.cache: Optional[Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None
        self.p = {name: torch.tensor([t.p for t in triplets], dtype=torch.float64) for name, triplets in splits.items()}

    # -- data ---------------------------------------------------------------------------------
    def loader(self, model: Encoder, triplets: Sequence, order: Optional[List[int]], batch_size: int):
        dataset = TripletImages(triplets, transform=partial(resize_and_crop, pp=model.spec.preprocessing))
        return data_loader(dataset, batch_size=batch_size, sampler=order, shuffle=False,
                           num_workers=self.config.workers, collate_fn=collate_images)

    def batches(self, model: Encoder, triplets: Sequence, order: Optional[List[int]], batch_size: int, desc: str):
        for batch in tqdm(self.loader(model, triplets, order, batch_size), desc=desc, leave=False,
                          disable=not self.progress):
            if batch["errors"]:
                index, message = batch["errors"][0]
                raise ValueError(f"Triplet {triplets[index].id!r}: {message}")
            yield batch

    @torch.no_grad()
    def embed(self, model: Encoder, triplets: Sequence, desc: str) -> Tuple[torch.Tensor, ...]:
        """``(ref, left, right)`` embeddings ``[N, D]`` in dataset order; one encoder pass per batch."""
        parts = []
        for batch in self.batches(model, triplets, None, 64, desc):
            # Each distinct image once: a tie triplet (left == right) is an exact tie in the scores.
            images = torch.cat([batch["ref"], batch["left"], batch["right"]])
            parts.append(embed_unique(lambda x: model(unit_float(x.to(self.device))), images).chunk(3))
        return tuple(torch.cat([p[i] for p in parts]) for i in range(3))

    # -- scores -------------------------------------------------------------------------------
    def distances(self, model: Encoder, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            with torch.no_grad():
                # One pass over the distinct rows, so equal cached embeddings stay equal after the head.
                ref, left, right = embed_unique(model.backbone.mlp_head, torch.cat(self.cache[name])).chunk(3)
        else:
            ref, left, right = self.embed(model, self.splits[name], f"scoring {name}")
        return cosine_distance(ref, left), cosine_distance(ref, right)

    def score(self, model: Encoder, name: str) -> float:
        d0, d1 = self.distances(model, name)
        return twoafc_score(d0.cpu().numpy(), d1.cpu().numpy(), self.p[name].numpy())

    def val_score(self, model: Encoder) -> float:
        return self.score(model, "val")

    # -- training -----------------------------------------------------------------------------
    def train_epoch(self, model: Encoder, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        n = len(self.splits["train"])
        # The order depends on (seed, epoch) only, so a resumed run sees the same batches.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)).tolist()
        desc = f"epoch {epoch}/{self.config.epochs}"
        if self.config.cached:
            train = self.cache["train"]
            chunks = [order[i:i + self.config.batch] for i in range(0, n, self.config.batch)]
            for rows in tqdm(chunks, desc=desc, leave=False, disable=not self.progress):
                ref, left, right = (model.backbone.mlp_head(e[rows]) for e in train)
                self.step(optimizer, ref, left, right, self.p["train"][rows])
            return
        for batch in self.batches(model, self.splits["train"], order, self.config.batch, desc):
            ref, left, right = (unit_float(batch[k].to(self.device)) for k in ("ref", "left", "right"))
            p = batch["p"]
            if self.cache is not None:  # an adversarial MLP: only the reference needs the backbone
                rows = batch["index"]
                f_left, f_right = (model.backbone.mlp_head(e[rows]) for e in self.cache["train"][1:])
                f_ref = model(self.attack(model, ref, f_left, f_right, p))
            else:
                if self.config.adversarial:
                    with torch.no_grad(), _dropout_off(model):
                        clean_left, clean_right = model(torch.cat([left, right])).chunk(2)
                    ref = self.attack(model, ref, clean_left, clean_right, p)
                f_ref, f_left, f_right = model(torch.cat([ref, left, right])).chunk(3)
            self.step(optimizer, f_ref, f_left, f_right, p)

    def step(self, optimizer, ref, left, right, p) -> None:
        loss = hinge_loss(cosine_distance(ref, left), cosine_distance(ref, right), p.to(ref.device, ref.dtype),
                          self.config.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def attack(self, model: Encoder, ref, f_left, f_right, p) -> torch.Tensor:
        """PGD in pixel space on the reference, maximising the 2AFC cross-entropy of the human choice.

        ``f_left`` and ``f_right`` are the clean embeddings of the other two images (held fixed).

        A plain fixed-budget PGD rather than the evaluators' APGD: APGD's adaptive step size,
        restarts and per-sample bookkeeping are built to find the worst case for evaluation; in a
        training loop a cheap, fixed number of steps drawn from the run's own seeded RNG (so
        resume stays exact) is what adversarial training uses.
        """
        eps = self.config.eps / 255.0
        step = 2.5 * eps / self.config.attack_steps
        labels = human_labels(p).to(self.device)
        logits = TwoAFCLogits(model, f_left, f_right)
        x = (ref + torch.empty_like(ref).uniform_(-eps, eps)).clamp(0.0, 1.0)
        with _dropout_off(model):
            for _ in range(self.config.attack_steps):
                x.requires_grad_(True)
                loss = nn.functional.cross_entropy(logits(x), labels)
                (grad,) = torch.autograd.grad(loss, x)
                x = (ref + (x.detach() + step * grad.sign() - ref).clamp(-eps, eps)).clamp(0.0, 1.0)
        return x.detach()


@contextmanager
def _head_training(params: List[nn.Parameter], dropouts: List[nn.Module]):
    """Only the head learns: its parameters get gradients and its dropout is active.

    ``Encoder.train()`` keeps the whole encoder in eval mode on purpose, so the head's dropout
    modules are switched directly; base weights keep ``requires_grad=False`` throughout.
    """
    for p in params:
        p.requires_grad_(True)
    for m in dropouts:
        m.train(True)
    try:
        yield
    finally:
        for m in dropouts:
            m.train(False)
        for p in params:
            p.requires_grad_(False)


@contextmanager
def _dropout_off(model: nn.Module):
    active = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.training]
    for m in active:
        m.train(False)
    try:
        yield
    finally:
        for m in active:
            m.train(True)


# -- checkpoints ------------------------------------------------------------------------------
def _write_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, partial(torch.save, state))  # an interruption leaves the previous checkpoint intact


def _read_checkpoint(path: Path, settings: dict) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(json.dumps(state["settings"]))
    saved.get("config", {}).setdefault("betas", list(_OLD_BETAS))  # recorded before betas were
    now = json.loads(json.dumps(settings))
    for key in _IDENTITY_KEYS:  # a checkpoint written before fingerprints were recorded: names only
        if key not in saved:
            now.pop(key, None)
    if saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        what = [_IDENTITY_KEYS[k] for k in changed if k in _IDENTITY_KEYS]
        fix = (f"{' and '.join(what)} changed since it was written, so resuming would mix two runs; restore them, "
               "or start over in another output folder (without `resume=True`)" if what else
               "resume with the same options, or choose another output folder")
        raise ValueError(f"{path} is from a different run (it differs in {', '.join(changed)}): "
                         f"saved {{{', '.join(f'{k}: {saved.get(k)}' for k in changed)}}}, this run has "
                         f"{{{', '.join(f'{k}: {now.get(k)}' for k in changed)}}}; {fix}.")
    return state


# Settings that say what a run read, not how it was asked for: what a refusal says changed.
_IDENTITY_KEYS = {"model": "the base model's location", "model_files": "the base model's files",
                  "records": "the NIGHTS records (ids, paths or votes)"}

"""Model specs: what each zoo entry is, where its weights live and how it sees images; and what a
trained head folder's config describes (:class:`HeadConfig`).

The zoo itself is data (``zoo.json`` beside this file); this module only gives it types.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import numbers
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Optional, Tuple

from ..validation import check_int

__all__ = [
    "Family",
    "Preprocessing",
    "PREPROCESS_CONVENTIONS",
    "with_convention",
    "PublishedResult",
    "ModelSpec",
    "list_models",
    "get_spec",
    "default_model",
    "MAX_IMAGE_SIZE",
    "MAX_WIDTH",
    "MAX_HIDDEN",
    "MAX_LAYERS",
    "MAX_LORA_R",
    "config_int",
    "config_real",
    "HEAD_TYPES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_VERSION",
    "HeadConfig",
]

# Upper bounds on the sizes a model or head config may ask for. Each admits every published model
# (ViT-bigG/14: width 1664, 48 layers, MLP 8192; ViT-g/14: 1408, 40, 6144; ViT-H/14: 1280, 32, 5120;
# EVA02-E: 64 layers; ViT-22B: width 6144; SigLIP and DINOv2 inputs at 384-518 px) with room to
# spare, and refuses a config whose sizes alone would cost gigabytes before a weight is read.
MAX_IMAGE_SIZE = 2048  # model input side (image_size); resize_size may be up to twice that
MAX_WIDTH = 8192  # widths: transformer width, hidden_size, embed_dim, a head's dim
MAX_HIDDEN = 65536  # MLP hidden sizes (intermediate_size, a head's hidden) and other sizes in timm's model_args
MAX_LAYERS = 128  # transformer layers (layers, num_hidden_layers, depth)
MAX_LORA_R = 1024  # LoRA rank


def config_int(name: str, value, low: int = 1, high: int = MAX_WIDTH) -> int:
    """``value`` as an int in ``[low, high]``, for sizes read from config files (bools refused).

    Example:
        >>> config_int("image_size", -32, high=MAX_IMAGE_SIZE)
        Traceback (most recent call last):
        ...
        ValueError: `image_size` must be an integer in [1, 2048], but got -32.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"`{name}` must be an integer in [{low}, {high}], but got {value!r}.")
    return int(value)


def config_real(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"`{name}` must be a finite number in {bracket}{low:g}, {high:g}], but got {value!r}.")
    return float(value)


def _channel_values(name: str, values, positive: bool) -> Tuple[float, float, float]:
    """Three finite per-channel numbers (RGB), all > 0 when ``positive``."""
    ok = isinstance(values, (list, tuple)) and len(values) == 3 and all(
        not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) and (v > 0 or not positive)
        for v in values)
    if not ok:
        what = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"Argument `{name}` must be 3 {what}, one per RGB channel, but got {values!r}.")
    return tuple(float(v) for v in values)


class Family(str, enum.Enum):
    """How a checkpoint's files are laid out, which decides the backbone builder."""

    OPEN_CLIP = "open_clip"  # open_clip_config.json + open_clip_model.safetensors
    TIMM = "timm"  # timm's config.json ("architecture") + model.safetensors
    HF_VIT = "hf_vit"  # transformers ViTModel folder, remapped into timm's ViT
    HF_CLIP = "hf_clip"  # transformers CLIPModel / CLIPVisionModelWithProjection, remapped into open_clip's ViT

    @classmethod
    def parse(cls, value: "str | Family") -> "Family":
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(f.value) for f in cls)
            raise ValueError(f"Argument `family` must be one of ({choices}), but got {value!r}.") from None


INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """How a model expects its pixels: geometry first, then normalisation.

    The shorter side is resized to ``resize_size`` with ``interpolation``, then the centre
    ``image_size`` square is cropped; ``mean``/``std`` normalisation happens inside the model.
    """

    # geometry
    image_size: int = 224
    resize_size: int = 224
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # "shortest": resize shorter side, centre crop; "squash": resize to a square
    # normalisation, applied inside forward so that attacks live in [0, 1] pixel space
    mean: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self):
        config_int("image_size", self.image_size, high=MAX_IMAGE_SIZE)
        config_int("resize_size", self.resize_size, high=2 * MAX_IMAGE_SIZE)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Argument `interpolation` must be one of {INTERPOLATIONS}, but got {self.interpolation!r}."
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"Argument `resize_mode` must be one of {RESIZE_MODES}, but got {self.resize_mode!r}."
            )
        if self.resize_size < self.image_size:
            raise ValueError(
                f"`resize_size` ({self.resize_size}) must be at least `image_size` ({self.image_size}), "
                "since the centre crop is taken from the resized image."
            )
        # std > 0: the model divides by it, and a zero gives NaN distances rather than an error.
        object.__setattr__(self, "mean", _channel_values("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _channel_values("std", self.std, positive=True))


# Published resize conventions, by `rpmetric eval --preprocess` name: the geometry they give a
# model's Preprocessing (mean/std stay the model's). The size is the model's input size, 224 for
# every zoo model and for the papers' models. "model" is the model's own preprocessing.
PREPROCESS_CONVENTIONS = {
    "model": {},
    # fra31/perceptual-metrics, BAPPSTwoAFCDataset: transforms.Resize(224), torchvision's bilinear
    # resize of the shorter side, with no crop (BAPPS patches are square, so none is needed).
    "paper": {"interpolation": "bilinear", "resize_mode": "shortest"},
    # DreamSim's dataset and fra31's code for MLP/LoRA heads: transforms.Resize((224, 224), BICUBIC).
    "dreamsim": {"interpolation": "bicubic", "resize_mode": "squash"},
}


def with_convention(pp: Preprocessing, name: str) -> Preprocessing:
    """``pp`` with the geometry of a published convention (see ``PREPROCESS_CONVENTIONS``), resizing
    to ``pp.image_size``; ``"model"`` returns ``pp`` itself.

    Example:
        >>> pp = with_convention(Preprocessing(image_size=224, resize_size=256), "paper")
        >>> pp.resize_size, pp.interpolation, pp.resize_mode
        (224, 'bilinear', 'shortest')
    """
    if name not in PREPROCESS_CONVENTIONS:
        raise ValueError(f"Argument `preprocess` must be one of {tuple(PREPROCESS_CONVENTIONS)}, but got {name!r}.")
    geometry = PREPROCESS_CONVENTIONS[name]
    return replace(pp, resize_size=pp.image_size, **geometry) if geometry else pp


@dataclass(frozen=True)
class PublishedResult:
    """NIGHTS 2AFC accuracy in percent: clean, under l-inf 4/255 and under l2 3 (APGD)."""

    clean: Optional[float] = None
    linf: Optional[float] = None
    l2: Optional[float] = None
    source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One model the metric can use.

    Example:
        >>> spec = get_spec("r-clip-f-convnext")
        >>> spec.hub_id
        'chs20/FARE4-convnext_base_w-laion2B-s13B-b82K-augreg'
        >>> spec.preprocessing.resize_size, spec.preprocessing.image_size
        (256, 224)
    """

    # identity
    name: str
    role: str = ""
    architecture: str = ""
    # weight source
    family: Optional[Family] = None  # None: detected from the files (ad-hoc sources)
    hub_id: Optional[str] = None  # "org/name" on the Hugging Face Hub
    local_path: Optional[str] = None  # a folder in the Hub's file layout, instead of hub_id
    revision: Optional[str] = None
    # input
    preprocessing: Optional[Preprocessing] = None  # None: read from the checkpoint's own config
    # architecture: the checkpoint's config in its own format (open_clip_config.json's content, or
    # an open_clip model config name; transformers' or timm's config.json), for repos without one and
    # for the zoo-wide test, which builds every entry from it
    config: "Optional[dict | str]" = None
    # provenance
    training: Optional[dict] = None  # {"method": "FARE" | "TeCoA", "eps": "4/255"}
    published: Tuple[PublishedResult, ...] = ()
    licence: str = ""
    paper: str = ""
    format: str = ""  # the repo's files, as a reader would look for them
    inferred: str = ""  # which of these facts were inferred rather than checked against the Hub page
    notes: str = ""

    @property
    def robust(self) -> bool:
        """Whether the encoder was trained to be adversarially robust (not a clean baseline)."""
        return self.training is not None

    def checkpoint_config(self) -> Optional[dict]:
        """``config`` as its checkpoint's config file would hold it: an open_clip model config
        name becomes ``{"model_cfg": ...}`` from open_clip's own registry.

        Example:
            >>> get_spec("clip-vitb32").checkpoint_config()["model_cfg"]["vision_cfg"]["patch_size"]
            32
        """
        if not isinstance(self.config, str):
            return self.config
        import open_clip

        model_cfg = open_clip.get_model_config(self.config)
        if model_cfg is None:
            raise ValueError(f"Model {self.name!r} names open_clip model config {self.config!r}, which open_clip "
                             f"{open_clip.__version__} does not have (see open_clip.list_models()).")
        return {"model_cfg": model_cfg}

    @property
    def source(self) -> str:
        """Where the weights come from, as a user would write it."""
        if self.local_path:
            return self.local_path
        suffix = f"@{self.revision}" if self.revision else ""
        return f"hf-hub:{self.hub_id}{suffix}"

    def to_dict(self) -> dict:
        """A JSON-serialisable description, as written into evaluation results."""
        out = asdict(self)
        out["family"] = self.family.value if self.family else None
        return out


@lru_cache(maxsize=1)
def _load_zoo() -> Tuple[str, Tuple[ModelSpec, ...]]:
    raw = json.loads(resources.files("rpmetric.models").joinpath("zoo.json").read_text())
    presets = raw["preprocessing"]
    specs = []
    for entry in raw["models"]:
        entry = dict(entry)
        entry["family"] = Family.parse(entry["family"])
        entry["preprocessing"] = Preprocessing(**presets[entry["preprocessing"]])
        entry["published"] = tuple(PublishedResult(**p) for p in entry.get("published", []))
        specs.append(ModelSpec(**entry))
    return raw["default"], tuple(specs)


def default_model() -> str:
    """The documented default model name."""
    return _load_zoo()[0]


def list_models() -> list:
    """Names of every model in the zoo, in zoo order.

    Example:
        >>> "r-clip-f-convnext" in list_models()
        True
    """
    return [s.name for s in _load_zoo()[1]]


def get_spec(name: str) -> ModelSpec:
    """The spec of a zoo model, by short name (case-insensitive).

    Raises:
        ValueError: for an unknown name, listing the close matches.

    Example:
        >>> get_spec("R-CLIP-T-VITB32").training["method"]
        'TeCoA'
    """
    if not isinstance(name, str):
        raise TypeError(f"A model name must be a string, but got {type(name).__name__}.")
    specs = {s.name: s for s in _load_zoo()[1]}
    key = name.strip().lower()
    if key in specs:
        return specs[key]
    close = difflib.get_close_matches(key, list(specs), n=4, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown model {name!r}.{hint} Run `rpmetric models` (or rpmetric.list_models()) for the zoo; "
        "a model can also be 'hf-hub:ORG/NAME' or a local folder in the Hub's file layout."
    )


# -- trained heads: what a head folder's rpmetric_config.json describes ------------------------
HEAD_TYPES = ("mlp", "lora")
CONFIG_NAME = "rpmetric_config.json"
WEIGHTS_NAME = "head.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class HeadConfig:
    """A head's type and hyperparameters, as written to ``rpmetric_config.json``.

    Attributes:
        type: ``"mlp"`` or ``"lora"``.
        dim: embedding size the MLP acts on (set when the head is attached).
        hidden: MLP hidden size.
        r, alpha, dropout: LoRA rank, scale numerator (the update is scaled by ``alpha / r``, as
            in peft) and dropout on the adapter's input.
        targets: names of the backbone modules that carry LoRA (set when the head is attached;
            empty means choose them automatically, see :func:`lora_targets`).

    Example:
        >>> HeadConfig("lora").r, HeadConfig("lora").alpha
        (16, 0.5)
        >>> HeadConfig("linear")
        Traceback (most recent call last):
        ...
        ValueError: Argument `type` must be one of ('mlp', 'lora'), but got 'linear'.
    """

    type: str
    dim: Optional[int] = None
    hidden: int = 512
    r: int = 16
    alpha: float = 0.5
    dropout: float = 0.3
    targets: Tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.type not in HEAD_TYPES:
            raise ValueError(f"Argument `type` must be one of {HEAD_TYPES}, but got {self.type!r}.")
        # Bounded (above), since a head's sizes decide what is allocated before its weights load.
        for name, high in (("hidden", MAX_HIDDEN), ("r", MAX_LORA_R)):
            object.__setattr__(self, name, _size(name, getattr(self, name), high))
        if self.dim is not None:
            object.__setattr__(self, "dim", _size("dim", self.dim, MAX_WIDTH))
        if not _finite(self.alpha):
            raise ValueError(f"Argument `alpha` must be a finite number, but got {self.alpha!r}.")
        if not (_finite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"Argument `dropout` must be in [0, 1), but got {self.dropout!r}.")
        if isinstance(self.targets, str) or not all(isinstance(t, str) for t in self.targets):
            raise ValueError(f"Argument `targets` must be a list of module names, but got {self.targets!r}.")
        object.__setattr__(self, "targets", tuple(self.targets))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["targets"] = list(self.targets)
        if self.type == "mlp":
            for name in ("r", "alpha", "dropout", "targets"):
                out.pop(name)
        else:
            for name in ("dim", "hidden"):
                out.pop(name)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "HeadConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown head setting(s) {unknown}; a head config has {sorted(known)}.")
        return cls(**data)


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _size(name: str, value, high: int) -> int:
    """A head size: an integer in [1, high]."""
    value = check_int(name, value, low=1)
    if value > high:
        raise ValueError(f"Argument `{name}` must be at most {high}, but got {value}.")
    return value

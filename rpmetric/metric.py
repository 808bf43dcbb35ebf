"""RobustDistance: the perceptual metric as an nn.Module; distance: the same, called as a function
(the model loaded once and cached)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from .functional import cosine_distance
from .models import load_encoder
from .models.encoder import Encoder
from .validation import check_batches, check_images, check_value_range

__all__ = ["RobustDistance", "distance", "check_device"]


def _zero_where_identical(d: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``d`` with exact zeros where ``x`` and ``y`` hold the same pixels (a batch of 1 broadcasts).

    The two passes embed the same image at different batch positions or sizes, and a CPU BLAS may
    round it differently there (about 1e-7): identical images give exactly 0 by construction. The
    gradient at ``x == y`` is 0 either way: the distance has its minimum there.
    """
    if x.shape[1:] != y.shape[1:]:
        return d
    same = (x == y).flatten(1).all(dim=1)
    return torch.where(same, torch.zeros_like(d), d)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device) -> torch.device:
    """``device`` as a torch.device, if this machine has it; checked before any model is loaded.

    Raises:
        ValueError: not a device name, or a device this machine lacks (the message says which exist).

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    given = f"`device={device!r}`"
    fix = "use `device='cpu'`" + (" or `device='cuda'`" if torch.cuda.is_available() else "")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{given} is not a torch device name such as cpu, cuda or cuda:1; {fix}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{given} is not available: this torch sees no CUDA GPU; {fix}.")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{given} is not available: this machine has {torch.cuda.device_count()} "
                         f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}; {fix}.")
    backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
    if dev.type not in ("cpu", "cuda") and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(f"{given} is not available on this machine; {fix}.")
    return dev


class RobustDistance(nn.Module):
    """Perceptual distance ``1 - cos`` between embeddings of an adversarially robust encoder.

    Args:
        model: zoo name (see ``rpmetric.list_models()``), ``"hf-hub:ORG/NAME[@REV]"``, a local
            folder in the Hub's file layout, or an :class:`~rpmetric.models.encoder.Encoder`. None picks
            the default, ``r-clip-f-convnext``.
        device: where to run; None picks CUDA when available, else the CPU. Inputs are moved here.
        value_range: the range of input pixel values, e.g. ``(0, 1)`` or ``(-1, 1)``.
        resize: resize inputs of any size as the model's preprocessing prescribes (differentiably).
            If False, inputs must already be at the model's input size. None keeps an
            :class:`~rpmetric.models.encoder.Encoder`'s own setting, and means True when the metric
            loads the model itself. An Encoder passed in is shared, not copied: ``resize`` sets it
            for every metric that uses it.
        counterattack: an optional test-time defence applied to every image before embedding
            (see :class:`rpmetric.Counterattack`); None for none.
        clamp: clamp inputs into ``value_range`` instead of refusing values outside it, for loss
            loops whose images drift out of range. The clamp passes gradients straight through
            (as if it were the identity), so pixels outside the range still get gradients. NaN and
            infinite values are refused either way.

    The encoder is frozen and stays in eval mode; gradients flow to the input images only, so
    the metric can serve as a loss. Under ``torch.autocast`` the encoder runs in reduced precision
    and the distance is computed in float32. float16 and bfloat16 inputs are cast to float32 inside
    (on the CPU torch cannot resize them) and give float32 distances; gradients reach them in their
    own dtype.

    Example:
        >>> import torch, rpmetric
        >>> metric = rpmetric.RobustDistance("r-clip-f-convnext")  # doctest: +SKIP
        >>> x, y = torch.rand(4, 3, 256, 256), torch.rand(4, 3, 256, 256)
        >>> metric(x, y).shape  # doctest: +SKIP
        torch.Size([4])
    """

    def __init__(self, model=None, *, device=None, value_range=(0.0, 1.0), resize: Optional[bool] = None,
                 counterattack=None, clamp: bool = False):
        super().__init__()
        device = _default_device() if device is None else check_device(device)  # before loading the model
        self.value_range = check_value_range(value_range)
        if not isinstance(clamp, bool):
            raise TypeError(f"Argument `clamp` must be True or False, but got {clamp!r}.")
        self.clamp = clamp
        if isinstance(model, Encoder):
            encoder = model
            if resize is not None:
                encoder.resize = resize
        else:
            encoder = load_encoder(model, resize=True if resize is None else resize)
        self.encoder = encoder
        self.counterattack = counterattack
        self.to(device)

    # -- properties ------------------------------------------------------------------------
    @property
    def spec(self):
        """The model's :class:`~rpmetric.models.spec.ModelSpec`."""
        return self.encoder.spec

    @property
    def device(self) -> torch.device:
        return self.encoder.normalize.mean.device

    def train(self, mode: bool = True) -> "RobustDistance":
        # The metric has nothing to train; keep every submodule in eval mode.
        return super().train(False)

    def extra_repr(self) -> str:
        return (f"model={self.spec.name!r}, value_range={self.value_range}, resize={self.encoder.resize}, "
                f"clamp={self.clamp}")

    # -- API -------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embeddings ``[N, D]`` of images ``[N, 3, H, W]`` in ``value_range``.

        Args:
            normalize: L2-normalise (the default); False gives the projected embedding ``f``
                before normalisation, as used by the counterattack.
        """
        f = self.features(self._to_unit(x, self._check(x, "x")))
        return nn.functional.normalize(f, dim=-1) if normalize else f

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances ``[N]`` between ``x`` and ``y`` (a batch of 1 on either side broadcasts)."""
        x_range = self._check(x, "x")
        y_range = self._check(y, "y")
        check_batches(x, y)
        x, y = self._to_unit(x, x_range), self._to_unit(y, y_range)
        # Two passes rather than one over cat([x, y]): on CPU a batch of 2N measured slower than two
        # of N (evals/bench_metric.py), and the concatenation costs a copy.
        d = cosine_distance(self.features(x), self.features(y))
        return _zero_where_identical(d, x, y)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Check images in ``value_range`` and map them to [0, 1] on the metric's device.

        This is what ``forward`` and ``embed`` do first; tools that work in pixel space
        (attacks, the counterattack) use it to accept the same inputs as the metric.
        """
        return self._to_unit(x, self._check(x, "x"))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw embeddings ``[N, D]`` of images already in [0, 1] (any size), through the counterattack
        when one is set. No input checks: for tools that work in pixel space (evaluation, attacks)."""
        if self.counterattack is not None:
            return self.counterattack.defended_features(self.encoder, x)
        return self.encoder(x)

    # -- internals -------------------------------------------------------------------------
    def _check(self, x, name: str):
        return check_images(x, name, self.value_range, clamp=self.clamp)

    def _to_unit(self, x: torch.Tensor, observed) -> torch.Tensor:
        """Map ``value_range`` to [0, 1] in float32 at least; ``observed`` is the (min, max) validation found."""
        low, high = self.value_range
        x = x.to(self.device)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if (low, high) != (0.0, 1.0):
            x = (x - low) / (high - low)
        if observed[0] < low or observed[1] > high:
            clamped = x.clamp(0.0, 1.0)
            # clamp=True: straight through, so drifted pixels keep their gradients; otherwise this
            # only removes the rounding overshoot that validation tolerates.
            x = x + (clamped - x).detach() if self.clamp else clamped
        return x


_CACHE: "OrderedDict[tuple, torch.nn.Module]" = OrderedDict()
_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def distance(x: torch.Tensor, y: torch.Tensor, model=None, *, device=None, value_range=(0.0, 1.0),
             clamp: bool = False) -> torch.Tensor:
    """Perceptual distance ``[N]`` between image batches, loading (once) and caching the model.

    Args:
        x, y: ``[N, 3, H, W]`` float images in ``value_range``; a batch of 1 broadcasts.
        model: zoo name, ``hf-hub:ORG/NAME`` or local folder; None for the default model.
        device: where to run; defaults to the device of ``x``.
        value_range: the range the images are in.
        clamp: clamp inputs into ``value_range`` rather than refuse values outside it, with
            gradients passed straight through (see :class:`~rpmetric.RobustDistance`).

    Example:
        >>> import rpmetric, torch
        >>> d = rpmetric.distance(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))  # doctest: +SKIP
    """
    device = torch.device(device) if device is not None else x.device if isinstance(x, torch.Tensor) else None
    key = (str(model), str(device), tuple(float(v) for v in value_range), clamp)
    with _CACHE_LOCK:
        metric = _CACHE.get(key)
        if metric is None:
            metric = RobustDistance(model, device=device, value_range=value_range, clamp=clamp)
            _CACHE[key] = metric
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
    return metric(x, y)

"""torchmetrics Metrics on rpmetric: log the robust distance and the 2AFC score as Lightning users
log LPIPS (``torchmetrics.image.LearnedPerceptualImagePatchSimilarity``).

- :class:`RobustPerceptualSimilarity`: ``update(img1, img2)`` / ``compute()``, the distance of a
  stream of image pairs, reduced by ``"mean"``, ``"sum"`` or ``"none"``.
- :class:`TwoAFCAccuracy`: ``update(ref, left, right, p)`` / ``compute()``, the 2AFC score of a
  stream of triplets (the formula of :func:`rpmetric.scoring.twoafc_scores`).

Their states are a sum and a count (``dist_reduce_fx="sum"``), so memory stays constant over an
epoch and a sync moves two numbers (torchmetrics' list states grow, their #3267); only
``reduction="none"`` keeps the per-pair distances, as a list that syncs by concatenation in rank
order. Sums are float64, so that millions of pairs add up without float32 drift (on MPS, which has
no float64, call ``set_dtype(torch.float32)``).

States never hold an autograd graph (the leak of torchmetrics' #2078): ``update`` runs without
gradients, as torchmetrics arranges, and ``forward`` (``metric(img1, img2)``) returns the batch's
value *with* its graph, so it can serve as a loss, while the states it adds to are detached.

The wrapped :class:`~rpmetric.RobustDistance` is a submodule built on the CPU: ``metric.to(device)``
(or Lightning) moves it with the states. Needs torchmetrics: ``pip install "rpmetric[torchmetrics]"``.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch

from ..errors import MissingDependencyError

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError:  # pragma: no cover - the test extra installs torchmetrics
    raise MissingDependencyError("rpmetric.integrations.torchmetrics needs torchmetrics: "
                                 "pip install 'rpmetric[torchmetrics]' (or pip install torchmetrics).") from None

from ..functional import cosine_distance
from ..metric import RobustDistance
from ..scoring import twoafc_scores
from ..unique import embed_unique
from ..validation import check_images, check_value_range

__all__ = ["RobustPerceptualSimilarity", "TwoAFCAccuracy", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")


def _distance_module(model, value_range) -> RobustDistance:
    """``model`` as a RobustDistance taking inputs in ``value_range`` (one passed in is used as is)."""
    value_range = check_value_range(value_range)
    if isinstance(model, RobustDistance):
        if model.value_range != value_range:
            raise ValueError(f"Argument `value_range` is {value_range}, but the RobustDistance passed as `model` takes "
                             f"inputs in {model.value_range}; pass value_range={model.value_range}, or build the "
                             f"RobustDistance with value_range={value_range}.")
        return model
    # On the CPU, as torchmetrics metrics start: .to(device) moves it (the states too).
    return RobustDistance(model, device="cpu", value_range=value_range)


def _check_named(metric: RobustDistance, **images) -> None:
    """Check each batch under its argument's name, so an error says ``img1`` or ``right``, not ``x``
    (a pass over the pixels, next to the encoder's cost)."""
    for name, x in images.items():
        check_images(x, name, metric.value_range, clamp=metric.clamp)


class _DetachedStates(Metric):
    """A Metric whose states are detached after ``forward``; most keep a float64 sum and a count."""

    full_state_update = False

    def _add_sum_and_count(self) -> None:
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The batch's value, differentiable where the metric is; the states only keep values.

        torchmetrics computes the batch's value from states built with gradients enabled, then
        merges them into the running states; a list state (``reduction="none"``) would keep the
        batch's tensors, and with them the graph. So every state is detached afterwards.
        """
        out = super().forward(*args, **kwargs)
        for name in self._defaults:
            value = getattr(self, name)
            setattr(self, name, [v.detach() for v in value] if isinstance(value, list) else value.detach())
        return out


class RobustPerceptualSimilarity(_DetachedStates):
    """The robust perceptual distance (``1 - cos`` of robust embeddings) as a torchmetrics Metric.

    Args:
        model: zoo name, ``"hf-hub:ORG/NAME"``, a local folder, an
            :class:`~rpmetric.models.encoder.Encoder`, or a :class:`~rpmetric.RobustDistance` (used as
            is; its ``value_range`` must equal ``value_range``). None picks the default model.
        reduction: ``"mean"`` (the default) or ``"sum"`` over every pair seen, or ``"none"`` for the
            ``[N]`` distances in order (per process; after a sync, in rank order).
        value_range: the range of input pixel values: ``(0, 1)``, or ``(-1, 1)`` as lpips'
            ``normalize=False`` takes them; inputs are mapped to [0, 1].
        metric_kwargs: torchmetrics' Metric options (``sync_on_compute``, ``dist_sync_fn``, ...).

    ``update(img1, img2)`` takes ``[N, 3, H, W]`` float batches (a batch of 1 on either side
    broadcasts); ``compute()`` returns a float32 scalar (``"none"``: ``[N]``). An empty metric gives
    NaN for ``"mean"``, 0 for ``"sum"`` and an empty tensor for ``"none"``.

    Example:
        >>> import torch
        >>> from rpmetric.integrations.torchmetrics import RobustPerceptualSimilarity
        >>> metric = RobustPerceptualSimilarity("r-clip-f-vitb32", value_range=(-1, 1))  # doctest: +SKIP
        >>> metric.update(torch.rand(4, 3, 224, 224) * 2 - 1, torch.rand(4, 3, 224, 224) * 2 - 1)  # doctest: +SKIP
        >>> metric.compute()  # doctest: +SKIP
        tensor(0.1234)
    """

    is_differentiable = True
    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 2.0

    def __init__(self, model=None, reduction: str = "mean", value_range: Tuple[float, float] = (0.0, 1.0),
                 **metric_kwargs: Any):
        if reduction not in REDUCTIONS:
            raise ValueError(f"Argument `reduction` must be one of {REDUCTIONS}, but got {reduction!r}.")
        super().__init__(**metric_kwargs)
        self.reduction = reduction
        self.metric = _distance_module(model, value_range)
        if reduction == "none":
            self.add_state("scores", default=[], dist_reduce_fx="cat")
        else:
            self._add_sum_and_count()

    def update(self, img1: torch.Tensor, img2: torch.Tensor) -> None:
        """Add the distances between ``img1`` and ``img2`` (``[N, 3, H, W]``, in ``value_range``)."""
        _check_named(self.metric, img1=img1, img2=img2)
        d = self.metric(img1, img2)
        if self.reduction == "none":
            self.scores.append(d)
        else:
            self.total = self.total + d.sum().to(self.total.dtype)
            self.count = self.count + d.numel()

    def compute(self) -> torch.Tensor:
        if self.reduction == "none":
            if isinstance(self.scores, list) and not self.scores:
                return torch.zeros(0, device=self.device)
            return dim_zero_cat(self.scores).float()
        if self.reduction == "sum":
            return self.total.float()
        return (self.total / self.count).float()


class TwoAFCAccuracy(_DetachedStates):
    """The 2AFC score of a stream of triplets: how often the metric agrees with people, ties half.

    Per triplet ``(d0<d1)(1-p) + (d1<d0)p + 0.5(d0==d1)`` (:func:`rpmetric.scoring.twoafc_scores`),
    with ``d0``/``d1`` the distances from the reference to the left/right image; ``compute()`` is
    their mean, in [0, 1] (NaN before any update). Identical images get identical embeddings (each
    distinct image of a batch is embedded once), so a triplet whose left and right images are the
    same is an exact tie on any BLAS.

    Args:
        model: as for :class:`RobustPerceptualSimilarity`.
        value_range: the range of input pixel values.
        metric_kwargs: torchmetrics' Metric options.

    Example:
        >>> import torch
        >>> from rpmetric.integrations.torchmetrics import TwoAFCAccuracy
        >>> score = TwoAFCAccuracy("r-clip-f-vitb32")  # doctest: +SKIP
        >>> ref, left, right = (torch.rand(8, 3, 224, 224) for _ in range(3))
        >>> score.update(ref, left, right, torch.rand(8))  # doctest: +SKIP
        >>> score.compute()  # doctest: +SKIP
        tensor(0.5123)
    """

    is_differentiable = False
    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, model=None, value_range: Tuple[float, float] = (0.0, 1.0), **metric_kwargs: Any):
        super().__init__(**metric_kwargs)
        self.metric = _distance_module(model, value_range)
        self._add_sum_and_count()

    def update(self, ref: torch.Tensor, left: torch.Tensor, right: torch.Tensor, p) -> None:
        """Add triplets: images ``[N, 3, H, W]`` in ``value_range``; ``p`` ``[N]``, the share of people
        who preferred the right image (tensor, array or list)."""
        d0, d1 = self._distances(ref, left, right)
        scores = twoafc_scores(d0, d1, p)  # checks that p has one entry per triplet
        self.total = self.total + torch.as_tensor(scores.sum(), dtype=self.total.dtype, device=self.total.device)
        self.count = self.count + len(scores)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()

    def _distances(self, ref, left, right) -> Tuple[torch.Tensor, torch.Tensor]:
        m = self.metric
        _check_named(m, ref=ref, left=left, right=right)
        images = [m.to_unit(x) for x in (ref, left, right)]
        if images[0].shape == images[1].shape == images[2].shape:
            # One pass, each distinct image once: a tie triplet (left == right) is an exact tie.
            f_ref, f_left, f_right = embed_unique(m.features, torch.cat(images)).chunk(3)
        else:
            f_ref, f_left, f_right = (m.features(x) for x in images)
        return cosine_distance(f_ref, f_left), cosine_distance(f_ref, f_right)

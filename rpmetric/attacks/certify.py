"""Certified 2AFC accuracy by randomized smoothing (Cohen, Rosenfeld & Kolter 2019, CERTIFY).

The base decision is the 2AFC one: class 0 when the left image is closer to the reference, class 1
when the right one is. The smoothed decision is the class most likely when Gaussian noise of std
``sigma`` (on [0, 1] pixels, at the model's input size) is added to the reference, the left and
right images staying clean. Per triplet:

1. ``n0`` noisy references select the class A with the most votes (none when the counts are equal);
2. ``n`` fresh noisy references count the votes for A; ``p_A`` is the one-sided Clopper–Pearson
   lower bound on A's probability at level ``alpha``;
3. with ``p_A > 1/2`` the smoothed decision is A at every reference within the l2 radius
   ``sigma * Phi^-1(p_A)`` (with probability at least ``1 - alpha`` over the noise); otherwise it
   abstains.

A noisy sample whose two distances are equal votes for neither class (a third outcome, so it can
only lower ``p_A``): a triplet whose left and right are the same image always abstains. The noise
is not clipped to [0, 1], so the decision is that of the Gaussian the theorem speaks of.

Cost: the clean reference, left and right are embedded once per triplet (each distinct image
once); only the ``n0 + n`` noisy references go through the encoder after that, in passes of
``noise_batch`` images. The work runs on :func:`rpmetric.evaluation.evaluate` as a task of its own
(:func:`certify_task`), so it is logged, resumed and dealt to torchrun processes like any clean
evaluation. The noise of a triplet is drawn from generators seeded by ``(seed, group/id, block)``
alone, so the same triplet gets the same noise whatever its batch, position or process; the
counts are integers, so a resumed or sharded run gives the same certified figures.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..functional import cosine_distance
from ..images import unit_float
from ..validation import check_int, check_real
from .logits import human_labels

__all__ = ["CertifyConfig", "CertifyResult", "certify", "certify_task", "certified_summary", "clopper_pearson_lower",
           "smoothed_radius", "typed_records", "DEFAULT_RADII", "CERTIFY_OUTPUTS"]

# LipSim's radii, 36/255, 72/255 and 108/255 of the [0, 1] range (l2).
DEFAULT_RADII = (36 / 255, 72 / 255, 108 / 255)
# Noise is drawn in blocks of this many samples, each block from its own seeded generator, so the
# noise of a triplet does not depend on how its samples are cut into encoder passes.
NOISE_BLOCK = 32
# Per-triplet outputs of the certify task (a run log's and --per-sample's fields), beside p.
CERTIFY_OUTPUTS = ("d0", "d1", "n0_left", "n0_right", "n_left", "n_right", "cls", "p_a", "radius", "radius_255")


@dataclass(frozen=True)
class CertifyConfig:
    """The settings of a certification, as its run log records them.

    Attributes:
        sigma: std of the Gaussian noise on the reference, on [0, 1] pixels (e.g. 64/255 = 0.25).
        n0: noise samples that select the class.
        n: fresh noise samples that estimate its probability.
        alpha: the Clopper–Pearson bound's level: each radius holds with probability >= 1 - alpha.
        seed: seeds the noise (with each triplet's key).
        noise_batch: noisy references per encoder pass (the encoder's batch; it changes nothing but
            float rounding in the embeddings).
    """

    sigma: float
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    seed: int = 0
    noise_batch: int = 256

    def __post_init__(self):
        sigma = check_real("sigma", self.sigma)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"Argument `sigma` must be a finite number > 0 (the noise's std on [0, 1] pixels, e.g. "
                             f"0.25), but got {self.sigma!r}.")
        check_int("n0", self.n0, 1)
        check_int("n", self.n, 1)
        alpha = check_real("alpha", self.alpha)
        if not 0 < alpha < 1:
            raise ValueError(f"Argument `alpha` must be in (0, 1), e.g. 0.001, but got {self.alpha!r}.")
        check_int("seed", self.seed)
        check_int("noise_batch", self.noise_batch, 1)

    def to_dict(self) -> dict:
        return {"method": "randomized-smoothing", **asdict(self), "sigma_255": self.sigma * 255}


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """The one-sided Clopper–Pearson lower bound at level ``alpha`` on a binomial probability from
    ``k`` successes in ``n`` trials: ``Beta(alpha; k, n - k + 1)``, and 0 for ``k = 0``.

    Example:
        >>> round(clopper_pearson_lower(10, 10, 0.05), 4)  # 0.05 ** (1 / 10)
        0.7411
        >>> clopper_pearson_lower(0, 10, 0.05)
        0.0
    """
    from scipy.stats import beta

    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def smoothed_radius(p_a: float, sigma: float) -> float:
    """The certified l2 radius ``sigma * Phi^-1(p_a)`` for ``p_a > 1/2``, else 0 (abstain).

    Example:
        >>> round(smoothed_radius(0.975, 0.5), 4)  # Phi^-1(0.975) = 1.96
        0.98
        >>> smoothed_radius(0.5, 0.5)
        0.0
    """
    from scipy.stats import norm

    return float(sigma * norm.ppf(p_a)) if p_a > 0.5 else 0.0


def certify_task(config: CertifyConfig, radii: Sequence[float] = DEFAULT_RADII):
    """The certification as a task of the evaluation engine (:func:`rpmetric.evaluation.evaluate`).

    ``radii`` (on [0, 1] pixels, l2) only shape the summary, not the measurement, so a resumed run
    may report other radii. Each group's result gets a ``"certify"`` entry (see
    :func:`certified_summary`) beside the clean 2AFC ``score`` of the same pass.

    Example:
        >>> task = certify_task(CertifyConfig(sigma=0.25))
        >>> task.name, task.outputs[-3:]
        ('certify-2afc', ('p_a', 'radius', 'radius_255'))
    """
    from ..datasets import TripletImages
    from ..evaluation import TASKS, Task

    radii = _check_radii(radii)
    base = TASKS["2afc"]

    def measure(distances, ref, left, right, *, keys):
        return _measure(config, distances, ref, left, right, keys)

    return Task("certify-2afc", TripletImages, ("ref", "left", "right"), "p", CERTIFY_OUTPUTS, measure, base.score,
                "triplet", keyed=True, summary=lambda rows: {"certify": certified_summary(rows, radii)},
                config={"certify": config.to_dict()}, label="2AFC")


def certified_summary(records: Sequence[Mapping], radii: Sequence[float] = DEFAULT_RADII) -> dict:
    """The figures of certified records (from :func:`certify_task`'s measurement).

    A triplet counts as correct when the smoothed decision did not abstain and is the human choice,
    the label ``p > 0.5`` of the binary accuracy (so ``p == 0.5`` counts as left, and an abstention
    is never correct). It counts as certified at radius ``r`` when it is correct and its radius is
    at least ``r``.

    Returns:
        ``clean_accuracy`` (the smoothed metric on the clean references: the n0-selected class
        against the label, abstentions counted wrong; it is the certified accuracy at radius 0),
        ``abstained`` (the share that abstained), and ``certified``: per radius, in increasing
        order, ``radius`` (on [0, 1]), ``radius_255`` and ``accuracy``.

    Example:
        >>> rows = [{"cls": 1, "radius": 0.3, "p": 1.0}, {"cls": 0, "radius": 0.1, "p": 0.0},
        ...         {"cls": -1, "radius": 0.0, "p": 0.0}, {"cls": 0, "radius": 0.5, "p": 0.5}]
        >>> summary = certified_summary(rows, [0.2])
        >>> summary["clean_accuracy"], summary["abstained"], summary["certified"][0]["accuracy"]
        (0.75, 0.25, 0.5)
    """
    radii = _check_radii(radii)
    n = len(records)
    if n == 0:
        raise ValueError("Argument `records` holds no certified triplets.")
    labels = human_labels(torch.tensor([float(r["p"]) for r in records], dtype=torch.float64)).tolist()
    correct = [int(r["cls"]) == label for r, label in zip(records, labels)]  # cls -1 (abstain) never matches
    certified = [{"radius": radius, "radius_255": radius * 255,
                  "accuracy": sum(ok and float(r["radius"]) >= radius for ok, r in zip(correct, records)) / n}
                 for radius in radii]
    return {"clean_accuracy": sum(correct) / n, "abstained": sum(int(r["cls"]) < 0 for r in records) / n,
            "certified": certified}


# -- the measurement --------------------------------------------------------------------------
def _measure(config: CertifyConfig, distances, ref, left, right, keys: Sequence[str]):
    """Clean distances and the smoothed decision of one batch of triplets, as [B] tensors in the
    order of :data:`CERTIFY_OUTPUTS`."""
    if not callable(getattr(distances, "embed", None)):
        raise TypeError(f"Certification needs a model with an encoder (rpmetric.evaluation.EncoderDistances), but got "
                        f"{type(distances).__name__}.")
    with torch.inference_mode():
        f_ref, e_left, e_right = distances.embed(torch.cat([ref, left, right])).chunk(3)
        d0, d1 = cosine_distance(f_ref, e_left), cosine_distance(f_ref, e_right)
        base = unit_float(ref.to(distances.device))
        counts = _vote_counts(config, distances, base, e_left, e_right, keys)
    rows = [_decide(config, *c) for c in counts.tolist()]
    columns = list(zip(*rows))
    return (d0.cpu(), d1.cpu(), counts[:, 0, 0], counts[:, 0, 1], counts[:, 1, 0], counts[:, 1, 1],
            *(torch.tensor(c, dtype=torch.float64) for c in columns))


def _decide(config: CertifyConfig, n0_counts, n_counts) -> Tuple[int, float, float, float]:
    """``(cls, p_a, radius, radius_255)`` of one triplet from its vote counts ``[left, right]`` in
    the selection and the estimation samples; ``cls`` is -1 when it abstains."""
    if n0_counts[0] == n0_counts[1]:  # no class selected (all ties, or an even split)
        return -1, 0.0, 0.0, 0.0
    top = 0 if n0_counts[0] > n0_counts[1] else 1
    p_a = clopper_pearson_lower(int(n_counts[top]), config.n, config.alpha)
    radius = smoothed_radius(p_a, config.sigma)
    if p_a <= 0.5:
        return -1, p_a, 0.0, 0.0
    return top, p_a, radius, radius * 255


def _vote_counts(config: CertifyConfig, distances, ref: torch.Tensor, e_left: torch.Tensor, e_right: torch.Tensor,
                 keys: Sequence[str]) -> torch.Tensor:
    """``[B, 2, 2]`` int64 counts: per triplet, of the selection (0) and estimation (1) samples, the
    noisy references closer to the left (0) and to the right (1) image; ties count for neither."""
    counts = torch.zeros(len(keys) * 4, dtype=torch.int64, device=ref.device)
    for rows, samples, noise in _noise_passes(config, ref, keys):
        f = distances.embed(ref[rows] + config.sigma * noise, unique=False)
        d_left, d_right = cosine_distance(f, e_left[rows]), cosine_distance(f, e_right[rows])
        slot = rows * 4 + (samples >= config.n0).long() * 2
        counts.index_add_(0, slot, (d_left < d_right).long())
        counts.index_add_(0, slot + 1, (d_right < d_left).long())
    return counts.view(len(keys), 2, 2).cpu()


def _noise_passes(config: CertifyConfig, ref: torch.Tensor, keys: Sequence[str]):
    """``(rows, samples, noise)`` per encoder pass of at most ``noise_batch`` noisy references: the
    triplet (row of the batch) and sample number of each, and its standard normal noise. The
    samples of a triplet are numbered 0 .. n0 + n - 1 (selection first); each block of
    :data:`NOISE_BLOCK` of them is drawn from a generator seeded by the seed, the key and the block."""
    total = config.n0 + config.n
    generator = torch.Generator(device=ref.device)
    pending: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    size = 0
    for row, key in enumerate(keys):
        for start in range(0, total, NOISE_BLOCK):
            count = min(NOISE_BLOCK, total - start)
            generator.manual_seed(_block_seed(config.seed, key, start // NOISE_BLOCK))
            noise = torch.randn((count, *ref.shape[1:]), generator=generator, device=ref.device, dtype=ref.dtype)
            pending.append((torch.full((count,), row, device=ref.device),
                            torch.arange(start, start + count, device=ref.device), noise))
            size += count
            while size >= config.noise_batch:
                out, pending = _take(pending, config.noise_batch)
                size -= config.noise_batch
                yield out
    if size:
        yield _take(pending, size)[0]


def _take(pending, size: int):
    """The first ``size`` rows of the pending blocks, and what is left of them."""
    rows, samples, noise = (torch.cat(parts) for parts in zip(*pending))
    rest = [(rows[size:], samples[size:], noise[size:])] if len(rows) > size else []
    return (rows[:size], samples[:size], noise[:size]), rest


def _block_seed(seed: int, key: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{key}\0{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def typed_records(records: Sequence[Mapping]) -> List[dict]:
    """Records with their counts and class as ints (the engine and the run log carry them as floats).

    Example:
        >>> typed_records([{"id": "a", "cls": 1.0, "n_left": 3.0, "p_a": 0.9}])
        [{'id': 'a', 'cls': 1, 'n_left': 3, 'p_a': 0.9}]
    """
    return [{k: int(v) if k in _INT_FIELDS else v for k, v in r.items()} for r in records]


_INT_FIELDS = ("n0_left", "n0_right", "n_left", "n_right", "cls")


def _check_radii(radii: Sequence[float]) -> List[float]:
    values = [check_real("radii", r, 0.0) for r in radii]
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"Argument `radii` must be finite numbers >= 0 (l2, on [0, 1] pixels), but got "
                         f"{list(radii)!r}.")
    return sorted(set(values))


# -- the API ------------------------------------------------------------------------------------
@dataclass
class CertifyResult:
    """What :func:`certify` returns.

    Attributes:
        results: ``{group: {"n", "score" (the clean 2AFC score), "certify": certified_summary}}``;
            empty unless ``complete``.
        records: per triplet, in dataset order: ``group``, ``id``, ``p``, the clean ``d0``/``d1``,
            the vote counts ``n0_left``/``n0_right`` (selection) and ``n_left``/``n_right``
            (estimation), ``cls`` (0 left, 1 right, -1 abstained), ``p_a``, ``radius`` (l2, on
            [0, 1] pixels; 0 when abstained) and ``radius_255``.
        skipped: triplets that could not be read (with ``skip_bad``).
        config: the settings (:meth:`CertifyConfig.to_dict`) and the radii.
        complete: False when ``max_batches`` stopped the run early (resume to finish).
    """

    results: Dict[str, dict]
    records: List[dict] = field(repr=False)
    skipped: List[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    complete: bool = True

    @property
    def radii(self) -> List[float]:
        """The certified radius of each triplet (0 where it abstained), in record order."""
        return [r["radius"] for r in self.records]


def certify(metric, data: Union[Sequence, Mapping[str, Sequence]], *, sigma: float, n0: int = 100, n: int = 1000,
            alpha: float = 0.001, radii: Sequence[float] = DEFAULT_RADII, seed: int = 0, noise_batch: int = 256,
            batch_size: int = 8, workers: int = 0, log=None, resume: bool = False, skip_bad: bool = False,
            progress: bool = False, max_batches: Optional[int] = None) -> CertifyResult:
    """Certified 2AFC accuracy of a metric by randomized smoothing of the reference (see the module).

    Args:
        metric: a :class:`~rpmetric.RobustDistance`, an :class:`rpmetric.models.encoder.Encoder`,
            a model name or folder, or an :class:`~rpmetric.evaluation.EncoderDistances`.
        data: :class:`~rpmetric.datasets.Triplet` records, or ``{group: records}``.
        sigma: std of the noise on [0, 1] pixels at the model's input size (64/255 is 0.25).
        n0, n, alpha, seed, noise_batch: see :class:`CertifyConfig`.
        radii: l2 radii on [0, 1] pixels at which to report certified accuracy.
        batch_size: triplets per batch of the evaluation engine (each costs ``n0 + n`` forwards;
            a batch is the unit of the run log).
        workers, log, resume, skip_bad, progress, max_batches: as in :func:`rpmetric.evaluation.evaluate`;
            a log records the settings and refuses a resume with others (except ``radii``).

    Example:
        >>> import tempfile, torch
        >>> from PIL import Image
        >>> from rpmetric.datasets import Triplet
        >>> from rpmetric.models.encoder import Encoder
        >>> from rpmetric.models.spec import ModelSpec, Preprocessing
        >>> pp = Preprocessing(image_size=4, resize_size=4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        >>> encoder = Encoder(torch.nn.Flatten(), ModelSpec("pixels", preprocessing=pp))  # embedding = the pixels
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = tmp.name
        >>> for name, colour in (("ref", (200, 0, 0)), ("left", (200, 0, 0)), ("right", (0, 0, 200))):
        ...     Image.new("RGB", (4, 4), colour).save(f"{folder}/{name}.png")
        >>> triplet = Triplet("t0", f"{folder}/ref.png", f"{folder}/left.png", f"{folder}/right.png", 0.0)
        >>> result = certify(encoder, [triplet], sigma=0.25, n0=10, n=100, alpha=0.01, radii=[0.0, 0.5])
        >>> record = result.records[0]
        >>> record["cls"], record["n_left"], round(record["p_a"], 4), round(record["radius"], 4)
        (0, 100, 0.955, 0.4238)
        >>> [point["accuracy"] for point in result.results["all"]["certify"]["certified"]]
        [1.0, 0.0]
        >>> tmp.cleanup()
    """
    from ..evaluation import EncoderDistances, evaluate

    settings = CertifyConfig(sigma=sigma, n0=n0, n=n, alpha=alpha, seed=seed, noise_batch=noise_batch)
    radii = _check_radii(radii)
    distances = metric if isinstance(metric, EncoderDistances) else EncoderDistances(_as_metric(metric))
    if distances.metric.counterattack is not None:
        raise ValueError("Certification smooths the plain metric; a counterattack is not supported with it. "
                         "Pass the metric without `counterattack`.")
    groups = dict(data) if isinstance(data, Mapping) else {"all": list(data)}
    evaluation = evaluate(distances, certify_task(settings, radii), groups, batch_size=batch_size, workers=workers,
                          log=log, resume=resume, skip_bad=skip_bad, progress=progress, max_batches=max_batches)
    return CertifyResult(results=evaluation.results, records=typed_records(evaluation.records),
                         skipped=evaluation.skipped, config={**settings.to_dict(), "radii": radii},
                         complete=evaluation.complete)


def _as_metric(metric):
    from ..metric import RobustDistance

    return metric if isinstance(metric, RobustDistance) else RobustDistance(metric)

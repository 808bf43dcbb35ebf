"""Where a model's files come from: a zoo name, ``hf-hub:ORG/NAME[@REV]`` or a local folder.

:func:`resolve` is the one step between a model argument and building: it finds, once, the base
checkpoint's files and, for a trained head folder, the head's (:class:`Resolved`). :func:`parse`
only turns an argument into a spec, reading nothing.

Everything Hub-related goes through huggingface_hub, so its cache, ``HF_HOME``,
``HF_HUB_OFFLINE`` and revisions behave as users of transformers and open_clip expect.
Files already in the cache are used without touching the network (weights of a commit
never change); ``rpmetric download`` asks the Hub again. Without a network (``HF_HUB_OFFLINE``,
or a Hub that one quick request found unreachable), a file that the cached snapshot lacks counts
as absent, since timm, transformers and ``hf download`` cache only the files they fetched.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple

from .._version import __version__
from ..errors import ModelNotAvailableError
from .spec import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, Family, HeadConfig, ModelSpec, Preprocessing, get_spec

__all__ = ["ModelFiles", "HeadFiles", "Resolved", "parse", "resolve", "fetch", "fetch_head", "read_head_config",
           "download", "read_index", "wanted", "HUB_PREFIX", "MODEL_FILES", "VISION_PREFIXES"]

HUB_PREFIX = "hf-hub:"

# (config file, weight files in order of preference) for each layout: safetensors first, one file
# before a sharded one (an index, ``*.index.json``, naming its shards; see :func:`read_index`).
_LAYOUTS = {
    Family.OPEN_CLIP: ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_model.safetensors.index.json",
                                                 "open_clip_pytorch_model.bin",
                                                 "open_clip_pytorch_model.bin.index.json")),
    Family.TIMM: ("config.json", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                  "pytorch_model.bin.index.json")),
    Family.HF_VIT: ("config.json", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                    "pytorch_model.bin.index.json")),
    Family.HF_CLIP: ("config.json", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                     "pytorch_model.bin.index.json")),
}
_OPTIONAL_FILES = {Family.HF_VIT: ("preprocessor_config.json",), Family.HF_CLIP: ("preprocessor_config.json",)}
# The tensors the metric reads, by key prefix (None: all): only the vision tower of a CLIP checkpoint,
# so that no text-tower tensor is read, and no shard holding only text-tower tensors is fetched.
VISION_PREFIXES = {Family.OPEN_CLIP: ("visual.",), Family.HF_CLIP: ("vision_model.", "visual_projection.")}
# Every file a checkpoint may be read from, whatever its layout (rpmetric.fingerprint fingerprints them;
# an index's shards are fingerprinted through it, since the index names them).
MODEL_FILES = tuple(dict.fromkeys([name for config, weights in _LAYOUTS.values() for name in (config, *weights)]
                                  + [name for names in _OPTIONAL_FILES.values() for name in names]))
INDEX_SUFFIX = ".index.json"
# A shard is a plain file name beside its index: no folder, no "..", nothing hidden.
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# A config is kilobytes; a bigger "config" is not one, and is not read into memory.
MAX_CONFIG_BYTES = 16 * 2 ** 20
# config.json model types of transformers' CLIP: a whole CLIPModel, or its vision tower alone.
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")


@dataclass(frozen=True)
class ModelFiles:
    """The local files of one checkpoint, once fetched."""

    family: Family
    config: dict
    weights: Path  # the weight file, or a sharded checkpoint's index
    extras: dict  # optional files by name -> parsed JSON
    config_path: "Optional[Path | str]" = None  # where `config` was read (or the zoo entry's), for messages
    shards: Tuple[Path, ...] = ()  # a sharded checkpoint's shards that hold tensors the metric reads
    prefixes: Optional[Tuple[str, ...]] = None  # the key prefixes of the tensors read; None: all

    def path_of(self, name: str) -> Path:
        """The path of the config or an extra file by name, for messages (they sit side by side)."""
        return self.weights.parent / name

    def keeps(self, key: str) -> bool:
        """Whether the metric reads the tensor ``key`` (after an optional ``module.`` prefix)."""
        return wanted(key, self.prefixes)


def wanted(key: str, prefixes: Optional[Tuple[str, ...]]) -> bool:
    """Whether ``key`` (``module.`` stripped, as DataParallel saves it) starts with one of ``prefixes``.

    Example:
        >>> wanted("module.visual.proj", ("visual.",)), wanted("text.proj", ("visual.",))
        (True, False)
    """
    if prefixes is None:
        return True
    return (key[len("module."):] if key.startswith("module.") else key).startswith(prefixes)


def read_index(path, prefixes: Optional[Tuple[str, ...]] = None) -> Tuple[str, ...]:
    """The shards of a sharded checkpoint's index that hold tensors with ``prefixes``, in index order.

    An index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``) is data:
    ``{"weight_map": {tensor key: shard file name}}``. Each shard must be a plain file name in the
    index's folder, of the index's own kind (``.safetensors`` or ``.bin``), so that an index can
    neither point outside its folder nor switch a safetensors checkpoint to a pickle.

    Example:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "model.safetensors.index.json"
        >>> _ = path.write_text(json.dumps({"weight_map": {"text.w": "a.safetensors", "visual.w": "b.safetensors"}}))
        >>> read_index(path, ("visual.",))
        ('b.safetensors',)
    """
    path = Path(path)
    index = read_json(path)
    kind = path.name[:-len(INDEX_SUFFIX)].rsplit(".", 1)[-1]  # "safetensors" or "bin"
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path} has no 'weight_map' object of tensor names and shard files; it is not a "
                         "sharded checkpoint's index.")
    shards = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not _SHARD_NAME.match(shard) or not shard.endswith("." + kind):
            raise ValueError(f"{path}: the shard of {key!r} is {shard!r}; a shard must be a plain .{kind} file "
                             "name in the index's folder (no folder, no '..').")
        if wanted(key, prefixes):
            shards.setdefault(shard, None)
    if not shards:
        raise ValueError(f"{path} names no tensor starting with {' or '.join(map(repr, prefixes or ()))}; "
                         "it is not the index of a checkpoint of this layout.")
    return tuple(shards)


def parse(model) -> ModelSpec:
    """Turn a user's model argument into a spec (no file is read or fetched; see :func:`resolve`).

    Args:
        model: a zoo name, ``"hf-hub:ORG/NAME"`` (optionally ``@REVISION``), a local folder,
            or a :class:`ModelSpec`.

    Example:
        >>> parse("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K@main").revision
        'main'
    """
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(
            f"Argument `model` must be a zoo name, 'hf-hub:ORG/NAME' or a folder path, "
            f"but got {type(model).__name__}."
        )
    if model.startswith(HUB_PREFIX):
        repo, _, revision = model[len(HUB_PREFIX):].partition("@")
        if not _REPO_ID.match(repo):
            raise ValueError(f"{model!r} is not a valid Hub reference; expected 'hf-hub:ORG/NAME' or 'hf-hub:ORG/NAME@REVISION'.")
        return ModelSpec(name=model, hub_id=repo, revision=revision or None)
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSpec(name=str(path), local_path=str(path.resolve()))
    if path.exists():
        raise ValueError(f"{model!r} is a file; a local model must be a folder in the Hub's file layout "
                         "(open_clip_config.json with its weights, or a transformers/timm config.json with model.safetensors).")
    try:
        return get_spec(model)
    except ValueError:
        if _REPO_ID.match(model):
            raise ValueError(
                f"{model!r} looks like a Hub repo id but is not in the zoo nor a local folder; "
                f"use 'hf-hub:{model}'."
            ) from None
        raise


def fetch(spec: ModelSpec, *, force_check: bool = False) -> ModelFiles:
    """Get a checkpoint's files, from a folder or the Hugging Face cache or Hub.

    Of a sharded checkpoint, only the index and the shards that hold tensors the metric reads (the
    vision tower of a CLIP checkpoint, see ``VISION_PREFIXES``) are fetched. A repo without its config
    file is built from the zoo entry's ``config`` when it states one (ΔCLIP ships weights only).

    Args:
        spec: a parsed spec (see :func:`parse`).
        force_check: ask the Hub even when the files are cached (``rpmetric download``).

    Raises:
        ModelNotAvailableError: the files are not cached and the Hub cannot be reached.
    """
    if spec.local_path:
        source = _FolderSource(Path(spec.local_path))
    else:
        source = _HubSource(spec, force_check=force_check)
    family = spec.family or _detect_family(source)
    config_name, weight_names = _LAYOUTS[family]
    config_path = source.get(config_name)
    if config_path is not None:
        config = read_json(config_path)
    elif spec.config is not None:  # a zoo entry states the config its repo lacks (ΔCLIP ships weights only)
        config, config_path = spec.checkpoint_config(), f"zoo.json[{spec.name}].config"
    else:
        raise source.missing([config_name])
    weights = next((path for path in map(source.get, weight_names) if path is not None), None)
    if weights is None:  # named without their sharded forms, which the layout hint mentions
        raise source.missing([name for name in weight_names if not name.endswith(INDEX_SUFFIX)])
    weights = Path(weights)
    prefixes = VISION_PREFIXES.get(family)
    shards = []
    if weights.name.endswith(INDEX_SUFFIX):
        for shard in read_index(weights, prefixes):
            path = source.get(shard)
            if path is None:
                raise source.missing([shard], hint=f"{weights.name} names it as a shard of the checkpoint")
            shards.append(Path(path))
    extras = {}
    for name in _OPTIONAL_FILES.get(family, ()):
        path = source.get(name)
        if path is not None:
            extras[name] = read_json(path)
    return ModelFiles(family=family, config=config, weights=Path(weights), extras=extras,
                      config_path=config_path, shards=tuple(shards), prefixes=prefixes)


def fetch_head(spec: ModelSpec, *, force_check: bool = False):
    """``(config dict, path of head.safetensors)`` when the source is a head folder (see
    :mod:`rpmetric.models.heads`), else None. Zoo entries are plain checkpoints and are not probed.

    A Hub repo is probed cache-first: a cached file, or the cache's record that the repo has no
    ``rpmetric_config.json``, answers without the network; offline, so does a cached snapshot
    without that file.
    """
    if spec.family is not None:
        return None
    source = _FolderSource(Path(spec.local_path)) if spec.local_path else _HubSource(spec, force_check=force_check)
    config_path = source.get(CONFIG_NAME)
    if config_path is None:
        return None
    weights = source.get(WEIGHTS_NAME)
    if weights is None:
        raise source.missing([WEIGHTS_NAME], hint=f"it has {CONFIG_NAME}, so it is a trained head, whose weights "
                                                f"belong in {WEIGHTS_NAME} next to that file")
    return read_json(config_path), Path(weights)


@dataclass(frozen=True)
class HeadFiles:
    """A trained head's files (see :mod:`rpmetric.models.heads`), its config read and checked."""

    spec: ModelSpec  # the head folder or Hub repo itself
    meta: dict  # its rpmetric_config.json
    config: HeadConfig  # meta["head"], parsed
    weights: Path  # its head.safetensors

    @property
    def where(self) -> str:
        """The config file, for messages."""
        return f"{self.spec.source}/{CONFIG_NAME}"

    @property
    def preprocessing(self) -> dict:
        """The :class:`Preprocessing` fields the head changes in its base model's (checked names)."""
        return self.meta.get("preprocessing") or {}


@dataclass(frozen=True)
class Resolved:
    """Everything a model argument names, found once: the base checkpoint's files and spec, and
    the trained head on it, if the argument is a head folder. Building reads nothing else."""

    spec: ModelSpec  # the base checkpoint's spec, its family detected
    files: ModelFiles  # the base checkpoint's files
    head: Optional[HeadFiles] = None


def resolve(model, *, force_check: bool = False) -> Resolved:
    """Find every file a model argument needs: the one step between an argument and building.

    A head folder (``rpmetric_config.json``) is read and checked, and its base model found; a base
    that is itself a head is refused (heads do not stack). Then the base checkpoint's files are
    fetched (see :func:`fetch`).

    Args:
        model: a zoo name, ``"hf-hub:ORG/NAME[@REVISION]"``, a local folder, or a :class:`ModelSpec`.
        force_check: ask the Hub even when the files are cached (``rpmetric download``).

    Example:
        >>> resolve("r-clip-f-convnext").files.weights.name  # doctest: +SKIP
        'open_clip_model.safetensors'
    """
    spec = parse(model)
    found = fetch_head(spec, force_check=force_check)
    head = None
    if found is not None:
        meta, weights = found
        base, config = read_head_config(spec, meta, force_check=force_check)
        head, spec = HeadFiles(spec=spec, meta=meta, config=config, weights=weights), base
    files = fetch(spec, force_check=force_check)
    return Resolved(spec=with_family(spec, files), files=files, head=head)


def read_head_config(spec, meta, *, force_check: bool = False):
    """Check a head folder's ``rpmetric_config.json`` and parse its base model.

    Loading and ``rpmetric download`` both read it through :func:`resolve`, so both refuse the
    same folders; :mod:`rpmetric.fingerprint` reads it to find the base model's files.

    Args:
        spec: the parsed spec of the head folder or Hub repo.
        meta: its parsed ``rpmetric_config.json``.
        force_check: passed on to the probe of the base (``rpmetric download`` asks the Hub).

    Returns:
        ``(base model spec, HeadConfig)``.

    Raises:
        ValueError: a newer format, a missing or malformed ``base_model``, ``head`` or
            ``preprocessing``, a base model that cannot be resolved or that is itself a head folder.
    """
    where = f"{spec.source}/{CONFIG_NAME}"
    if not isinstance(meta, dict):
        raise ValueError(f"{where} must hold a JSON object, but holds a {type(meta).__name__}.")
    version = meta.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{where}: 'format' must be a positive integer (rpmetric {__version__} writes "
                         f"{FORMAT_VERSION}), but got {version!r}; write it as a number, e.g. \"format\": 1.")
    if version > FORMAT_VERSION:
        raise ValueError(f"{where} is head folder format {version!r}, but rpmetric {__version__} reads format "
                         f"{FORMAT_VERSION} at most; upgrade rpmetric (pip install -U rpmetric) to load it.")
    base_model = meta.get("base_model")
    if not isinstance(base_model, str) or not isinstance(meta.get("head"), dict):
        raise ValueError(f"{where} must name a 'base_model' (string) and a 'head' (object).")
    try:
        config = HeadConfig.from_dict(meta["head"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: 'head': {err}") from None
    _check_preprocessing_fields(meta.get("preprocessing") or {}, where)
    try:
        base_spec = _resolve_base(spec, base_model)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: base_model {base_model!r} cannot be loaded: {err}") from None
    if fetch_head(base_spec, force_check=force_check) is not None:
        raise ValueError(f"{where}: base_model {base_model!r} is itself a head folder; heads do not stack.")
    return base_spec, config


def _resolve_base(spec, base_model: str):
    """The spec of a head's base model. A relative path is read from the head's folder, never from
    the working directory, so a head gives the same distances wherever it is loaded from; without a
    folder (a Hub head) a relative name is a zoo name."""
    path = Path(base_model).expanduser()
    if base_model.startswith(HUB_PREFIX) or path.is_absolute():
        return parse(base_model)
    beside = Path(spec.local_path) / path if spec.local_path else None
    if beside is not None and beside.is_dir():
        return parse(beside)
    try:
        return get_spec(base_model)
    except ValueError as err:
        if beside is None:
            raise
        raise ValueError(f"{err} A relative path is read from the head's folder, and {beside} is not a "
                         "folder.") from None


def _check_preprocessing_fields(overrides, where: str) -> None:
    """A head's ``preprocessing`` is an object of :class:`Preprocessing` field names (their values
    are checked when the head is applied to its base model's preprocessing)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"{where}: 'preprocessing' must be an object of Preprocessing fields, but got {overrides!r}.")
    unknown = sorted(set(overrides) - set(Preprocessing.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{where}: unknown preprocessing field(s) {unknown}; valid: "
                         f"{sorted(Preprocessing.__dataclass_fields__)}.")


def read_json(path) -> dict:
    """A config file's JSON object, or a one-line ValueError naming the file.

    Refused: a file over ``MAX_CONFIG_BYTES``, text that is not UTF-8 JSON, nesting deeper than
    Python's parser allows (a RecursionError otherwise), and anything but an object at the top.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is {size} bytes; a config file is at most {MAX_CONFIG_BYTES} bytes.")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); a config file is UTF-8 JSON.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    except RecursionError:
        raise ValueError(f"{path} nests too deep to parse; a config file is a shallow JSON object.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, but holds a {type(data).__name__}.")
    return data


def _detect_family(source) -> Family:
    if source.get("open_clip_config.json") is not None:
        return Family.OPEN_CLIP
    config_path = source.get("config.json")
    if config_path is None:
        raise source.missing(["open_clip_config.json", "config.json"])
    config = read_json(config_path)
    if "architecture" in config:
        return Family.TIMM
    if config.get("model_type") == "vit":
        return Family.HF_VIT
    if config.get("model_type") in CLIP_MODEL_TYPES:
        return Family.HF_CLIP
    raise ValueError(
        f"{source.where}: config.json has model_type {config.get('model_type')!r} and no timm 'architecture'; "
        "supported layouts are open_clip (open_clip_config.json), timm (config.json with 'architecture'), "
        "transformers ViT (config.json with model_type 'vit') and transformers CLIP (model_type 'clip' or "
        "'clip_vision_model')."
    )


_LAYOUT_HINT = ("a model folder holds open_clip_config.json with open_clip_model.safetensors (open_clip), "
                "or config.json with model.safetensors (timm, transformers ViT or CLIP); sharded weights come "
                "as an index (*.safetensors.index.json) beside its shards")


class _FolderSource:
    def __init__(self, folder: Path):
        self.folder = folder
        self.where = str(folder)

    def get(self, name: str) -> Optional[Path]:
        path = self.folder / name
        return path if path.is_file() else None

    def missing(self, names, hint: str = "") -> Exception:
        # Only the expected files are named: the folder may be any folder (a head's base_model), and
        # its other contents are none of the message's business.
        hint = hint or _LAYOUT_HINT
        return FileNotFoundError(f"{self.folder} has no {' or '.join(names)}; {hint}.")


class _HubSource:
    """A Hub repo, cache first.

    A cached file, or the cache's record that the repo lacks a file (``.no_exist``, which
    huggingface_hub writes on a 404), answers without the network. Otherwise the Hub is asked,
    unless it cannot be: with ``HF_HUB_OFFLINE``, or when a first quick request found it
    unreachable. Then the cached snapshot of the revision is all there is, and a file it lacks
    counts as absent (``assumed_absent``): timm, transformers and ``hf download`` record no
    absences, so requiring a record would refuse the caches they fill.
    """

    def __init__(self, spec: ModelSpec, force_check: bool):
        self.spec = spec
        self.force_check = force_check
        self.where = spec.source
        self.unreachable: Optional[Exception] = None  # why the Hub could not be reached
        self.reached = False
        self.assumed_absent: set = set()

    def get(self, name: str) -> Optional[Path]:
        import huggingface_hub as hf
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE
        if offline or not self.force_check:
            cached = hf.try_to_load_from_cache(self.spec.hub_id, name, revision=self.spec.revision)
            if isinstance(cached, str):
                return Path(cached)
            if cached is not None:
                # The cache records that the file does not exist at the commit the revision points
                # to: as final as a cached file (rpmetric download asks again, with force_check).
                return None
        if not offline and self._reach(name):
            return self._download(name)
        if self.force_check and not offline:
            raise self.unchecked()
        if self.snapshot() is None:
            raise self.unavailable()
        self.assumed_absent.add(name)
        return None

    def _reach(self, name: str) -> bool:
        """Whether the Hub answers: one HEAD request, without huggingface_hub's retries.

        Why: when hf_hub_download cannot connect and the file is not cached, it retries five
        times with backoff (about 25 s, no setting shortens it). One request that fails fast
        tells the same. Any HTTP answer but "down or busy" (even a 404) means the Hub was reached;
        hf_hub_download then gives the real answer.
        """
        import huggingface_hub as hf
        from huggingface_hub import constants, errors

        if self.reached or self.unreachable is not None:
            return self.unreachable is None
        url = hf.hf_hub_url(self.spec.hub_id, name, revision=self.spec.revision)
        try:
            hf.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT,
                                    library_name="rpmetric", library_version=__version__)
        except _transport_errors() as err:
            self.unreachable = err
        except errors.HfHubHTTPError as err:
            status = getattr(err.response, "status_code", None)
            if status in _HUB_DOWN_STATUS:
                self.unreachable = err
        self.reached = self.unreachable is None
        return self.reached

    def _download(self, name: str) -> Optional[Path]:
        import huggingface_hub as hf
        from huggingface_hub import errors

        repo, revision = self.spec.hub_id, self.spec.revision
        try:
            return Path(hf.hf_hub_download(
                repo, name, revision=revision, library_name="rpmetric", library_version=__version__,
            ))
        # LocalEntryNotFoundError subclasses EntryNotFoundError, so it must come first.
        except errors.LocalEntryNotFoundError:
            raise (self.unchecked() if self.force_check else self.unavailable()) from None
        except errors.EntryNotFoundError:
            return None
        except errors.RevisionNotFoundError:
            raise ValueError(f"The Hub repo {repo!r} has no revision {revision!r}.") from None
        except errors.RepositoryNotFoundError:
            raise ValueError(
                f"The Hub has no repo {repo!r} (or it is private: log in with `hf auth login`)."
            ) from None

    def snapshot(self) -> Optional[Path]:
        """The cached snapshot folder of the revision (``main`` when none is given), if any."""
        from huggingface_hub import constants

        repo_dir = Path(constants.HF_HUB_CACHE) / ("models--" + self.spec.hub_id.replace("/", "--"))
        revision = self.spec.revision or "main"
        ref = repo_dir / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        folder = repo_dir / "snapshots" / commit
        return folder if folder.is_dir() else None

    def missing(self, names, hint: str = "is it an open_clip, timm, transformers ViT or CLIP model?") -> Exception:
        if self.assumed_absent.intersection(names):  # not cached; the Hub was not asked
            return self.unavailable(names)
        end = "" if hint.endswith("?") else "."
        return FileNotFoundError(f"The Hub repo {self.spec.hub_id!r} has no {' or '.join(names)}; {hint}{end}")

    def _why_no_hub(self) -> str:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set, so the Hub is not asked"
        reason = f" ({type(self.unreachable).__name__}: {self.unreachable})" if self.unreachable else ""
        return (f"the Hub ({constants.ENDPOINT}) cannot be reached{reason}; without a network, set "
                "HF_HUB_OFFLINE=1 so that cached models load at once, without trying the Hub")

    def unavailable(self, names=()) -> ModelNotAvailableError:
        from huggingface_hub import constants

        name = self.spec.name
        snapshot = self.snapshot()
        if names and snapshot is not None:
            held = ", ".join(sorted(p.name for p in snapshot.iterdir())) or "nothing"
            what = (f"{' or '.join(names)} of {self.spec.source} is not in the Hugging Face cache "
                    f"({snapshot} holds: {held})")
        else:
            what = f"its weights ({self.spec.source}) are not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        return ModelNotAvailableError(
            f"Cannot load model {name!r}: {what} and {self._why_no_hub()}. Either\n"
            f"  - prefetch them where there is a network: `rpmetric download {name}` "
            "(then copy the cache folder, or set HF_HOME to it), or\n"
            "  - copy the repo's files into a local folder and pass it: RobustDistance(model='/path/to/folder') "
            "or --model /path/to/folder."
        )

    def unchecked(self) -> ModelNotAvailableError:
        """``rpmetric download`` without the Hub: it must not pass off the cache as checked."""
        from huggingface_hub import constants

        snapshot = self.snapshot()
        cached = (f"its cached files ({snapshot}) were not checked for updates; to use them as they are, "
                  "set HF_HUB_OFFLINE=1" if snapshot is not None else "nothing of it is cached")
        reason = f" ({type(self.unreachable).__name__}: {self.unreachable})" if self.unreachable else ""
        return ModelNotAvailableError(f"Cannot download {self.spec.name!r}: the Hub ({constants.ENDPOINT}) "
                                      f"cannot be reached{reason}; {cached}.")


# HTTP statuses with which the Hub says it is down or busy (huggingface_hub retries on these).
_HUB_DOWN_STATUS = (408, 429, 500, 502, 503, 504)


def _transport_errors() -> tuple:
    """The HTTP client's "no answer from the server" errors (connection, timeout, proxy).

    huggingface_hub 1.x and 2.x use httpx (2.x its fork httpx2), older versions requests; only the
    one it imported is looked at.
    """
    found = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        if module in sys.modules:
            found.extend(getattr(sys.modules[module], n) for n in names if hasattr(sys.modules[module], n))
    return tuple(found)


def download(model, *, force_check: bool = True) -> list:
    """Fetch a model's files into the Hugging Face cache (or check a local folder).

    A head repo (``rpmetric_config.json``) brings its head weights and then its base model's.

    Returns:
        The local paths of the weight files, head first.

    Example:
        >>> download("r-clip-f-convnext")  # doctest: +SKIP
    """
    resolved = resolve(model, force_check=force_check)
    head = [] if resolved.head is None else [resolved.head.weights]
    return [*head, *_weight_paths(resolved.files)]


def _weight_paths(files: ModelFiles) -> list:
    return [files.weights, *files.shards]


def with_family(spec: ModelSpec, files: ModelFiles) -> ModelSpec:
    """The spec with its detected family filled in."""
    return spec if spec.family else replace(spec, family=files.family)


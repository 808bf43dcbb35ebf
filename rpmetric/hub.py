"""Where a model's files come from: a zoo name, ``hf-hub:ORG/NAME[@REV]`` or a local folder.

Everything Hub-related goes through huggingface_hub, so its cache, ``HF_HOME``,
``HF_HUB_OFFLINE`` and revisions behave as users of transformers and open_clip expect.
Files already in the cache are used without touching the network (weights of a commit
never change); ``rpmetric download`` asks the Hub again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from ._version import __version__
from .errors import ModelNotAvailableError
from .spec import Family, ModelSpec, get_spec

__all__ = ["ModelFiles", "resolve", "fetch", "fetch_head", "HUB_PREFIX"]

HUB_PREFIX = "hf-hub:"

# (config file, weight files in order of preference) for each layout; safetensors first.
_LAYOUTS = {
    Family.OPEN_CLIP: ("open_clip_config.json", ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
    Family.TIMM: ("config.json", ("model.safetensors", "pytorch_model.bin")),
    Family.HF_VIT: ("config.json", ("model.safetensors", "pytorch_model.bin")),
}
_OPTIONAL_FILES = {Family.HF_VIT: ("preprocessor_config.json",)}
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class ModelFiles:
    """The local files of one checkpoint, once fetched."""

    family: Family
    config: dict
    weights: Path
    extras: dict  # optional files by name -> parsed JSON


def resolve(model) -> ModelSpec:
    """Turn a user's model argument into a spec (no file is read or fetched).

    Args:
        model: a zoo name, ``"hf-hub:ORG/NAME"`` (optionally ``@REVISION``), a local folder,
            or a :class:`ModelSpec`.

    Example:
        >>> resolve("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K@main").revision
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

    Args:
        spec: a resolved spec (see :func:`resolve`).
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
    if config_path is None:
        raise source.missing(config_name)
    config = json.loads(Path(config_path).read_text())
    weights = None
    for name in weight_names:
        weights = source.get(name)
        if weights is not None:
            break
    if weights is None:
        raise source.missing(" or ".join(weight_names))
    extras = {}
    for name in _OPTIONAL_FILES.get(family, ()):
        path = source.get(name)
        if path is not None:
            extras[name] = json.loads(Path(path).read_text())
    return ModelFiles(family=family, config=config, weights=Path(weights), extras=extras)


def fetch_head(spec: ModelSpec, *, force_check: bool = False):
    """``(config dict, path of head.safetensors)`` when the source is a head folder (see
    :mod:`rpmetric.heads`), else None. Zoo entries are plain checkpoints and are not probed.

    A Hub repo is probed cache-first: a cached file, or the cache's record that the repo has no
    ``rpmetric_config.json``, answers without the network. When neither is cached and the Hub
    cannot be reached, the repo is taken as a plain checkpoint.
    """
    from .heads import CONFIG_NAME, WEIGHTS_NAME

    if spec.family is not None:
        return None
    source = _FolderSource(Path(spec.local_path)) if spec.local_path else _HubSource(spec, force_check=force_check)
    try:
        config_path = source.get(CONFIG_NAME)
    except ModelNotAvailableError:
        return None
    if config_path is None:
        return None
    weights = source.get(WEIGHTS_NAME)
    if weights is None:
        raise source.missing(WEIGHTS_NAME, hint=f"it has {CONFIG_NAME}, so it is a trained head, whose weights "
                                                f"belong in {WEIGHTS_NAME} next to that file")
    return json.loads(Path(config_path).read_text()), Path(weights)


def _detect_family(source) -> Family:
    if source.get("open_clip_config.json") is not None:
        return Family.OPEN_CLIP
    config_path = source.get("config.json")
    if config_path is None:
        raise source.missing("open_clip_config.json or config.json")
    config = json.loads(Path(config_path).read_text())
    if "architecture" in config:
        return Family.TIMM
    if config.get("model_type") == "vit":
        return Family.HF_VIT
    raise ValueError(
        f"{source.where}: config.json has model_type {config.get('model_type')!r} and no timm 'architecture'; "
        "supported layouts are open_clip (open_clip_config.json), timm (config.json with 'architecture') "
        "and transformers ViT (config.json with model_type 'vit')."
    )


class _FolderSource:
    def __init__(self, folder: Path):
        self.folder = folder
        self.where = str(folder)

    def get(self, name: str) -> Optional[Path]:
        path = self.folder / name
        return path if path.is_file() else None

    def missing(self, name: str, hint: str = "") -> Exception:
        present = sorted(p.name for p in self.folder.iterdir())
        hint = f"; {hint}" if hint else ""
        return FileNotFoundError(f"{self.folder} has no {name} (it holds: {', '.join(present) or 'nothing'}){hint}.")


class _HubSource:
    def __init__(self, spec: ModelSpec, force_check: bool):
        self.spec = spec
        self.force_check = force_check
        self.where = spec.source

    def get(self, name: str) -> Optional[Path]:
        import huggingface_hub as hf
        from huggingface_hub import errors

        repo, revision = self.spec.hub_id, self.spec.revision
        if not self.force_check:
            cached = hf.try_to_load_from_cache(repo, name, revision=revision)
            if isinstance(cached, str):
                return Path(cached)
            if cached is not None:
                # The cache records that the file does not exist at the commit the revision points
                # to: as final as a cached file (rpmetric download asks again, with force_check).
                return None
        try:
            return Path(hf.hf_hub_download(
                repo, name, revision=revision, library_name="rpmetric", library_version=__version__,
            ))
        # LocalEntryNotFoundError subclasses EntryNotFoundError, so it must come first.
        except errors.LocalEntryNotFoundError:
            raise self.unavailable() from None
        except errors.EntryNotFoundError:
            return None
        except errors.RevisionNotFoundError:
            raise ValueError(f"The Hub repo {repo!r} has no revision {revision!r}.") from None
        except errors.RepositoryNotFoundError:
            raise ValueError(
                f"The Hub has no repo {repo!r} (or it is private: log in with `hf auth login`)."
            ) from None

    def missing(self, name: str, hint: str = "is it an open_clip, timm or transformers ViT model?") -> Exception:
        end = "" if hint.endswith("?") else "."
        return FileNotFoundError(f"The Hub repo {self.spec.hub_id!r} has no {name}; {hint}{end}")

    def unavailable(self) -> ModelNotAvailableError:
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        name = self.spec.name
        return ModelNotAvailableError(
            f"Cannot load model {name!r}: its weights ({self.spec.source}) are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the Hub cannot be reached{offline}. Either\n"
            f"  - prefetch them where there is a network: `rpmetric download {name}` "
            "(then copy the cache folder, or set HF_HOME to it), or\n"
            "  - copy the repo's files into a local folder and pass it: RobustDistance(model='/path/to/folder') "
            "or --model /path/to/folder."
        )


def download(model, *, force_check: bool = True) -> list:
    """Fetch a model's files into the Hugging Face cache (or check a local folder).

    A head repo (``rpmetric_config.json``) brings its head weights and then its base model's.

    Returns:
        The local paths of the weight files, head first.

    Example:
        >>> download("r-clip-f-convnext")  # doctest: +SKIP
    """
    from .heads import read_head_config

    spec = resolve(model)
    head = fetch_head(spec, force_check=force_check)
    if head is None:
        return [fetch(spec, force_check=force_check).weights]
    base, _ = read_head_config(spec, head[0], force_check=force_check)  # a plain checkpoint: heads do not stack
    return [head[1], fetch(base, force_check=force_check).weights]


def with_family(spec: ModelSpec, files: ModelFiles) -> ModelSpec:
    """The spec with its detected family filled in."""
    return spec if spec.family else replace(spec, family=files.family)


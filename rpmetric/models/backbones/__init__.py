"""Backbone builders, one per checkpoint layout. Each returns a module mapping normalised
images to the model's embedding (before L2 normalisation).

A folder's config is checked before anything is built (sizes within the bounds of
:mod:`rpmetric.models.spec`, nothing that fetches or opens other files), and a failed check names the file.
"""

from __future__ import annotations

from torch import nn

from ...errors import CheckpointError
from ..spec import Family, Preprocessing
from .hf_clip import build_hf_clip, check_hf_clip_config, hf_clip_preprocessing
from .hf_vit import build_hf_vit, check_hf_vit_config, hf_vit_preprocessing
from .openclip import build_open_clip, check_open_clip_config, open_clip_preprocessing
from .timm_model import build_timm, check_timm_config, timm_preprocessing

__all__ = ["build_backbone", "native_preprocessing", "check_config", "prefers_own_preprocessing"]

_BUILDERS = {Family.OPEN_CLIP: build_open_clip, Family.TIMM: build_timm, Family.HF_VIT: build_hf_vit,
             Family.HF_CLIP: build_hf_clip}
_CHECKS = {Family.OPEN_CLIP: check_open_clip_config, Family.TIMM: check_timm_config, Family.HF_VIT: check_hf_vit_config,
           Family.HF_CLIP: check_hf_clip_config}
_PREPROCESSOR = "preprocessor_config.json"


def check_config(files) -> None:
    """Raise a ValueError naming the config file unless its model can be built as it says."""
    _named(files.config_path, _CHECKS[files.family], files.config)


def build_backbone(files) -> nn.Module:
    """The backbone for fetched files (see :func:`rpmetric.models.hub.fetch`)."""
    check_config(files)
    return _BUILDERS[files.family](files)


def native_preprocessing(files) -> Preprocessing:
    """The preprocessing a checkpoint's own config prescribes (zoo specs override it)."""
    check_config(files)
    if files.family is Family.OPEN_CLIP:
        return _named(files.config_path, open_clip_preprocessing, files.config)
    if files.family is Family.TIMM:
        return _named(files.config_path, timm_preprocessing, files.config)
    # The config's image size is checked above, so what is left to fail is the preprocessor's file.
    where = files.path_of(_PREPROCESSOR) if _PREPROCESSOR in files.extras else files.config_path
    read = hf_clip_preprocessing if files.family is Family.HF_CLIP else hf_vit_preprocessing
    return _named(where, read, files.config, files.extras)


def prefers_own_preprocessing(files) -> bool:
    """Whether a checkpoint's own preprocessing wins over its zoo entry's: a transformers CLIP repo's
    ``preprocessor_config.json`` is what its authors' processor applies (the zoo states the
    preprocessing for repos without one, such as LEAF's, whose cards borrow the base model's)."""
    return files.family is Family.HF_CLIP and _PREPROCESSOR in files.extras


def _named(where, func, *args):
    """``func(*args)``, with a config error's message prefixed by the file it is about."""
    try:
        return func(*args)
    except CheckpointError:
        raise  # names its weight file already
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None

"""Moved to :mod:`rpmetric.models.backbones`; this name stays so that old imports keep working.

A package's submodules are aliased too: otherwise ``import rpmetric.backbones.weights`` would find
the file through the moved package's path and load it a second time, as another module object.
"""

import sys

from ..models import backbones as _moved
from ..models.backbones import hf_clip, hf_vit, openclip, remap, timm_model, weights

for _module in (hf_clip, hf_vit, openclip, remap, timm_model, weights):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
sys.modules[__name__] = _moved  # the same module objects: attributes and monkeypatching agree

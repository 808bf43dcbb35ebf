"""Moved to :mod:`rpmetric.models.encoder`; this name stays so that old imports keep working."""

import sys

from .models import encoder as _moved
from .models.loading import load_encoder

# load_encoder now lives in models.loading (it wraps heads around the encoder, so the encoder module
# cannot import it without a cycle); `from rpmetric.encoder import load_encoder` still finds it.
_moved.load_encoder = load_encoder
sys.modules[__name__] = _moved  # the same module object: attributes and monkeypatching agree

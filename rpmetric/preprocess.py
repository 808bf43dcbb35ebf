"""Moved to :mod:`rpmetric.models.preprocess`; this name stays so that old imports keep working."""

import sys

from .models import preprocess as _moved

sys.modules[__name__] = _moved  # the same module object: attributes and monkeypatching agree

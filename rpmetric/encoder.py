"""Moved to :mod:`rpmetric.models.encoder`; this name stays so that old imports keep working."""

import sys

from .models import encoder as _moved

sys.modules[__name__] = _moved  # the same module object: attributes and monkeypatching agree

"""Moved to :mod:`rpmetric.stores.store`; this name stays so that old imports keep working."""

import sys

from .stores import store as _moved

sys.modules[__name__] = _moved  # the same module object: attributes and monkeypatching agree

"""Moved to :mod:`rpmetric.stores.robust`; this name stays so that old imports keep working."""

import sys

from .stores import robust as _moved

sys.modules[__name__] = _moved  # the same module object: attributes and monkeypatching agree

"""rpmetric: perceptual distances from adversarially robust vision encoders.

Example:
    >>> import rpmetric
    >>> "r-clip-f-convnext" in rpmetric.list_models()
    True
"""

from ._version import __version__
from .counterattack import Counterattack, CounterattackResult
from .errors import CheckpointError, ModelNotAvailableError
from .functional import cosine_distance
from .images import load_image
from .metric import RobustDistance, distance
from .models.spec import ModelSpec, Preprocessing, get_spec, list_models

__all__ = [
    "__version__",
    "RobustDistance",
    "Counterattack",
    "CounterattackResult",
    "distance",
    "cosine_distance",
    "load_image",
    "list_models",
    "get_spec",
    "ModelSpec",
    "Preprocessing",
    "ModelNotAvailableError",
    "CheckpointError",
]

"""Dataset-scale embedding with Ray Data, under the name users look for: ``rpmetric.scale.embed_dataset``
(see :mod:`rpmetric.stores.ray`, where it lives with the Ray engine of ``rpmetric embed``).

Importing this module does not import Ray; calling its functions needs ``pip install "rpmetric[ray]"``.
"""

from .stores.ray import build_store, embed_dataset

__all__ = ["embed_dataset", "build_store"]

"""The model side, one stage per module, each importing only the ones before it:

``spec`` (+ ``zoo.json``) describes models and heads; ``hub.resolve`` turns a model argument into
its files (the base checkpoint's, and a trained head's), once; ``backbones`` build the network
from them; ``encoder`` wraps it ([0, 1] pixels in, normalised inside); ``heads`` wrap the encoder.
:func:`load_encoder` runs them in that order.
"""

from .loading import load_encoder

__all__ = ["load_encoder"]

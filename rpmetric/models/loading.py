"""Loading a model argument as an encoder: the model side's stages, once each, in order."""

from __future__ import annotations

from . import hub
from .encoder import Encoder, build_encoder
from .heads import wrap_encoder
from .spec import default_model

__all__ = ["load_encoder"]


def load_encoder(model=None, *, resize: bool = True) -> Encoder:
    """Resolve, fetch and build the encoder for a model argument.

    ``hub.resolve`` finds every file once (the base checkpoint's, and a trained head's); the
    backbone is built from them, the encoder wraps it, and a head wraps the encoder.

    Args:
        model: zoo name, ``hf-hub:ORG/NAME[@REV]``, local folder, or ModelSpec; None for the default.
            A folder or Hub repo with ``rpmetric_config.json`` is a trained head on a base model.
        resize: resize inputs as the model's preprocessing prescribes (see :class:`Encoder`).

    Example:
        >>> enc = load_encoder("r-clip-f-convnext")  # doctest: +SKIP
    """
    resolved = hub.resolve(default_model() if model is None else model)
    encoder = build_encoder(resolved.files, resolved.spec, resize=resize)
    return encoder if resolved.head is None else wrap_encoder(encoder, resolved.head)

"""Trainable heads on a frozen backbone: an MLP on the embedding, or LoRA inside the backbone.

A *head folder* holds ``rpmetric_config.json`` (the base model, the head's type and
hyperparameters, how it was trained) and ``head.safetensors`` (only the head's tensors).
:func:`rpmetric.models.hub.resolve` reads it along with its base model's files; the base encoder
is built as any other, and :func:`wrap_encoder` wraps its backbone, so
:class:`~rpmetric.models.encoder.Encoder` still returns the ``[N, D]`` embedding before L2
normalisation and evaluation, attacks and counterattacks work unchanged.

- MLP: ``fc2(relu(fc1(e))) + e`` on the backbone's embedding ``e`` (DreamSim's head). ``fc2``
  starts at zero, so an untrained head is the identity and the metric starts as the base one.
- LoRA: ``W x + (alpha / r) B A dropout(x)`` on the attention in-projection of ViTs (timm's
  ``attn.qkv`` Linear and open_clip's fused ``in_proj_weight``, in ``nn.MultiheadAttention`` or
  open_clip's own ``Attention``) or, for ConvNeXt, on the MLP ``fc1``/``fc2``. ``B`` starts at
  zero, so an untrained adapter changes nothing. For training, Linear layers get peft's LoRA
  layers; the attention modules get :class:`LoRAAttention` (see there why peft does not fit
  them). A saved head loads without peft: :func:`load_head` merges the Linear (and 1x1 Conv)
  adapters into the weights, ``W + (alpha / r) B A``, which computes the same in eval mode.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import MissingDependencyError
from ..files import atomic_write, write_json
# The head folder's config is described in spec (hub reads it before anything is built); re-exported here.
from .encoder import Encoder
from .hub import HeadFiles, parse
from .spec import CONFIG_NAME, FORMAT_VERSION, HEAD_TYPES, WEIGHTS_NAME, HeadConfig

__all__ = [
    "HEAD_TYPES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "HeadConfig",
    "MLPHead",
    "WithMLPHead",
    "LoRAAttention",
    "lora_targets",
    "attach_head",
    "head_state_dict",
    "load_head_state",
    "load_head",
    "head_dropouts",
    "save_head_folder",
    "base_model_reference",
    "wrap_encoder",
]

# -- MLP --------------------------------------------------------------------------------------
class MLPHead(nn.Module):
    """``fc2(relu(fc1(e))) + e``: a residual MLP on the embedding.

    Example:
        >>> head = MLPHead(4, hidden=8)
        >>> e = torch.randn(2, 4)
        >>> torch.equal(head(e), e)  # fc2 starts at zero: the untrained head is the identity
        True
    """

    def __init__(self, dim: int, hidden: int = 512, device=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device)
        self.fc2 = nn.Linear(hidden, dim, device=device)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(e))) + e


class WithMLPHead(nn.Module):
    """A backbone followed by an :class:`MLPHead` on its embedding."""

    def __init__(self, backbone: nn.Module, head: MLPHead):
        super().__init__()
        self.backbone = backbone
        self.mlp_head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_head(self.backbone(x))


# -- LoRA -------------------------------------------------------------------------------------
def _attention_types() -> Tuple[type, ...]:
    """The fused-in-projection attention modules :class:`LoRAAttention` adapts."""
    from open_clip.transformer import Attention

    return nn.MultiheadAttention, Attention


class LoRAAttention(nn.Module):
    """Self-attention with LoRA on its fused q/k/v in-projection (``in_proj_weight``).

    Wraps ``nn.MultiheadAttention`` (open_clip's default ViT block) or open_clip's own
    ``open_clip.transformer.Attention`` (its "custom" block, which rpmetric builds ViTs with) and
    is called as the wrapped module is: it returns ``(out, None)`` for the first and ``out`` for
    the second.

    Why not peft: both keep the in-projection as a bare ``in_proj_weight`` Parameter, so there is
    no Linear to wrap. peft's own MultiheadAttention layer merges the update into the weights
    around each call, which also adapts ``out_proj`` (not what the recipe adapts) and cannot apply
    LoRA dropout to the input as peft does for Linear layers. So this module computes the
    projection itself, ``x W^T + b + (alpha / r) dropout(x) A^T B^T``, and then attends like the
    wrapped module (``scaled_dot_product_attention``, then ``out_proj``). With ``B == 0`` the
    output equals the wrapped module's.

    Only what CLIP vision towers use is supported: self-attention (query, key and value the same
    tensor); for ``nn.MultiheadAttention`` fused projection weights, no ``key_padding_mask``,
    ``need_weights=False``; for open_clip's Attention plain dot-product attention (no scaled
    cosine attention, head scale, QK norm or inner norm).

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> lora = LoRAAttention(mha, r=2, alpha=0.5, dropout=0.0).eval()
        >>> x = torch.randn(1, 3, 8)
        >>> torch.allclose(lora(x, x, x)[0], mha(x, x, x, need_weights=False)[0], atol=1e-6)  # B starts at 0
        True
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float):
        super().__init__()
        _check_plain_attention(base_layer)
        weight = base_layer.in_proj_weight
        width = weight.shape[1]
        self.base_layer = base_layer
        self.scaling = alpha / r
        self.lora_dropout = nn.Dropout(dropout)
        # Where the base weights are: the backbone may already sit on a GPU (or be a meta model).
        self.lora_A = nn.Parameter(torch.empty(r, width, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(3 * width, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None,
                **kwargs):
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("LoRAAttention supports self-attention only (key and value must be the query).")
        base = self.base_layer
        if not isinstance(base, nn.MultiheadAttention):  # open_clip's Attention: batch first, returns a tensor
            return base.out_drop(self._attend(query, attn_mask, base.attn_drop.p))
        if key_padding_mask is not None or need_weights:
            raise ValueError("LoRAAttention supports key_padding_mask=None and need_weights=False only.")
        x = query if base.batch_first else query.transpose(0, 1)
        out = self._attend(x, attn_mask, base.dropout)
        return (out if base.batch_first else out.transpose(0, 1)), None

    def _attend(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], dropout_p: float) -> torch.Tensor:
        """Attention of a batch-first ``[B, L, E]`` input, through the LoRA-adapted in-projection."""
        base = self.base_layer
        batch, length, width = x.shape
        heads = base.num_heads
        qkv = F.linear(x, base.in_proj_weight, base.in_proj_bias)
        qkv = qkv + self.scaling * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if attn_mask is not None:
            if attn_mask.ndim == 3:  # both modules take [B * heads, L, L] masks too
                attn_mask = attn_mask.reshape(batch, heads, length, length)
            if attn_mask.dtype == torch.bool:
                attn_mask = ~attn_mask  # both modules mask where True; SDPA attends where True
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=dropout_p if self.training else 0.0)
        return base.out_proj(out.transpose(1, 2).reshape(batch, length, width))


def _check_plain_attention(layer: nn.Module) -> None:
    """Raise unless :class:`LoRAAttention` computes exactly what ``layer`` does."""
    if isinstance(layer, nn.MultiheadAttention):
        if not layer._qkv_same_embed_dim or layer.bias_k is not None or layer.add_zero_attn:
            raise ValueError("LoRA supports nn.MultiheadAttention with a fused in-projection only "
                             "(kdim == vdim == embed_dim, add_bias_kv=False, add_zero_attn=False).")
        return
    if not isinstance(layer, _attention_types()):
        raise TypeError(f"LoRAAttention wraps nn.MultiheadAttention or open_clip.transformer.Attention, "
                        f"but got {type(layer).__name__}.")
    extras = {"scaled cosine attention (logit_scale)": layer.logit_scale is not None,
              "head scale (head_scale)": layer.head_scale is not None,
              "QK norm (ln_q, ln_k)": not (isinstance(layer.ln_q, nn.Identity) and isinstance(layer.ln_k, nn.Identity)),
              "inner norm (ln_inner)": not isinstance(layer.ln_inner, nn.Identity)}
    used = [name for name, on in extras.items() if on]
    if used:
        raise ValueError(f"LoRA supports open_clip's Attention in its plain form only (CLIP ViTs), but this one "
                         f"uses {', '.join(used)}; target other modules with HeadConfig.targets or use "
                         f"--head mlp instead.")


def lora_targets(backbone: nn.Module) -> List[str]:
    """The modules LoRA adapts by default, by name.

    Every ``nn.MultiheadAttention`` or ``open_clip.transformer.Attention`` (open_clip ViT, default
    or custom block) and every Linear named ``...attn.qkv`` (timm ViT, R-DINO); a backbone without
    attention (ConvNeXt) gets its MLP ``...mlp.fc1``/``...mlp.fc2``.

    Raises:
        ValueError: the backbone has none of these.
    """
    attention = _attention_types()
    names = [n for n, m in backbone.named_modules()
             if isinstance(m, attention) or (n.endswith("attn.qkv") and isinstance(m, nn.Linear))]
    if not names:
        names = [n for n, m in backbone.named_modules()
                 if n.endswith(("mlp.fc1", "mlp.fc2")) and isinstance(m, (nn.Linear, nn.Conv2d))]
    if not names:
        raise ValueError(f"Found no LoRA target in a {type(backbone).__name__}: LoRA adapts attention in-projections, "
                         "Linear '...attn.qkv' (ViTs) or '...mlp.fc1'/'...mlp.fc2' (ConvNeXt); use --head mlp instead.")
    return names


def _checked_targets(backbone: nn.Module, config: HeadConfig) -> Tuple[List[str], List[str], List[str]]:
    """The LoRA targets, and of them the attention modules and the Linear/Conv layers."""
    targets = list(config.targets) or lora_targets(backbone)
    modules = dict(backbone.named_modules())
    missing = [t for t in targets if t not in modules]
    if missing:
        raise ValueError(f"LoRA target(s) {missing} are not modules of the backbone; valid defaults: "
                         f"{lora_targets(backbone)}.")
    attention = [t for t in targets if isinstance(modules[t], _attention_types())]
    return targets, attention, [t for t in targets if t not in attention]


def _add_lora(backbone: nn.Module, config: HeadConfig) -> Tuple[nn.Module, HeadConfig]:
    targets, attention, linear = _checked_targets(backbone, config)
    modules = dict(backbone.named_modules())
    for name in attention:
        parent, _, child = name.rpartition(".")
        holder = modules[parent] if parent else backbone
        setattr(holder, child, LoRAAttention(modules[name], config.r, config.alpha, config.dropout))
    if linear:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise MissingDependencyError("Training LoRA on Linear layers (timm ViT qkv, ConvNeXt fc1/fc2) needs "
                                         "peft: pip install 'rpmetric[train]' (or pip install peft); loading a "
                                         "trained head does not.") from None

        # A string is matched by peft with re.fullmatch: exactly these modules, no namesakes.
        pattern = "(?:" + "|".join(re.escape(n) for n in linear) + ")"
        peft_config = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=pattern)
        inject_adapter_in_model(peft_config, backbone)
    return backbone, replace(config, targets=tuple(targets))


def attach_head(backbone: nn.Module, config: HeadConfig, dim: Optional[int] = None) -> Tuple[nn.Module, HeadConfig]:
    """Wrap (MLP) or adapt in place (LoRA) a backbone; returns the module and the completed config.

    Args:
        backbone: maps normalised images to ``[N, D]`` embeddings.
        config: the head's settings.
        dim: the embedding size ``D`` (MLP only; taken from ``config.dim`` when None).

    Example:
        >>> module, cfg = attach_head(nn.Linear(3, 4), HeadConfig("mlp", hidden=8), dim=4)
        >>> cfg.dim, sorted(head_state_dict(module))
        (4, ['mlp_head.fc1.bias', 'mlp_head.fc1.weight', 'mlp_head.fc2.bias', 'mlp_head.fc2.weight'])
    """
    if config.type == "mlp":
        dim = dim or config.dim
        if not dim:
            raise ValueError("An MLP head needs the embedding size: pass `dim` or set HeadConfig.dim.")
        device = next(backbone.parameters(), torch.empty(0)).device  # the head goes where the backbone is
        return WithMLPHead(backbone, MLPHead(dim, config.hidden, device=device)), replace(config, dim=int(dim))
    return _add_lora(backbone, config)


def _is_head_tensor(name: str) -> bool:
    return name.startswith("mlp_head.") or ".lora_" in name or name.startswith("lora_")


def head_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    """Copies of the head's tensors only (MLP weights or LoRA A/B), by name in ``module``.

    Copies, not views: the optimiser updates the parameters in place, and a state kept as the
    best so far must not follow them.
    """
    return {k: v.detach().clone() for k, v in module.state_dict().items() if _is_head_tensor(k)}


def head_parameters(module: nn.Module) -> List[nn.Parameter]:
    """The head's parameters (what training updates), in a fixed order."""
    return [p for n, p in module.named_parameters() if _is_head_tensor(n)]


def load_head_state(module: nn.Module, state: Dict[str, torch.Tensor], where: str = "head weights") -> None:
    """Copy head tensors into ``module``; names and shapes must match exactly.

    Raises:
        ValueError: names missing or unexpected, or a shape differs.
    """
    own = head_state_dict(module)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{where} do not fit the head: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                         f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}.")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"{where}: shape of {bad[0]!r} is {tuple(state[bad[0]].shape)}, "
                         f"expected {tuple(own[bad[0]].shape)}.")
    params = dict(module.named_parameters())  # head tensors are all parameters (MLP weights, LoRA A/B)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def load_head(backbone: nn.Module, config: HeadConfig, state: Dict[str, torch.Tensor],
              where: str = "head weights") -> nn.Module:
    """The backbone with a saved head, for inference: :func:`attach_head` then
    :func:`load_head_state`, except that LoRA on Linear and 1x1 Conv layers (timm ViT ``qkv``,
    ConvNeXt ``fc1``/``fc2``) is merged into their weights, ``W + (alpha / r) B A``.

    Why: peft's layers compute ``W x + (alpha / r) B A x`` (no dropout in eval), which is the
    merged layer's output up to float rounding, so inference needs no peft. The merged tensors
    are no longer head tensors: train from :func:`attach_head`, not from this module.

    Raises:
        ValueError: the tensors do not fit the head (names or shapes), as in :func:`load_head_state`.
    """
    if config.type == "mlp":
        _check_mlp_shapes(config, state, where)  # before attach_head allocates what the config asks for
        module, _ = attach_head(backbone, config)
        load_head_state(module, state, where=where)
        return module
    targets, attention, linear = _checked_targets(backbone, config)
    rest = dict(state)
    updates = [_lora_update(backbone.get_submodule(t), t, config, rest, where) for t in linear]
    if attention:
        backbone, _ = _add_lora(backbone, replace(config, targets=tuple(attention)))
        load_head_state(backbone, rest, where=where)
    elif rest:
        more = "..." if len(rest) > 4 else ""
        raise ValueError(f"{where} do not fit the head: unexpected {sorted(rest)[:4]}{more}.")
    with torch.no_grad():
        for name, update in zip(linear, updates):
            weight = backbone.get_submodule(name).weight
            weight += update.reshape(weight.shape).to(weight.dtype)
    return backbone


def _check_embedding_size(base, config: HeadConfig, where: str) -> None:
    """An MLP head's ``dim`` is the base model's embedding size, found by embedding one blank image
    (a config cannot say it for every architecture); otherwise the first distance would fail."""
    size = base.image_size
    with torch.no_grad():
        dim = base(torch.zeros(1, 3, size, size)).shape[-1]
    if config.dim != dim:
        raise ValueError(f"{where}: the head's dim is {config.dim}, but base model {base.spec.name!r} embeds "
                         f"into {dim} dimensions; the head was trained on another base model.")


def _check_mlp_shapes(config: HeadConfig, state: Dict[str, torch.Tensor], where: str) -> None:
    """The MLP tensors in ``state`` have the shapes ``config.dim`` and ``config.hidden`` ask for."""
    dim, hidden = config.dim, config.hidden
    if dim is None:
        return  # attach_head says what is missing
    shapes = {"mlp_head.fc1.weight": (hidden, dim), "mlp_head.fc1.bias": (hidden,),
              "mlp_head.fc2.weight": (dim, hidden), "mlp_head.fc2.bias": (dim,)}
    for key, shape in shapes.items():
        if key in state and tuple(state[key].shape) != shape:
            raise ValueError(f"{where}: shape of {key!r} is {tuple(state[key].shape)}, but the head's dim {dim} "
                             f"and hidden {hidden} ask for {shape}.")


def _lora_update(layer: nn.Module, name: str, config: HeadConfig, state: Dict[str, torch.Tensor],
                 where: str) -> torch.Tensor:
    """``(alpha / r) B A`` for one peft-named Linear or 1x1 Conv target, its tensors taken out of ``state``."""
    if isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1):
        raise ValueError(f"{where}: LoRA target {name!r} is a {layer.kernel_size} Conv2d; only Linear "
                         "and 1x1 Conv2d adapters can be loaded.")
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"{where}: LoRA target {name!r} is a {type(layer).__name__}, but LoRA adapts "
                        "Linear or 1x1 Conv2d layers and attention modules.")
    n_out, n_in, *kernel = layer.weight.shape  # peft's Conv2d factors are 1x1 convolutions too
    factors = []
    for part, shape in (("A", (config.r, n_in)), ("B", (n_out, config.r))):
        key = f"{name}.lora_{part}.default.weight"  # peft's names, as head_state_dict saved them
        if key not in state:
            raise ValueError(f"{where} do not fit the head: missing [{key!r}].")
        tensor = state.pop(key)
        if tuple(tensor.shape) != shape + tuple(kernel):
            expected = shape + tuple(kernel)
            raise ValueError(f"{where}: shape of {key!r} is {tuple(tensor.shape)}, expected {expected}.")
        factors.append(tensor.reshape(shape).float())
    a, b = factors
    return (config.alpha / config.r) * b @ a


def head_dropouts(module: nn.Module) -> List[nn.Module]:
    """The head's dropout modules: the trainer switches them to train mode, nothing else."""
    return [m for n, m in module.named_modules() if n.endswith("lora_dropout") or ".lora_dropout." in n]


# -- head folders -----------------------------------------------------------------------------
def base_model_reference(base_model: str) -> str:
    """How a head folder records its base model: a local folder by its absolute path, anything
    else (zoo name, ``hf-hub:`` id) as given.

    A relative path would later be resolved against the directory the head is loaded from, not
    the one it was trained in.

    Raises:
        ValueError: ``base_model`` is neither a zoo name, a Hub reference nor a folder.
    """
    return parse(base_model).local_path or base_model


def save_head_folder(folder, base_model: str, config: HeadConfig, state: Dict[str, torch.Tensor],
                     training: Optional[dict] = None, preprocessing: Optional[dict] = None) -> Path:
    """Write ``rpmetric_config.json`` and ``head.safetensors`` into ``folder``.

    Args:
        base_model: how to load the backbone (zoo name, ``hf-hub:ORG/NAME`` or a folder; a
            folder is recorded by its absolute path, see :func:`base_model_reference`).
        config: the head's settings (as returned by :func:`attach_head`).
        state: the head's tensors (:func:`head_state_dict`).
        training: what produced the weights (data, epochs, scores), for provenance.
        preprocessing: fields of :class:`~rpmetric.models.spec.Preprocessing` that differ from the base
            model's, e.g. ``{"resize_size": 224, "resize_mode": "squash"}`` for heads trained the
            DreamSim way; None keeps the base model's.
    """
    from safetensors.torch import save

    from .._version import __version__

    folder = Path(folder)
    base_model = base_model_reference(base_model)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_VERSION, "base_model": base_model, "head": config.to_dict(),
            "preprocessing": preprocessing or {}, "training": training or {}, "rpmetric_version": __version__}
    # Serialised in memory (a head is small) and written atomically, with the umask's mode:
    # safetensors' own save_file replaces the file in place, and with mode 0600.
    data = save({k: v.contiguous().cpu() for k, v in state.items()})
    atomic_write(folder / WEIGHTS_NAME, lambda f: f.write(data))
    # The config last (and atomically): a folder with a config always has its weights.
    write_json(folder / CONFIG_NAME, meta)
    return folder


def wrap_encoder(base: Encoder, head: HeadFiles) -> Encoder:
    """The base model's encoder with a trained head (the last step of
    :func:`rpmetric.models.load_encoder`).

    Args:
        base: the encoder of the head's base model, as built from ``hub.resolve``'s files.
        head: the head's files and checked config (:class:`rpmetric.models.hub.HeadFiles`).
    """
    from .backbones.weights import read_safetensors

    config, where = head.config, head.where
    if config.type == "mlp":
        _check_embedding_size(base, config, where)
    try:
        preprocessing = replace(base.spec.preprocessing, **head.preprocessing)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: 'preprocessing': {err}") from None
    module = load_head(base.backbone, config, read_safetensors(head.weights), where=str(head.weights))
    headed_spec = replace(head.spec, preprocessing=preprocessing, architecture=base.spec.architecture,
                          training=base.spec.training, notes=f"{config.type} head on {head.meta['base_model']}")
    return Encoder(module, headed_spec, resize=base.resize)

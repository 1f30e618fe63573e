"""EdgeQAT token-importance-aware activation bits.

Each self-attention layer scores its tokens and marks the lowest ``token_ratio`` (default 0.5) as
low-importance. Activations of those tokens are quantized with ``low_act_bits`` (default 4) by a quantizer with
its own learned scale; the other tokens keep ``act_bits``.

Which score (``QuantConfig.importance``), always over the N tokens of a square (N, N) attention map:

* ``first``: attention each token receives from the first token (the CLS token of a ViT), summed over heads, as in
  EdgeQAT;
* ``mean``: attention each token receives averaged over all query rows, summed over heads. Used by ``auto`` for
  models without a CLS token (FMViT, and ``tiny_llama``, whose causal first row sees only itself: ``first`` is
  refused on causal attention);
* ``auto``: ``first`` if the model has a ``cls_token`` attribute, else ``mean``.

Which tensors: only quant points that a block declares token-major in :data:`TOKEN_LAYOUTS` (the tensor's token
axis is named there, never guessed from its shape): the (B, N, C) attention input and output-projection input,
the (B, heads, N, hd) Q/K/V of full self-attention and the (B, N, C) MLP input and hidden activations. Conv
feature maps (FMViT's gMLP, RLMHSA's NCHW input) and RLMHSA's pooled K/V are never token-adaptive.

When: the mask made by layer ``l`` (at its softmax) is used by every declared point that runs after it: layer
``l``'s ``proj_in_quant`` and MLP, then layer ``l+1``'s input, Q, K and V. That is EdgeQAT's set (V and MLP of the
layer, input/Q/K of the next) except that V uses the previous layer's scores, because
:class:`edgeattn.blocks.Attention` quantizes V before the attention map exists. The first layer's input/Q/K/V run
at full ``act_bits`` (no scores yet). The mask is dropped (full bits until the next square map) when:

* an attention map is not square: RLMHSA with pooled keys gives (B, H, N, M) maps whose columns are M pooled
  windows, not the N tokens, so EdgeQAT's "attention a token receives" is not defined there. The project does not
  invent a per-token score for it; the previous layer's set is stale after such a layer and is cleared;
* a declared point sees another token count than the mask's (a new stage / resolution: a mask never crosses it).

So in FMViT only stages whose RLMHSA does not pool (``sr_ratio`` 1, e.g. stage 4) get low-bit tokens.

Token-adaptive bits are a QAT/simulation feature: :func:`strip_token_adaptive` turns each adaptive point back into
its high-bit ``QuantIdentity`` for export (no runtime here has per-token mixed-precision kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from brevitas import nn as qnn
from edgeattn.quant import presets
from edgeattn.quant.config import QuantConfig
from torch import nn

from edgeattn.blocks.attention import Attention, Mlp
from edgeattn.blocks.fmvit import RLMHSA
from edgeattn.blocks.llama import LlamaAttention, SwiGLU
from edgeattn.errors import EdgeAttnError


@dataclass(frozen=True)
class TokenLayout:
    """What a block declares to token-adaptive bits.

    ``points``: quant point -> the token axis of its tensor (1 for (B, N, C), 2 for (B, heads, N, hd)); points not
    listed (conv maps, pooled K/V, the softmax output) are never token-adaptive. ``attention``: the block's
    ``softmax`` child makes the token scores. ``causal``: its attention is causally masked.
    """

    points: dict[str, int] = field(default_factory=dict)
    attention: bool = False
    causal: bool = False


_SELF_ATTENTION_POINTS = {"in_quant": 1, "q_quant": 2, "k_quant": 2, "v_quant": 2, "proj_in_quant": 1}
_MLP_POINTS = {"in_quant": 1, "hidden_quant": 1}

# Declared here, on behalf of the project's blocks (matched with isinstance, first match wins).
TOKEN_LAYOUTS: dict[type[nn.Module], TokenLayout] = {
    Attention: TokenLayout(_SELF_ATTENTION_POINTS, attention=True),
    LlamaAttention: TokenLayout(_SELF_ATTENTION_POINTS, attention=True, causal=True),
    # input is an NCHW map, K/V come from pooled windows: only Q and the projection input are per token
    RLMHSA: TokenLayout({"q_quant": 2, "proj_in_quant": 1}, attention=True),
    Mlp: TokenLayout(_MLP_POINTS),
    SwiGLU: TokenLayout(_MLP_POINTS),
}


def token_layout(block: nn.Module) -> TokenLayout | None:
    """The :class:`TokenLayout` declared for ``block``'s class, or ``None``."""
    for cls, layout in TOKEN_LAYOUTS.items():
        if isinstance(block, cls):
            return layout
    return None


class TokenController:
    """Holds the current low-importance token mask while a model runs forward."""

    def __init__(self, ratio: float, importance: str) -> None:
        self.ratio = ratio
        self.importance = importance
        self.mask: torch.Tensor | None = None  # (B, N) bool, True = low-importance token

    def reset(self) -> None:
        self.mask = None

    def update(self, attn: torch.Tensor) -> None:
        """New mask from a square self-attention map (B, H, N, N); any other map clears the mask."""
        if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
            self.reset()  # pooled keys: no per-token score, and the previous layer's set is stale
            return
        attn = attn.detach()
        # "first": attention received from token 0; "mean": averaged over every query row
        score = attn[:, :, 0, :].sum(dim=1) if self.importance == "first" else attn.mean(dim=2).sum(dim=1)
        self.mask = low_importance_mask(score, self.ratio)

    def mask_for(self, x: torch.Tensor, token_dim: int) -> torch.Tensor | None:
        """The mask if ``x`` carries the mask's tokens on ``token_dim``; on another token count (a new stage or
        resolution) the mask is dropped for good, so it never crosses into the next stage."""
        mask = self.mask
        if mask is None:
            return None
        if x.dim() <= token_dim or x.shape[0] != mask.shape[0] or x.shape[token_dim] != mask.shape[1]:
            self.reset()
            return None
        return mask


def low_importance_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N) bool mask of the ``floor(ratio * N)`` lowest-scoring tokens per row (ties: lower position)."""
    b, n = score.shape
    k = int(ratio * n)
    mask = torch.zeros(b, n, dtype=torch.bool, device=score.device)
    if k > 0:
        idx = torch.argsort(score, dim=1, stable=True)[:, :k]
        mask.scatter_(1, idx, True)
    return mask


class TokenAdaptiveQuant(nn.Module):
    """A quant point with two quantizers: ``high`` for important tokens, ``low`` for the rest.

    ``token_dim`` is the token axis its block declared (1: (B, N, C), 2: (B, heads, N, hd)). Each quantizer sees
    (and, during calibration, collects statistics on) only its own tokens, so each has its own scale. Without a
    current mask everything goes through ``high``.
    """

    def __init__(self, high: nn.Module, low: nn.Module, controller: TokenController, token_dim: int) -> None:
        super().__init__()
        self.high = high
        self.low = low
        self.token_dim = token_dim
        # a plain attribute, not a submodule: shared by all points of one model
        object.__setattr__(self, "controller", controller)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.controller.mask_for(x, self.token_dim)
        if mask is None or not bool(mask.any()):
            return self.high(x)
        tdim = self.token_dim
        xt = x.movedim(tdim, 1)  # (B, N, ...): (B, H, N, hd) becomes (B, N, H, hd)
        out = torch.empty_like(xt)
        out[mask] = self.low(xt[mask])
        out[~mask] = self.high(xt[~mask])
        return out.movedim(1, tdim)

    def extra_repr(self) -> str:
        return f"token_dim={self.token_dim}"


def _has_cls(model: nn.Module) -> bool:
    return getattr(model, "cls_token", None) is not None


def token_importance(model: nn.Module, config: QuantConfig) -> str:
    """The importance score token-adaptive bits will use on ``model`` (float or quantized: the blocks are the
    same): ``config.importance`` with ``auto`` resolved. Raises :class:`EdgeAttnError` for ``first`` on causal
    attention, where the first token's row sees only itself (the trainer checks this before any work)."""
    importance = config.importance
    if importance == "auto":
        importance = "first" if _has_cls(model) else "mean"
    causal = [name for name, block in model.named_modules() if (lay := token_layout(block)) and lay.attention
              and lay.causal]  # fmt: skip
    if importance == "first" and causal:
        raise EdgeAttnError(
            f"token-adaptive importance 'first' is undefined for causal attention ('{causal[0]}': the first "
            "token's row sees only itself); use 'mean' or 'auto'"
        )
    return importance


def enable_token_adaptive(model: nn.Module, config: QuantConfig) -> TokenController:
    """Turn the quantized model's declared token-major quant points into :class:`TokenAdaptiveQuant` (in place)
    and hook every declared attention softmax to update the shared mask. Returns the controller
    (``model.token_controller``)."""
    importance = token_importance(model, config)
    blocks = [(name, block, layout) for name, block in model.named_modules() if (layout := token_layout(block))]
    controller = TokenController(config.token_ratio, importance)
    for _name, block, layout in blocks:
        for point, tdim in layout.points.items():
            module = getattr(block, point, None)
            if isinstance(module, qnn.QuantIdentity):
                low = qnn.QuantIdentity(
                    act_quant=presets.act_quant(config, config.low_act_bits), return_quant_tensor=False
                )
                setattr(block, point, TokenAdaptiveQuant(module, low, controller, tdim))
        softmax = getattr(block, "softmax", None)
        if layout.attention and isinstance(softmax, nn.Module):
            softmax.register_forward_hook(_ScoreHook(controller))
    model.register_forward_pre_hook(_ResetHook(controller))
    object.__setattr__(model, "token_controller", controller)
    return controller


class _ScoreHook:
    """Forward hook on an attention softmax: new token mask from its output.

    A callable object rather than a closure so that ``copy.deepcopy(model)`` gives the copy's hooks the copy's
    controller (the same object its :class:`TokenAdaptiveQuant` points share)."""

    def __init__(self, controller: TokenController) -> None:
        self.controller = controller

    def __call__(self, _module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        self.controller.update(output)


class _ResetHook:
    """Forward pre-hook on the model: no mask at the start of a forward pass."""

    def __init__(self, controller: TokenController) -> None:
        self.controller = controller

    def __call__(self, _module: nn.Module, _args: Any) -> None:
        self.controller.reset()


def strip_token_adaptive(model: nn.Module) -> nn.Module:
    """Replace every :class:`TokenAdaptiveQuant` by its high-bit quantizer (in place), e.g. before export."""
    swaps = [(n, m.high) for n, m in model.named_modules() if isinstance(m, TokenAdaptiveQuant)]
    for name, high in swaps:
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, high)
    return model

"""EdgeQAT token-importance-aware activation bits.

Each self-attention layer scores its tokens and marks the lowest ``token_ratio`` (default 0.5) as
low-importance. Activations of those tokens are quantized with ``low_act_bits`` (default 4) by a quantizer with
its own learned scale; the other tokens keep ``act_bits``.

Which score (``QuantConfig.importance``), always over the N tokens that feed the attention (its keys and values):

* ``first``: attention each token receives from the first token (the CLS token of a ViT), summed over heads, as in
  EdgeQAT;
* ``mean``: attention each token receives averaged over all query rows, summed over heads. Used by ``auto`` for
  models without a CLS token (FMViT, and ``tiny_llama``, whose causal first row sees only itself: ``first`` is
  refused on causal attention);
* ``auto``: ``first`` if the model has a ``cls_token`` attribute, else ``mean``.

Pooled keys (FMViT's RLMHSA): the (B, H, N, M) map's columns are M average-pooled r x r windows, not tokens. The
attention each of the N tokens receives is still exact, because K and V are linear in the pooled tokens and a
window's mean gives each of its r^2 tokens weight 1 / r^2: query i's output is
``sum_j (A[i, m(j)] / r^2) (W_v x_j) + b_v``, with ``m(j)`` the window of token j (rows of an attention map sum to
1). So token j receives ``A[i, m(j)] / r^2`` from query i, and 0 if average pooling's floor leaves it out of every
window (:func:`received_attention`; in float, before the quantizers). Tokens of one window share a score.

Which tensors: only quant points that a block declares token-major in :data:`TOKEN_LAYOUTS` (the tensor's token
axis is named there, never guessed from its shape): the (B, N, C) attention input and output-projection input,
the (B, heads, N, hd) Q/K/V of full self-attention, RLMHSA's Q and projection input, and the (B, N, C) MLP input
and hidden activations. Conv feature maps (FMViT's gMLP, RLMHSA's NCHW input) and RLMHSA's pooled K/V (windows,
not tokens) are never token-adaptive.

When: the mask made by layer ``l`` (at its softmax) is used by every declared point that runs after it: layer
``l``'s ``proj_in_quant`` and MLP, then layer ``l+1``'s input, Q, K and V. That is EdgeQAT's set (V and MLP of the
layer, input/Q/K of the next) except that V uses the previous layer's scores, because
:class:`edgeattn.blocks.Attention` quantizes V before the attention map exists. The first layer's input/Q/K/V run
at full ``act_bits`` (no scores yet). The mask is dropped (full bits until the next attention map) when:

* a non-square map comes from a block that does not declare pooled keys (its columns are not known to be tokens);
  the previous layer's set is stale after such a layer and is cleared;
* a declared point sees another token count than the mask's (a new stage / resolution: a mask never crosses it).

So in ``fmvit_t`` at 32 px the four pooled stage-3 layers (16 tokens, 4 windows) and the stage-4 layer (4 tokens)
make masks; each stage's first Q runs at full bits.

Token-adaptive bits are a QAT/simulation feature: :func:`strip_token_adaptive` turns each adaptive point back into
its high-bit ``QuantIdentity`` and removes the scoring hooks, for export (no runtime here has per-token
mixed-precision kernels); ``edgeattn export`` and ``edgeattn hls`` do it themselves.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from brevitas import nn as qnn
from edgeattn.quant import presets
from edgeattn.quant.config import QuantConfig
from edgeattn.quant.quantize import float_home, follow_home_on_load, quant_identity
from torch import nn
from torch.utils.hooks import RemovableHandle

from edgeattn.blocks.attention import Attention, Mlp
from edgeattn.blocks.fmvit import RLMHSA
from edgeattn.blocks.llama import LlamaAttention, SwiGLU
from edgeattn.errors import EdgeAttnError


@dataclass(frozen=True)
class TokenLayout:
    """What a block declares to token-adaptive bits.

    ``points``: quant point -> the token axis of its tensor (1 for (B, N, C), 2 for (B, heads, N, hd)); points not
    listed (conv maps, pooled K/V, the softmax output) are never token-adaptive. ``attention``: the block's
    ``softmax`` child makes the token scores. ``causal``: its attention is causally masked. ``pooled_keys``: its
    keys and values come from average-pooled windows of its (B, C, H, W) input, with the window given by the
    block's ``pool_ratio(h, w)`` (scores are un-pooled, see the module docstring).
    """

    points: dict[str, int] = field(default_factory=dict)
    attention: bool = False
    causal: bool = False
    pooled_keys: bool = False


_SELF_ATTENTION_POINTS = {"in_quant": 1, "q_quant": 2, "k_quant": 2, "v_quant": 2, "proj_in_quant": 1}
_MLP_POINTS = {"in_quant": 1, "hidden_quant": 1}

# Declared here, on behalf of the project's blocks (matched with isinstance, first match wins).
TOKEN_LAYOUTS: dict[type[nn.Module], TokenLayout] = {
    Attention: TokenLayout(_SELF_ATTENTION_POINTS, attention=True),
    LlamaAttention: TokenLayout(_SELF_ATTENTION_POINTS, attention=True, causal=True),
    # input is an NCHW map, K/V come from pooled windows: only Q and the projection input are per token
    RLMHSA: TokenLayout({"q_quant": 2, "proj_in_quant": 1}, attention=True, pooled_keys=True),
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
        _check_importance(importance)
        self.ratio = ratio
        self.importance = importance
        self.mask: torch.Tensor | None = None  # (B, N) bool, True = low-importance token
        self.hooks: list[RemovableHandle] = []  # the scoring hooks, removed by strip_token_adaptive

    def reset(self) -> None:
        self.mask = None

    def update(self, attn: torch.Tensor, grid: tuple[int, int, int] | None = None) -> None:
        """New mask from a self-attention map (B, H, N, M): square, or over pooled keys with ``grid`` = (h, w, r)
        (see :func:`received_attention`). A map whose columns are not known to be tokens clears the mask: the
        previous layer's set is stale after it."""
        score = received_attention(attn.detach(), self.importance, grid) if attn.dim() == 4 else None
        if score is None:
            self.reset()
            return
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


def received_attention(
    attn: torch.Tensor, importance: str, grid: tuple[int, int, int] | None = None
) -> torch.Tensor | None:
    """(B, N) attention each of the N tokens receives, summed over heads: from the first query row
    (``importance`` 'first') or averaged over all query rows ('mean').

    ``attn`` is (B, H, N, N), or (B, H, N, M) over keys average-pooled from an ``h`` x ``w`` token map in ``r`` x
    ``r`` windows (``grid`` = (h, w, r), M = (h // r) * (w // r), tokens and windows row-major): then token j gets
    its window's column divided by r^2, and tokens outside every window get 0. ``None`` when the columns are not
    tokens (no ``grid``, or one that does not fit the map).
    """
    _check_importance(importance)
    b, _heads, n, m = attn.shape
    # per column: attention from token 0 ("first") or averaged over every query row ("mean")
    col = attn[:, :, 0, :].sum(dim=1) if importance == "first" else attn.mean(dim=2).sum(dim=1)
    if m == n:
        return col
    if grid is None:
        return None
    h, w, r = grid
    if n != h * w or m != (h // r) * (w // r):
        return None
    windows = col.reshape(b, h // r, w // r)
    per_token = windows.repeat_interleave(r, dim=1).repeat_interleave(r, dim=2) / (r * r)
    # rows/columns that avg_pool2d's floor leaves out of every window receive nothing
    per_token = F.pad(per_token, (0, w - per_token.shape[2], 0, h - per_token.shape[1]))
    return per_token.reshape(b, n)


def _check_importance(importance: str) -> None:
    """'first' or 'mean' (QuantConfig's 'auto' is resolved to one of them by :func:`token_importance`)."""
    if importance not in ("first", "mean"):
        raise ValueError(
            f"importance must be 'first' or 'mean', got {importance!r} (resolve 'auto' with token_importance)"
        )


def low_importance_mask(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N) bool mask of the ``floor(ratio * N)`` lowest-scoring tokens per row (ties: lower position)."""
    b, n = score.shape
    k = math.floor(ratio * n + 1e-9)  # 0.29 * 100 is 28.999999999999996 in floating point: still 29 tokens
    mask = torch.zeros(b, n, dtype=torch.bool, device=score.device)
    if k > 0:
        idx = torch.argsort(score, dim=1, stable=True)[:, :k]
        # out of place (tracing exporters have no in-place scatter_), with a tensor source (jit.trace has no
        # aten::scatter overload for a Python bool)
        mask = mask.scatter(1, idx, torch.ones_like(idx, dtype=torch.bool))
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
    scorers = [b for _, b, lay in blocks if lay.attention and isinstance(getattr(b, "softmax", None), nn.Module)]
    if not scorers:
        warnings.warn(
            "token_adaptive: the model has no edgeattn attention block (Attention, LlamaAttention, RLMHSA) to score "
            f"its tokens, so every token runs at act_bits ({config.act_bits}); low_act_bits is never used",
            stacklevel=3,
        )
    for _name, block, layout in blocks:
        for point, tdim in layout.points.items():
            module = getattr(block, point, None)
            if isinstance(module, qnn.QuantIdentity):
                home = float_home(module) or float_home(block)  # built as float32 on the CPU: follow the point
                low = quant_identity(presets.act_quant(config, config.low_act_bits), home)
                setattr(block, point, TokenAdaptiveQuant(module, low, controller, tdim))
        softmax = getattr(block, "softmax", None)
        if layout.attention and isinstance(softmax, nn.Module):
            score_hook = _ScoreHook(controller)
            controller.hooks.append(softmax.register_forward_hook(score_hook))
            if layout.pooled_keys:
                controller.hooks.append(block.register_forward_pre_hook(_GridHook(score_hook)))
    controller.hooks.append(model.register_forward_pre_hook(_ResetHook(controller)))
    object.__setattr__(model, "token_controller", controller)
    follow_home_on_load(model)  # the new low-bit points
    return controller


class _ScoreHook:
    """Forward hook on an attention softmax: new token mask from its output.

    A callable object rather than a closure so that ``copy.deepcopy(model)`` gives the copy's hooks the copy's
    controller (the same object its :class:`TokenAdaptiveQuant` points share)."""

    def __init__(self, controller: TokenController) -> None:
        self.controller = controller
        self.grid: tuple[int, int, int] | None = None  # set by the block's _GridHook when its keys are pooled

    def __call__(self, _module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        self.controller.update(output, self.grid)


class _GridHook:
    """Forward pre-hook on a block with pooled keys: records its token grid (h, w, r) for the block's score hook."""

    def __init__(self, score_hook: _ScoreHook) -> None:
        self.score_hook = score_hook

    def __call__(self, block: nn.Module, args: Any) -> None:
        h, w = args[0].shape[-2:]
        self.score_hook.grid = (h, w, block.pool_ratio(h, w))


class _ResetHook:
    """Forward pre-hook on the model: no mask at the start of a forward pass."""

    def __init__(self, controller: TokenController) -> None:
        self.controller = controller

    def __call__(self, _module: nn.Module, _args: Any) -> None:
        self.controller.reset()


# Recorded by token-adaptive checkpoints and QAT state files: the scoring their low-bit quantizers were calibrated
# and trained under. Files written before it scored no pooled-key map, so in them the low-bit quantizers of pooled
# RLMHSA layers never saw a token (their scales are the untouched initial ones).
TOKEN_SCORES = "pooled-keys"


def check_token_scores(model: nn.Module, recorded: Any, source: str) -> None:
    """Refuse a token-adaptive file (``source``, for the message) that records another scoring than
    :data:`TOKEN_SCORES` when ``model`` (float or quantized: the blocks are the same) has pooled-key attention: the
    file's low-bit quantizers there were never calibrated or trained, and would now receive tokens. Files of other
    models behave as they always did and pass."""
    if recorded == TOKEN_SCORES:
        return
    pooled = [
        name
        for name, block in model.named_modules()
        if (layout := token_layout(block)) and layout.pooled_keys and getattr(block, "sr_ratio", 1) > 1
    ]
    if pooled:
        raise EdgeAttnError(
            f"{source} was written before token-adaptive bits scored pooled-key attention: the low-bit quantizers "
            f"of '{pooled[0]}' ({len(pooled)} such layers) were never calibrated or trained; rerun QAT with --force "
            "(export and hls strip token-adaptive bits and still take the file)"
        )


def has_token_adaptive(model: nn.Module) -> bool:
    """Whether ``model`` has token-adaptive quant points (:func:`enable_token_adaptive`)."""
    return any(isinstance(m, TokenAdaptiveQuant) for m in model.modules())


def strip_token_adaptive(model: nn.Module) -> nn.Module:
    """Replace every :class:`TokenAdaptiveQuant` by its high-bit quantizer and remove the scoring hooks and
    ``model.token_controller`` (in place), e.g. before export: every token then runs at ``act_bits``."""
    swaps = [(n, m.high) for n, m in model.named_modules() if isinstance(m, TokenAdaptiveQuant)]
    for name, high in swaps:
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, high)
    controller = model.__dict__.pop("token_controller", None)
    if controller is not None:
        for handle in controller.hooks:
            handle.remove()
        controller.hooks.clear()
        controller.reset()
    config = getattr(model, "quant_config", None)
    if swaps and getattr(config, "token_adaptive", False):
        # what save_checkpoint records: a stripped model rebuilt token-adaptive would not match its own weights
        model.quant_config = config.model_copy(update={"token_adaptive": False})
    return model

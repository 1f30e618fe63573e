"""EdgeQAT token-importance-aware activation bits.

Each attention layer scores its tokens by the attention they receive and marks the lowest ``token_ratio`` (default
0.5) as low-importance. Activations of those tokens are quantized with ``low_act_bits`` (default 4) by a quantizer
with its own learned scale; the other tokens keep ``act_bits``.

Which score (``QuantConfig.importance``):

* ``first``: attention each token receives from the first token (the CLS token of a ViT), summed over heads, as in
  EdgeQAT;
* ``mean``: attention each token receives averaged over all query rows, summed over heads. Used by ``auto`` for
  models without a CLS token (FMViT/RLMHSA stages, and ``tiny_llama``, whose causal first row sees only itself);
* ``auto``: ``first`` if the model has a ``cls_token`` attribute, else ``mean``.

Which activations use a layer's token set: the forward order of ``edgeattn.blocks.Attention`` quantizes V *before*
the attention map exists, so the mask made by layer ``l`` (at its softmax) is used by every adaptive quant point
that runs after it: layer ``l``'s ``proj_in_quant`` and MLP (``in_quant``, ``hidden_quant``), then layer ``l+1``'s
input, Q, K and V. That is EdgeQAT's set (V and MLP of the layer, input/Q/K of the next) except that V uses the
previous layer's scores. The first layer's input/Q/K/V run at full ``act_bits`` (no scores exist yet). A quant point
whose tensor does not have the scored token count (e.g. pooled K/V of RLMHSA) stays at ``act_bits``.

Token-adaptive bits are a QAT/simulation feature: :func:`strip_token_adaptive` turns each adaptive point back into
its high-bit ``QuantIdentity`` for export (no runtime here has per-token mixed-precision kernels).
"""

from __future__ import annotations

from typing import Any

import torch
from brevitas import nn as qnn
from edgeattn.quant import presets
from edgeattn.quant.config import QuantConfig
from torch import nn

# quant points that take the token-adaptive treatment (attn_quant and logits are (B, H, N, N) maps, not
# tokens)
ADAPTIVE_POINTS = ("in_quant", "q_quant", "k_quant", "v_quant", "proj_in_quant", "hidden_quant")


class TokenController:
    """Holds the current low-importance token mask while a model runs forward."""

    def __init__(self, ratio: float, importance: str) -> None:
        self.ratio = ratio
        self.importance = importance
        self.mask: torch.Tensor | None = None  # (B, N) bool, True = low-importance token

    def reset(self) -> None:
        self.mask = None

    def update(self, attn: torch.Tensor) -> None:
        """Score tokens from an attention map (B, H, Nq, Nk) and store the new mask."""
        attn = attn.detach()
        # "first": attention received from token 0; "mean": averaged over every query row
        score = attn[:, :, 0, :].sum(dim=1) if self.importance == "first" else attn.mean(dim=2).sum(dim=1)
        self.mask = low_importance_mask(score, self.ratio)


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

    Each quantizer sees (and, during calibration, collects statistics on) only its own tokens, so each has its own
    scale. Without a mask (first layer, or shape mismatch) everything goes through ``high``.
    """

    def __init__(self, high: nn.Module, low: nn.Module, controller: TokenController) -> None:
        super().__init__()
        self.high = high
        self.low = low
        # a plain attribute, not a submodule: shared by all points of one model
        object.__setattr__(self, "controller", controller)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.controller.mask
        tdim = _token_dim(x, mask)
        if mask is None or tdim is None or not bool(mask.any()):
            return self.high(x)
        xt = x.movedim(tdim, 1) if tdim != 1 else x  # (B, N, ...): (B, H, N, hd) becomes (B, N, H, hd)
        out = torch.empty_like(xt)
        out[mask] = self.low(xt[mask])
        out[~mask] = self.high(xt[~mask])
        return out.movedim(1, tdim) if tdim != 1 else out


def _token_dim(x: torch.Tensor, mask: torch.Tensor | None) -> int | None:
    if mask is None:
        return None
    b, n = mask.shape
    if x.dim() == 3 and x.shape[0] == b and x.shape[1] == n:
        return 1
    if x.dim() == 4 and x.shape[0] == b and x.shape[2] == n:
        return 2
    return None


def _has_cls(model: nn.Module) -> bool:
    return getattr(model, "cls_token", None) is not None


def enable_token_adaptive(model: nn.Module, config: QuantConfig) -> TokenController:
    """Turn the quantized model's adaptive quant points into :class:`TokenAdaptiveQuant` (in place) and hook
    every attention softmax to update the shared mask. Returns the controller (``model.token_controller``)."""
    importance = config.importance
    if importance == "auto":
        importance = "first" if _has_cls(model) else "mean"
    controller = TokenController(config.token_ratio, importance)
    swaps: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ADAPTIVE_POINTS and isinstance(module, qnn.QuantIdentity):
            low = qnn.QuantIdentity(act_quant=presets.act_quant(config, config.low_act_bits), return_quant_tensor=False)
            swaps.append((name, TokenAdaptiveQuant(module, low, controller)))
    for name, new in swaps:
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "softmax" and _is_attention_parent(model, name):
            module.register_forward_hook(_ScoreHook(controller))
    model.register_forward_pre_hook(_ResetHook(controller))
    object.__setattr__(model, "token_controller", controller)
    return controller


def _is_attention_parent(model: nn.Module, name: str) -> bool:
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    return hasattr(parent, "attn_quant") or hasattr(parent, "logits_probe")


class _ScoreHook:
    """Forward hook on an attention softmax: new token mask from its output.

    A callable object rather than a closure so that ``copy.deepcopy(model)`` gives the copy's hooks the copy's
    controller (the same object its :class:`TokenAdaptiveQuant` points share)."""

    def __init__(self, controller: TokenController) -> None:
        self.controller = controller

    def __call__(self, _module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        if output.dim() == 4:
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

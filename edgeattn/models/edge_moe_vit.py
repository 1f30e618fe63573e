"""``edge_moe_vit``: a tiny multi-task ViT whose MLPs are mixture-of-experts layers (Edge-MoE / M3ViT style).

The float reference for the FPGA accelerator in :mod:`edgeattn.fpga_hls`: plain pre-norm ViT blocks (the
same ``norm1``/``attn``/``norm2``/``mlp`` layout as ``vit_tiny``) where every other block's MLP is a
:class:`MoEMlp`: ``E`` experts (each an :class:`edgeattn.blocks.Mlp`) and one linear gate per task; each
token goes to the ``top_k`` experts with the largest gate logits and their outputs are mixed with a softmax
over those ``top_k`` logits. Tasks share the backbone and experts and own their gate and classifier head
(``model.set_task(t)`` picks one).
"""

from __future__ import annotations

import torch
from torch import nn

from edgeattn.blocks.attention import Mlp
from edgeattn.blocks.rep import check_input, param_dtype
from edgeattn.models._checks import check_positive_int
from edgeattn.models.registry import register_model
from edgeattn.models.vit import VisionTransformer

__all__ = ["MoEMlp", "EdgeMoEViT", "edge_moe_vit"]


class MoEMlp(nn.Module):
    """Top-k gated mixture of ``num_experts`` MLPs with one gate per task.

    Args:
        dim: token width (input and output).
        hidden: hidden width of each expert.
        num_experts: number of experts E.
        top_k: experts per token (1 <= top_k <= E).
        num_tasks: number of task-specific gates.
        gelu: ``edgeattn.approx`` GELU method used inside the experts.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        num_experts: int = 4,
        top_k: int = 2,
        num_tasks: int = 1,
        gelu: str = "exact",
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"MoEMlp: top_k={top_k} must be between 1 and num_experts={num_experts}")
        if num_tasks < 1:
            raise ValueError(f"MoEMlp: num_tasks must be >= 1, got {num_tasks}")
        self.dim, self.num_experts = dim, num_experts
        self.top_k = top_k
        self.task = 0
        self.experts = nn.ModuleList(Mlp(dim, hidden, gelu=gelu) for _ in range(num_experts))
        self.gates = nn.ModuleList(nn.Linear(dim, num_experts) for _ in range(num_tasks))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_experts={self.num_experts}, top_k={self.top_k}, task={self.task}"

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., E) mixing weights: softmax over the top-k gate logits, 0 elsewhere."""
        logits = self.gates[self.task](x)
        top_val, top_idx = logits.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(logits)
        return weights.scatter(-1, top_idx, torch.softmax(top_val, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim). Every expert runs (static graph); unselected ones weigh 0."""
        check_input("MoEMlp", x, ("...", self.dim), dtype=param_dtype(self))
        weights = self.gate_weights(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + weights[..., e : e + 1] * expert(x)
        return out


class EdgeMoEViT(VisionTransformer):
    """Multi-task ViT: shared embedding, blocks and experts; per task one gate per MoE layer and a head."""

    _arg_owner = "edge_moe_vit"
    model_name = "edge_moe_vit"

    def __init__(
        self,
        num_experts: int = 4,
        top_k: int = 2,
        num_tasks: int = 1,
        moe_every: int = 2,
        **vit_kwargs,
    ) -> None:
        check_positive_int(
            "edge_moe_vit", num_experts=num_experts, top_k=top_k, num_tasks=num_tasks, moe_every=moe_every
        )
        super().__init__(**vit_kwargs)
        if moe_every > len(self.blocks):  # no block would get the MoE layer: a plain ViT under this name
            raise ValueError(
                f"edge_moe_vit: moe_every={moe_every} leaves no MoE layer in {len(self.blocks)} blocks; "
                f"use 1..{len(self.blocks)}"
            )
        dim = self.head.in_features
        gelu = vit_kwargs.get("gelu", "exact")
        self.num_tasks = num_tasks
        for i, block in enumerate(self.blocks):
            if i % moe_every == moe_every - 1:  # M3ViT places MoE in every other block, starting with the 2nd
                hidden = block.mlp.fc1.out_features
                block.mlp = MoEMlp(dim, hidden, num_experts, top_k, num_tasks, gelu=gelu)
        self.heads = nn.ModuleList(
            [self.head] + [nn.Linear(dim, self.num_classes) for _ in range(num_tasks - 1)]
        )
        self.task = 0

    def set_task(self, task: int) -> None:
        """Select the task whose gates and classifier head are used.

        A run-time setting, like ``train()``/``eval()``: it is not in the state dict (every task's gates and head
        are), so call it again after loading weights into a fresh model. ``head`` is ``heads[task]``, so the state
        dict holds the selected head twice (``head.*`` and ``heads.N.*``, one storage)."""
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"edge_moe_vit: task must be in [0, {self.num_tasks}), got {task}")
        self.task = task
        self.head = self.heads[task]
        for module in self.modules():
            if isinstance(module, MoEMlp):
                module.task = task


@register_model
def edge_moe_vit(
    num_classes: int = 10,
    in_chans: int = 3,
    img_size: int = 32,
    patch_size: int = 4,
    embed_dim: int = 192,
    depth: int = 4,
    num_heads: int = 3,
    mlp_ratio: float = 4.0,
    num_experts: int = 4,
    top_k: int = 2,
    num_tasks: int = 1,
    moe_every: int = 2,
    softmax: str = "exact",
    gelu: str = "exact",
) -> EdgeMoEViT:
    """Tiny multi-task MoE ViT (defaults: 32x32 input, patch 4 -> 65 tokens, width 192, 3 heads, depth 4,
    MoE with 4 experts / top-2 in blocks 1 and 3)."""
    return EdgeMoEViT(
        num_experts=num_experts,
        top_k=top_k,
        num_tasks=num_tasks,
        moe_every=moe_every,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        softmax=softmax,
        gelu=gelu,
    )

"""``tiny_llama``: a small byte-level LLaMA-style decoder LM (RMSNorm, RoPE, SwiGLU, causal attention)."""

from __future__ import annotations

import torch
from torch import nn

from edgeattn.blocks.llama import LlamaBlock, RMSNorm
from edgeattn.blocks.rep import format_shape, static_shape
from edgeattn.models._checks import check_positive_int
from edgeattn.models.registry import register_model

__all__ = ["TinyLlama", "tiny_llama"]


class TinyLlama(nn.Module):
    """Decoder LM mapping token ids (B, T) with T <= seq_len to logits (B, T, vocab_size).

    Embedding and ``lm_head`` are separate (untied) and carry no quant points: EdgeQAT leaves them in float.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        seq_len: int = 128,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        hidden_dim: int | None = None,
        softmax: str = "exact",
    ) -> None:
        super().__init__()
        check_positive_int(
            "tiny_llama", vocab_size=vocab_size, seq_len=seq_len, dim=dim, depth=depth, num_heads=num_heads
        )
        if hidden_dim is not None:
            check_positive_int("tiny_llama", hidden_dim=hidden_dim)
        if dim % num_heads:
            raise ValueError(f"tiny_llama: dim={dim} must be divisible by num_heads={num_heads}")
        # LLaMA's SwiGLU width: 2/3 of 4*dim, rounded up to a multiple of 32.
        hidden_dim = hidden_dim or 32 * -(-(8 * dim // 3) // 32)
        self.vocab_size, self.seq_len, self.dim = vocab_size, seq_len, dim
        self.input_size = (seq_len,)
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.Sequential(
            *[LlamaBlock(dim, num_heads, hidden_dim, seq_len, softmax=softmax) for _ in range(depth)]
        )
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T), int64 or int32, T <= seq_len -> logits (B, T, vocab_size)."""
        self._check_ids(ids)
        return self.lm_head(self.norm(self.blocks(self.embed(ids))))

    def _check_ids(self, ids: object) -> None:
        # dtype, rank and T are static in export (only the batch axis is dynamic); the id values are data, so they
        # are checked in eager runs only, never while a graph is traced, exported or compiled
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"tiny_llama expects token ids as a torch.Tensor, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tiny_llama expects int64 or int32 token ids, got {ids.dtype}")
        shape = static_shape(ids)
        if len(shape) != 2 or not 1 <= shape[1] <= self.seq_len:
            raise ValueError(
                f"tiny_llama expects token ids of shape (N, T) with 1 <= T <= seq_len={self.seq_len}, "
                f"got {format_shape(shape)}"
            )
        # one host sync per forward (a GPU would otherwise fail with a device-side assert); none on the meta device
        if not _building_graph() and ids.numel() and ids.device.type != "meta" and bool(
            ((ids < 0) | (ids >= self.vocab_size)).any()
        ):
            low, high = int(ids.min()), int(ids.max())
            raise ValueError(
                f"tiny_llama expects token ids in [0, {self.vocab_size}) (vocab_size), got ids from {low} to {high}"
            )


def _building_graph() -> bool:
    """Whether torch is tracing, exporting or compiling this forward (rather than running it eagerly)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


@register_model
def tiny_llama(vocab_size: int = 256, seq_len: int = 128, softmax: str = "exact", **kwargs) -> TinyLlama:
    """Byte-level LLaMA-style LM: dim 128, 4 layers, 4 heads, SwiGLU 352, vocab 256, seq_len 128 (0.87M)."""
    return TinyLlama(vocab_size=vocab_size, seq_len=seq_len, softmax=softmax, **kwargs)

"""LLaMA-style decoder parts: RMSNorm, rotary position embedding, causal attention, SwiGLU MLP.

Written from plain Linear/matmul/elementwise ops (no fused attention, no ``nn.RMSNorm``) so quantization and
every exporter see inside them. Quant points follow :class:`edgeattn.blocks.Attention`; RoPE is applied
before ``q_quant``/``k_quant`` (EdgeQAT quantizes Q and K after RoPE) and the 1/sqrt(d) scale before
``q_quant``. ``logits_probe`` sees the logits before the causal mask.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeattn.approx import ApproxSoftmax
from edgeattn.blocks.attention import add_quant_points
from edgeattn.blocks.rep import check_input, check_positive_ints, format_shape, param_dtype, static_shape

__all__ = [
    "RMSNorm",
    "rope_tables",
    "apply_rope",
    "LlamaAttention",
    "SwiGLU",
    "LlamaBlock",
    "MASK_VALUE",
    "check_tokens",
]

# Added to masked logits. Finite and fp16-representable (TensorRT FP16 engines), and far below any real
# logit so every softmax approximation sends it to 0.
MASK_VALUE = -1.0e4


def check_tokens(where: str, x: object, dim: int, seq_len: int, dtype: torch.dtype | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is a float (N, T, dim) tensor with 1 <= T <= ``seq_len`` (the RoPE
    tables and causal mask are built for ``seq_len`` positions) and, when given, of ``dtype``."""
    check_input(where, x, ("N", "T", dim), dtype=dtype)
    shape = static_shape(x)
    if not 1 <= shape[1] <= seq_len:
        raise ValueError(
            f"{where} expects input of shape (N, T, {dim}) with 1 <= T <= seq_len={seq_len}, got {format_shape(shape)}"
        )


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        check_positive_ints("RMSNorm", dim=dim)
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        check_input("RMSNorm", x, ("...", self.dim), dtype=param_dtype(self))
        if x.dtype in (torch.float16, torch.bfloat16):  # x^2 overflows float16 from |x| > 256: square in float32
            ms = x.float().pow(2).mean(dim=-1, keepdim=True)
            return x * torch.rsqrt(ms + self.eps).to(x.dtype) * self.weight
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight


def rope_tables(
    seq_len: int, head_dim: int, theta: float = 10000.0, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) tables of shape (seq_len, head_dim) for rotate-half RoPE, computed in float64 and returned in
    ``dtype`` (default: torch's default dtype) on torch's default device (where the model's weights are built)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)
    dtype = dtype or torch.get_default_dtype()  # was float32 always: a bfloat16 model then mixed dtypes in q @ k
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., T, hd) by the tables' first T rows: ``x*cos + rotate_half(x)*sin``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _attention_tables(
    seq_len: int, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LlamaAttention's computed buffers on torch's default device: RoPE (cos, sin) and the additive causal mask."""
    cos, sin = rope_tables(seq_len, head_dim, theta, dtype=dtype)
    return cos, sin, torch.triu(torch.full((seq_len, seq_len), MASK_VALUE, dtype=dtype), diagonal=1)


def _rebuild_tables_after_load(module: LlamaAttention, _incompatible_keys: object) -> None:
    module.reset_parameters()


class LlamaAttention(nn.Module):
    """Causal multi-head attention with RoPE over (B, T, C), T <= ``seq_len`` (tables are built for it)."""

    # the layers each quant point feeds (read by edgeattn.quant when Linear layers stay float)
    quant_point_consumers = {"in_quant": ("qkv",), "proj_in_quant": ("proj",)}

    def __init__(
        self, dim: int, num_heads: int, seq_len: int, softmax: str = "exact", rope_theta: float = 10000.0
    ) -> None:
        super().__init__()
        # before the modulo: num_heads=0 divides by zero
        check_positive_ints("LlamaAttention", dim=dim, num_heads=num_heads, seq_len=seq_len)
        if dim % num_heads:
            raise ValueError(f"LlamaAttention: dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = float(self.head_dim**-0.5)
        self.seq_len = seq_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.softmax = ApproxSoftmax(method=softmax, dim=-1)
        self.rope_theta = float(rope_theta)
        cos, sin, causal = _attention_tables(seq_len, self.head_dim, self.rope_theta, torch.get_default_dtype())
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("causal_mask", causal, persistent=False)
        # The tables are not in the state dict, so a model built on the meta device and materialised with
        # to_empty() would keep uninitialised memory through load_state_dict: rebuild them on every load.
        self.register_load_state_dict_post_hook(_rebuild_tables_after_load)  # a function: models still pickle
        add_quant_points(self)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Rebuild the RoPE tables and causal mask in place, on their current device and dtype.

        This module's own state is only these computed buffers (its weights live in ``qkv``/``proj``), so
        this is what torch's meta-device materialisation (``to_empty()`` then ``reset_parameters()`` on each
        module, as FSDP does) needs; ``load_state_dict`` calls it too.
        """
        device, dtype = self.rope_cos.device, self.rope_cos.dtype
        weight = self.qkv.weight
        if device.type == "meta" and not weight.is_meta:
            # load_state_dict(assign=True) into a meta-built model replaces the weights but not these buffers
            device, dtype = weight.device, weight.dtype if weight.is_floating_point() else dtype
        with torch.device("cpu"):
            tables = _attention_tables(self.seq_len, self.head_dim, self.rope_theta, dtype)
        self.rope_cos, self.rope_sin, self.causal_mask = (t.to(device) for t in tables)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, seq_len={self.seq_len}, rope_theta={self.rope_theta:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        check_tokens("LlamaAttention", x, self.dim, self.seq_len, dtype=param_dtype(self))
        b, t, c = x.shape
        x = self.in_quant(x)
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        if cos.dtype != qkv.dtype:  # tables built in another default dtype than the model now runs in
            cos, sin = cos.to(qkv.dtype), sin.to(qkv.dtype)
        q = apply_rope(qkv[0], cos, sin)
        k = apply_rope(qkv[1], cos, sin)
        q = self.q_quant(q * self.scale)
        k = self.k_quant(k)
        v = self.v_quant(qkv[2])
        logits = self.logits_probe(q @ k.transpose(-2, -1))  # before the mask (EdgeQAT distribution loss)
        attn = self.attn_quant(self.softmax(logits + self.causal_mask[:t, :t]))
        out = (attn @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(self.proj_in_quant(out))


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; quant points ``in_quant`` (MLP input) and ``hidden_quant``."""

    quant_point_consumers = {"in_quant": ("gate_proj", "up_proj"), "hidden_quant": ("down_proj",)}

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        check_positive_ints("SwiGLU", dim=dim, hidden_dim=hidden_dim)
        self.dim = dim
        self.in_quant = nn.Identity()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.act = nn.SiLU()
        self.hidden_quant = nn.Identity()
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        check_input("SwiGLU", x, ("...", self.dim), dtype=param_dtype(self))
        x = self.in_quant(x)
        return self.down_proj(self.hidden_quant(self.act(self.gate_proj(x)) * self.up_proj(x)))


class LlamaBlock(nn.Module):
    """Pre-norm decoder block: ``x + attn(attn_norm(x))`` then ``x + mlp(mlp_norm(x))``."""

    def __init__(
        self, dim: int, num_heads: int, hidden_dim: int, seq_len: int, softmax: str = "exact"
    ) -> None:
        super().__init__()
        check_positive_ints("LlamaBlock", dim=dim, num_heads=num_heads, hidden_dim=hidden_dim, seq_len=seq_len)
        self.dim, self.seq_len = dim, seq_len
        self.attn_norm = RMSNorm(dim)
        self.attn = LlamaAttention(dim, num_heads, seq_len, softmax=softmax)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, dim), T <= seq_len."""
        check_tokens("LlamaBlock", x, self.dim, self.seq_len, dtype=param_dtype(self))
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))

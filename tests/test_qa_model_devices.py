"""The models off the beaten path a GPU user walks (QA sweep of devices and dtypes): tiny_llama in another default
dtype and on the meta device, RMSNorm in float16, the dtype check on devices without autocast, and the Edge-MoE GELU
table built on the CPU whatever the default device. Each test fails on the code before the sweep."""

from __future__ import annotations

import math

import pytest
import torch

from edgeattn.approx import float_ops as fo
from edgeattn.blocks.llama import LlamaAttention, RMSNorm, rope_tables
from edgeattn.models import create_model

LLAMA = {"seq_len": 8, "dim": 16, "depth": 1, "num_heads": 2, "vocab_size": 32}


@pytest.fixture
def default_dtype():
    """Set torch's default dtype for one test, restored afterwards."""
    before = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(before)


def test_tiny_llama_runs_in_the_default_dtype_it_was_built_in(default_dtype):
    """The RoPE tables were float32 always: a model built with bfloat16 as the default failed in attn @ v
    ('expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16')."""
    default_dtype(torch.bfloat16)
    model = create_model("tiny_llama", **LLAMA).eval()
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        assert model(ids).dtype == torch.bfloat16
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.bfloat16}


def test_rope_tables_in_float64_are_exact(default_dtype):
    """Built with float64 as the default, the tables were still rounded to float32 (error 3e-8)."""
    default_dtype(torch.float64)
    cos, sin = rope_tables(8, 4)
    assert cos.dtype == torch.float64
    t, k = 5, 1  # row 5, frequency index 1: angle 5 * 10000^(-2/4)
    assert cos[t, k].item() == pytest.approx(math.cos(t * 10000 ** (-2 * k / 4)), abs=1e-15)
    assert sin[t, k + 2].item() == pytest.approx(math.sin(t * 10000 ** (-2 * k / 4)), abs=1e-15)
    attn = LlamaAttention(16, 2, 8)
    assert attn(torch.randn(1, 8, 16)).dtype == torch.float64


def test_llama_attention_casts_tables_built_in_float32_to_a_half_model():
    attn = LlamaAttention(16, 2, 8).bfloat16()  # buffers follow .bfloat16(); tables float32 if made by hand
    attn.rope_cos, attn.rope_sin = (t.float() for t in rope_tables(8, 8))
    assert attn(torch.randn(1, 8, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_rmsnorm_in_float16_does_not_overflow_its_mean_square():
    """x^2 overflowed float16 from |x| > 256, and the normalised output came out 0."""
    x = torch.full((1, 16), 300.0)
    y16 = RMSNorm(16).half()(x.half())
    assert torch.allclose(y16.float(), RMSNorm(16)(x), atol=1e-3)  # 1.0 everywhere
    assert y16.dtype == torch.float16


def test_tiny_llama_runs_on_the_meta_device_and_still_names_bad_ids():
    """forward read the ids' min and max with .item(), which the meta device cannot do."""
    with torch.device("meta"):
        model = create_model("tiny_llama", **LLAMA)
        assert model(torch.randint(0, 32, (2, 8))).shape == (2, 8, 32)
    cpu = create_model("tiny_llama", **LLAMA)
    with pytest.raises(ValueError, match=r"token ids in \[0, 32\) \(vocab_size\), got ids from 0 to 32"):
        cpu(torch.tensor([[0, 32]]))


def test_the_dtype_check_is_a_clear_error_on_the_meta_device():
    """torch.is_autocast_enabled('meta') raises, so a float64 input to a float32 model on meta failed with 'unknown
    device type for autocast' instead of the check's own message."""
    with torch.device("meta"):
        model = create_model("vit_tiny", img_size=16, depth=1)
        with pytest.raises(ValueError, match="expects a float32 input .* got float64"):
            model(torch.randn(1, 3, 16, 16, dtype=torch.float64))


def test_edgemoe_table_is_built_on_the_cpu_and_copied_once_per_device_and_dtype():
    """Imported under `with torch.device('meta')` the table became a meta tensor for good (every later CPU GELU
    failed: 'Cannot copy out of meta tensor'); and it was copied to the input's device on every call."""
    with torch.device("meta"):
        table = fo.edgemoe_table_f64("exact")
    assert table.device.type == "cpu"
    assert table[32].item() == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)), abs=1e-15)  # delta(1) = Phi(-1)
    x = torch.randn(4, 8, dtype=torch.float64)
    first = fo._table_like("mm", x)
    assert fo._table_like("mm", x) is first and first.dtype == torch.float64
    assert torch.allclose(fo.gelu(x, "edgemoe_mm"), torch.nn.functional.gelu(x), atol=1e-4)

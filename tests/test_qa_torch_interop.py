"""The models and blocks with the rest of the PyTorch toolbox (QA sweep of torch interop): graph capture must not
change later eager results, meta-device loading with assign=True, the dtype check in every block, a frozen block
staying frozen through reparameterize, and reprs that show a block's settings. Each test fails on the code before
the sweep."""

from __future__ import annotations

import math

import pytest
import torch

from edgeattn.approx import ApproxGELU, gelu
from edgeattn.approx import float_ops as fo
from edgeattn.blocks import CFB, ELA, GMLP, RLMHSA, ULSAM, MultiGroupConv1x1, RepConv
from edgeattn.blocks.llama import RMSNorm
from edgeattn.models import create_model
from edgeattn.models.edge_moe_vit import MoEMlp
from edgeattn.reparameterize import reparameterize


@pytest.fixture
def empty_table_cache(monkeypatch):
    """A fresh process's Edge-MoE table cache (nothing has run the GELU eagerly yet)."""
    monkeypatch.setattr(fo, "_TABLE_COPIES", {})


def _gelu_reference(x: torch.Tensor) -> torch.Tensor:
    """Float64 exact GELU: the Edge-MoE table GELU is within 1e-3 of it (its documented max error is 4e-4)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def test_non_strict_export_leaves_the_eager_gelu_computing_numbers(empty_table_cache):
    """torch.export (non-strict) before any eager call cached a FakeTensor table; every later eager GELU returned
    a FakeTensor with no values."""
    x = torch.linspace(-4, 4, 33)
    torch.export.export(ApproxGELU("edgemoe"), (x,), strict=False)
    y = gelu(x, "edgemoe")
    assert type(y) is torch.Tensor
    assert torch.allclose(y.double(), _gelu_reference(x.double()), atol=1e-3)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_jit_trace_passes_its_own_check_with_an_empty_cache(empty_table_cache):
    """The first trace recorded the table copy and filled the cache, the check trace saw a constant: 'Graphs
    differed across invocations!'."""
    module, x = ApproxGELU("edgemoe_mm"), torch.randn(4, 8)
    traced = torch.jit.trace(module, (x,))  # check_trace=True by default
    assert torch.equal(traced(x), module(x))


def test_tiny_llama_on_meta_loads_with_assign_true():
    """load_state_dict(assign=True) replaces the weights but not the computed buffers, which stayed on meta:
    'Tensor on device meta is not on the expected device cpu'."""
    kwargs = {"seq_len": 8, "dim": 16, "depth": 1, "num_heads": 2, "vocab_size": 32}
    torch.manual_seed(0)
    ref = create_model("tiny_llama", **kwargs).eval()
    with torch.device("meta"):
        model = create_model("tiny_llama", **kwargs)
    model.load_state_dict(ref.state_dict(), assign=True)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), ref(ids))


@pytest.mark.parametrize(
    ("block", "shape", "name"),
    [
        (lambda: ELA(32, "B"), (1, 32, 4, 4), "ELA-B"),
        (lambda: ULSAM(16, 4), (1, 16, 4, 4), "ULSAM"),
        (lambda: RLMHSA(16, 2), (1, 16, 4, 4), "RLMHSA"),
        (lambda: GMLP(16, 32), (1, 16, 4, 4), "GMLP"),
        (lambda: MoEMlp(16, 24), (1, 5, 16), "MoEMlp"),
    ],
)
def test_every_block_names_a_wrong_input_dtype(block, shape, name):
    """ELA, ULSAM, RLMHSA and MoEMlp skipped the dtype check the README promises: a float64 input failed inside
    torch ('expected scalar type Double but found Float'); GMLP's error named its inner conv, not GMLP."""
    with pytest.raises(ValueError, match=f"^{name} expects a float32 input"):
        block().eval()(torch.randn(*shape, dtype=torch.float64))


def test_cfb_names_a_wrong_input_dtype():
    with pytest.raises(ValueError, match="^CFB expects a float32 high"):
        CFB(8).eval()(torch.randn(1, 8, 4, 4, dtype=torch.float64), torch.randn(1, 8, 2, 2, dtype=torch.float64))


def test_a_frozen_multigroup_conv_without_a_dense_branch_stays_frozen():
    """Its deploy conv was a fresh nn.Conv2d, trainable by default."""
    block = MultiGroupConv1x1(8, 16, groups=(2, 4)).eval().requires_grad_(False)
    deployed = reparameterize(block)
    assert [p.requires_grad for p in deployed.parameters()] == [False, False]
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    assert torch.allclose(deployed.double()(x), block.double()(x), atol=1e-12)


def test_reprs_show_the_settings():
    """RMSNorm printed 'RMSNorm()', and no block said whether it was in deploy form."""
    assert repr(RMSNorm(24, eps=1e-5)) == "RMSNorm(24, eps=1e-05)"
    rep = reparameterize(RepConv(8, 8, 3))
    assert repr(rep).splitlines()[1].strip() == "8, 8, kernel_size=3, stride=1, groups=1, deployed=True"
    moe = create_model("edge_moe_vit", num_tasks=2)
    moe.set_task(1)
    assert "num_experts=4, top_k=2, task=1" in repr(moe.blocks[1].mlp)
    llama = create_model("tiny_llama", seq_len=16, dim=32, depth=1, num_heads=2, vocab_size=32)
    assert "dim=32, num_heads=2, seq_len=16, rope_theta=10000" in repr(llama)

"""Wrong inputs to blocks and models fail in one ValueError naming the block/model, the expected and the given
shape; right inputs give exactly the outputs of the unchecked forward, and the checks change no exported graph.

"Unchecked" is the same forward with every input check replaced by a no-op (``_unchecked``), i.e. the code before
the checks were added.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

import edgeattn
from edgeattn.blocks import (
    CFB,
    ELA,
    GMLP,
    RLMHSA,
    ULSAM,
    Attention,
    ConvBN,
    FMBlock,
    HFBlock,
    LlamaAttention,
    LlamaBlock,
    Mlp,
    MultiGroupConv1x1,
    RepConv,
    RMSNorm,
    SwiGLU,
)
from edgeattn.models import create_model, list_models
from edgeattn.models.edge_moe_vit import MoEMlp
from edgeattn.models.tiny_llama import TinyLlama

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_CHECKING_MODULES = (
    "edgeattn.blocks.attention",
    "edgeattn.blocks.ela",
    "edgeattn.blocks.ulsam",
    "edgeattn.blocks.rep",
    "edgeattn.blocks.fmvit",
    "edgeattn.blocks.llama",
    "edgeattn.models.fmvit",
    "edgeattn.models.vit",
    "edgeattn.models.edge_moe_vit",
    "edgeattn.models.mobilenetv2",
)


def _unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn every input check into a no-op (raising=True: a module without a check fails the test)."""
    import importlib

    for name in _CHECKING_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "check_input", lambda *a, **k: None)
    monkeypatch.setattr(importlib.import_module("edgeattn.blocks.llama"), "check_tokens", lambda *a, **k: None)
    monkeypatch.setattr(TinyLlama, "_check_ids", lambda self, ids: None)


def _raises(fn, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fn()


# block factory, bad input, exact message
BLOCK_CASES = [
    (lambda: ELA(32, "B"), torch.randn(32, 8, 8), "ELA-B expects input of shape (N, 32, H, W), got (32, 8, 8)"),
    (lambda: ELA(16, "L"), torch.randn(1, 8, 4, 4), "ELA-L expects input of shape (N, 16, H, W), got (1, 8, 4, 4)"),
    (lambda: ULSAM(8), torch.randn(1, 5, 4, 4), "ULSAM expects input of shape (N, 8, H, W), got (1, 5, 4, 4)"),
    (lambda: RLMHSA(16, 2), torch.randn(2, 8, 4, 4), "RLMHSA expects input of shape (N, 16, H, W), got (2, 8, 4, 4)"),
    (lambda: GMLP(16, 32), torch.randn(1, 16, 4), "GMLP expects input of shape (N, 16, H, W), got (1, 16, 4)"),
    (lambda: HFBlock(8), torch.randn(1, 3, 4, 4), "HFBlock expects input of shape (N, 8, H, W), got (1, 3, 4, 4)"),
    (lambda: FMBlock(16, 2), torch.randn(16, 4, 4), "FMBlock expects input of shape (N, 16, H, W), got (16, 4, 4)"),
    # deployed, a conv alone would take this 3-D tensor as one unbatched image
    (lambda: RepConv(3, 8), torch.randn(3, 8, 8), "RepConv expects input of shape (N, 3, H, W), got (3, 8, 8)"),
    (lambda: ConvBN(3, 8, 3), torch.randn(1, 5, 8, 8), "ConvBN expects input of shape (N, 3, H, W), got (1, 5, 8, 8)"),
    (
        lambda: MultiGroupConv1x1(8, 8),
        torch.zeros(1, 8, 4, 4, dtype=torch.int64),
        "MultiGroupConv1x1 expects a floating-point input, got torch.int64",
    ),
    (lambda: Attention(16, 2), torch.randn(2, 5, 8), "Attention expects input of shape (N, T, 16), got (2, 5, 8)"),
    (lambda: Attention(16, 2), torch.randn(5, 16), "Attention expects input of shape (N, T, 16), got (5, 16)"),
    (lambda: Mlp(16, 32), torch.randn(2, 5, 8), "Mlp expects input of shape (..., 16), got (2, 5, 8)"),
    (lambda: Mlp(16, 32), [1.0] * 16, "Mlp expects input as a torch.Tensor, got list"),
    # a last dim of 1 used to broadcast silently against the 8 weights
    (lambda: RMSNorm(8), torch.randn(2, 3, 1), "RMSNorm expects input of shape (..., 8), got (2, 3, 1)"),
    (
        lambda: LlamaAttention(16, 2, seq_len=8),
        torch.randn(1, 9, 16),
        "LlamaAttention expects input of shape (N, T, 16) with 1 <= T <= seq_len=8, got (1, 9, 16)",
    ),
    (lambda: SwiGLU(16, 32), torch.randn(1, 4, 8), "SwiGLU expects input of shape (..., 16), got (1, 4, 8)"),
    (lambda: LlamaBlock(16, 2, 32, 8), torch.randn(4, 16), "LlamaBlock expects input of shape (N, T, 16), got (4, 16)"),
    (
        lambda: LlamaBlock(16, 2, 32, 8),
        torch.randn(1, 12, 16),
        "LlamaBlock expects input of shape (N, T, 16) with 1 <= T <= seq_len=8, got (1, 12, 16)",
    ),
    (lambda: MoEMlp(32, 64), torch.randn(10, 16), "MoEMlp expects input of shape (..., 32), got (10, 16)"),
]


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
@pytest.mark.parametrize("make, bad, message", BLOCK_CASES, ids=[c[2].split(" ")[0] for c in BLOCK_CASES])
def test_block_rejects_wrong_input(make, bad, message, deploy):
    block = make().eval()
    if deploy:
        edgeattn.reparameterize(block)
    with torch.no_grad():
        _raises(lambda: block(bad), message)


@pytest.mark.parametrize(
    "high, low, message",
    [
        (
            torch.randn(1, 8, 4, 4),
            torch.randn(1, 8, 2, 2),
            "CFB expects high and low of the same shape, got (1, 8, 4, 4) and (1, 8, 2, 2)",
        ),
        (torch.randn(1, 8, 4, 4), torch.randn(1, 4, 4, 4), "CFB expects low of shape (N, 8, H, W), got (1, 4, 4, 4)"),
        (torch.randn(8, 4, 4), torch.randn(1, 8, 4, 4), "CFB expects high of shape (N, 8, H, W), got (8, 4, 4)"),
    ],
)
def test_cfb_rejects_mismatched_paths(high, low, message):
    block = CFB(8).eval()
    with torch.no_grad():
        _raises(lambda: block(high, low), message)
        edgeattn.reparameterize(block)
        _raises(lambda: block(high, low), message)


# right inputs, several ranks and map sizes (odd, non-square, smaller than sr_ratio)
GOOD_BLOCK_CASES = [
    (lambda: ELA(16, "S"), (2, 16, 5, 7)),
    (lambda: ULSAM(8, 2), (1, 8, 3, 6)),
    (lambda: RLMHSA(16, 2, sr_ratio=4), (2, 16, 3, 9)),
    (lambda: GMLP(16, 32), (1, 16, 1, 1)),
    (lambda: HFBlock(8), (2, 8, 5, 5)),
    (lambda: FMBlock(16, 2), (1, 16, 6, 4)),
    (lambda: RepConv(3, 8, stride=2), (2, 3, 9, 9)),
    (lambda: ConvBN(4, 8, 3, groups=2), (1, 4, 5, 5)),
    (lambda: MultiGroupConv1x1(8, 4), (3, 8, 2, 2)),
    (lambda: Attention(16, 2), (2, 5, 16)),
    (lambda: Mlp(16, 32), (16,)),
    (lambda: Mlp(16, 32), (2, 3, 4, 16)),
    (lambda: RMSNorm(8), (8,)),
    (lambda: LlamaAttention(16, 2, seq_len=8), (1, 8, 16)),
    (lambda: SwiGLU(16, 32), (3, 16)),
    (lambda: LlamaBlock(16, 2, 32, 8), (2, 3, 16)),
    (lambda: MoEMlp(32, 64), (10, 32)),
]


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
@pytest.mark.parametrize("make, shape", GOOD_BLOCK_CASES, ids=[str(s) for _, s in GOOD_BLOCK_CASES])
def test_block_output_unchanged_by_checks(make, shape, deploy, monkeypatch):
    torch.manual_seed(0)
    block = make().eval()
    if deploy:
        edgeattn.reparameterize(block)
    x = torch.randn(*shape)
    with torch.no_grad():
        y = block(x)
        _unchecked(monkeypatch)
        ref = block(x)
    assert torch.equal(y, ref)


def test_float64_block_matches_hand_computation():
    """One small block against a hand computation in float64 (RMSNorm, non-unit weights, eps 1e-6), and its
    check refusing the last dim of 1 that used to broadcast against the weights."""
    norm = RMSNorm(4).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=torch.float64))
    x = torch.tensor([[3.0, -4.0, 0.0, 0.0]], dtype=torch.float64)  # mean square 6.25, rms 2.5
    expected = torch.tensor([[1.2, -3.2, 0.0, 0.0]], dtype=torch.float64) * 2.5 / (6.25 + 1e-6) ** 0.5
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-15)
    _raises(lambda: norm(x[:, :1]), "RMSNorm expects input of shape (..., 4), got (1, 1)")  # used to broadcast


# registry model -> (factory kwargs, bad input, exact message); every registered model must be listed
MODEL_CASES = {
    "fmvit_t": (
        {"img_size": 32},
        torch.randn(3, 32, 32),
        "fmvit_t expects input of shape (N, 3, H, W), got (3, 32, 32)",
    ),
    "fmvit_s": (
        {"img_size": 32},
        torch.randn(1, 5, 32, 32),
        "fmvit_s expects input of shape (N, 3, H, W), got (1, 5, 32, 32)",
    ),
    "fmvit_b": (
        {"img_size": 32, "in_chans": 1},
        torch.zeros(1, 1, 32, 32, dtype=torch.uint8),
        "fmvit_b expects a floating-point input, got torch.uint8",
    ),
    # smaller than the 4-pixel patch
    "vit_tiny": (
        {"img_size": 32},
        torch.randn(1, 3, 2, 2),
        "vit_tiny expects input of shape (N, 3, 32, 32), got (1, 3, 2, 2)",
    ),
    # 35 px used to floor silently to the 8x8 patches of 32 px
    "edge_moe_vit": (
        {},
        torch.randn(1, 3, 35, 35),
        "edge_moe_vit expects input of shape (N, 3, 32, 32), got (1, 3, 35, 35)",
    ),
    "mobilenetv2": (
        {"img_size": 32},
        torch.randn(1, 1, 32, 32),
        "mobilenetv2 expects input of shape (N, 3, H, W), got (1, 1, 32, 32)",
    ),
    "mobilenetv2_ela": (
        {"img_size": 32},
        torch.randn(2, 3, 32),
        "mobilenetv2_ela expects input of shape (N, 3, H, W), got (2, 3, 32)",
    ),
    "mobilenetv2_ulsam": (
        {"img_size": 32, "in_chans": 2},
        torch.randn(1, 3, 32, 32),
        "mobilenetv2_ulsam expects input of shape (N, 2, H, W), got (1, 3, 32, 32)",
    ),
    "tiny_llama": (
        {"seq_len": 16},
        torch.randn(1, 16),
        "tiny_llama expects int64 or int32 token ids, got torch.float32",
    ),
}

_VOCAB = "tiny_llama expects token ids in [0, 256) (vocab_size), got ids from "
_IDS = "tiny_llama expects token ids of shape (N, T) with 1 <= T <= seq_len=16, got "
LLAMA_CASES = [
    (torch.zeros(1, 17, dtype=torch.int64), _IDS + "(1, 17)"),
    (torch.zeros(16, dtype=torch.int64), _IDS + "(16,)"),
    (torch.zeros(1, 0, dtype=torch.int32), _IDS + "(1, 0)"),
    ([[1, 2, 3]], "tiny_llama expects token ids as a torch.Tensor, got list"),
    (torch.tensor([[0, 5, 256]]), _VOCAB + "0 to 256"),
    (torch.tensor([[3, -1]], dtype=torch.int32), _VOCAB + "-1 to 3"),
]


@pytest.mark.parametrize("name", list_models())
def test_model_rejects_wrong_input(name):
    kwargs, bad, message = MODEL_CASES[name]  # a KeyError: a new registry model needs its case here
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        _raises(lambda: model(bad), message)
        edgeattn.reparameterize(model)
        _raises(lambda: model(bad), message)


@pytest.mark.parametrize(
    "bad, message", LLAMA_CASES, ids=["too-long", "1-D", "empty", "list", "past-vocab", "negative"]
)
def test_tiny_llama_rejects_wrong_ids(bad, message):
    model = create_model("tiny_llama", seq_len=16, dim=32, depth=1).eval()
    with torch.no_grad():
        _raises(lambda: model(bad), message)


@pytest.mark.parametrize("name", ["fmvit_t", "tiny_llama", "mobilenetv2_ulsam"])
def test_quantized_model_rejects_wrong_input(name):
    from edgeattn.quant import quantize_model

    kwargs, bad, message = MODEL_CASES[name]
    model = edgeattn.reparameterize(create_model(name, **kwargs).eval())
    qmodel = quantize_model(model)
    with torch.no_grad():
        _raises(lambda: qmodel(bad), message)


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        # FMViT and MobileNet-V2 are convolutional up to a global pool: other sizes keep working
        ("fmvit_t", {"img_size": 32}, (2, 3, 40, 48)),
        ("mobilenetv2_ulsam", {"img_size": 32}, (1, 3, 20, 28)),
        ("vit_tiny", {"img_size": 32, "depth": 2}, (2, 3, 32, 32)),
        ("edge_moe_vit", {"depth": 2}, (1, 3, 32, 32)),
    ],
)
def test_model_output_unchanged_by_checks(name, kwargs, shape, monkeypatch):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = torch.randn(*shape)

    def outputs() -> list[torch.Tensor]:  # train and deploy form
        with torch.no_grad():
            return [model(x), edgeattn.reparameterize(copy.deepcopy(model))(x)]

    checked = outputs()
    _unchecked(monkeypatch)
    unchecked = outputs()
    assert all(torch.equal(a, b) for a, b in zip(checked, unchecked, strict=True))


def test_tiny_llama_output_unchanged_by_checks(monkeypatch):
    torch.manual_seed(0)
    model = create_model("tiny_llama", seq_len=16, dim=32, depth=2).eval()
    ids = torch.randint(0, 256, (2, 11))
    with torch.no_grad():
        y, y32 = model(ids), model(ids.int())
        _unchecked(monkeypatch)
        ref = model(ids)
    assert torch.equal(y, ref) and torch.equal(y32, ref)


def _ops(model, example, dynamic_batch: bool) -> tuple[list[str], int]:
    from edgeattn.export.onnx_export import export_onnx

    graph = export_onnx(model, example, dynamic_batch=dynamic_batch).model.graph
    return [n.op_type for n in graph.node], len(graph.initializer)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_tiny", {"img_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2}),
        ("tiny_llama", {"seq_len": 8, "dim": 32, "depth": 1}),
        ("mobilenetv2_ulsam", {"img_size": 32}),
    ],
)
def test_checks_leave_the_onnx_graph_unchanged(name, kwargs, monkeypatch):
    from edgeattn.models import example_input

    torch.manual_seed(0)
    model = edgeattn.reparameterize(create_model(name, **kwargs).eval())
    x = example_input(model, batch_size=2)
    checked = _ops(model, x, dynamic_batch=True)
    _unchecked(monkeypatch)
    assert _ops(model, x, dynamic_batch=True) == checked


def test_jit_trace_keeps_the_checks_out_of_the_graph():
    """The Core ML path traces with torch.jit.trace: the trace equals eager, and the check reads the traced
    sizes without a TracerWarning of its own."""
    import warnings

    block = FMBlock(16, 2).eval()
    x = torch.randn(2, 16, 8, 8)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        traced = torch.jit.trace(block, x, check_trace=False)
    own = [w for w in caught if w.filename.endswith(("blocks/rep.py", "blocks/llama.py"))]
    assert own == []
    with torch.no_grad():
        assert torch.equal(traced(x), block(x))
    with pytest.raises(ValueError, match=re.escape("FMBlock expects input of shape (N, 16, H, W), got (2, 8, 8, 8)")):
        torch.jit.trace(block, torch.randn(2, 8, 8, 8), check_trace=False)


def test_tiny_llama_id_check_stays_out_of_traced_and_exported_graphs(tmp_path):
    """The id-range check reads data, so it runs only in eager mode: a trace or an ONNX export of any ids holds no
    trace of it (the same graph as with the check removed) and still computes the model."""
    import onnx

    model = create_model("tiny_llama", seq_len=8, dim=32, depth=1, vocab_size=256).eval()
    ids = torch.tensor([[1, 2, 255, 0]])
    with torch.no_grad():
        traced = torch.jit.trace(model, (ids,), check_trace=False)
        torch.testing.assert_close(traced(ids), model(ids), rtol=0, atol=0)
        # the traced graph has no check: an out-of-range id reaches the embedding (torch's own error, not ours)
        with pytest.raises(RuntimeError, match="index out of range"):
            traced(torch.tensor([[1, 2, 256, 0]]))
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (ids,), str(path), dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "ReduceMin" not in ops and "ReduceMax" not in ops and "If" not in ops

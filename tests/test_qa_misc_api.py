"""QA sweep, Python API: input dtypes and constructor arguments of the blocks, a single artifact and a folder for
the profiler, and the arguments of ``generate_project`` / ``HLSFormats``. Each bad input is one clear error."""

from __future__ import annotations

import copy

import pytest
import torch
from _profiler_models import conv_stack
from edgeattn.fpga_hls import HLSFormats, generate_project

from edgeattn.blocks.attention import Attention, Mlp
from edgeattn.blocks.llama import LlamaAttention, LlamaBlock, RMSNorm, SwiGLU
from edgeattn.blocks.rep import ConvBN, MultiGroupConv1x1, RepConv
from edgeattn.errors import EdgeAttnError


def _randomize_bn(block: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics, so folding them is not the identity."""
    gen = torch.Generator().manual_seed(1)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return block


def _deployed(block: torch.nn.Module) -> torch.nn.Module:
    _randomize_bn(block).eval().reparameterize()
    return block


# (name, block factory, input shape): every block that checks its input's dtype against its weights
BLOCKS = [
    ("ConvBN", lambda: _randomize_bn(ConvBN(4, 8, 3)), (2, 4, 6, 6)),
    ("ConvBN", lambda: _deployed(ConvBN(4, 8, 3)), (2, 4, 6, 6)),
    ("RepConv", lambda: _randomize_bn(RepConv(4, 4, 3, num_branches=2)), (2, 4, 6, 6)),
    ("RepConv", lambda: _deployed(RepConv(4, 4, 3, num_branches=2)), (2, 4, 6, 6)),
    ("MultiGroupConv1x1", lambda: _randomize_bn(MultiGroupConv1x1(4, 8)), (2, 4, 6, 6)),
    ("MultiGroupConv1x1", lambda: _deployed(MultiGroupConv1x1(4, 8)), (2, 4, 6, 6)),
    ("Attention", lambda: Attention(8, 2), (2, 5, 8)),
    ("Mlp", lambda: Mlp(8, 16), (2, 5, 8)),
    ("RMSNorm", lambda: RMSNorm(8), (2, 5, 8)),
    ("SwiGLU", lambda: SwiGLU(8, 16), (2, 5, 8)),
    ("LlamaAttention", lambda: LlamaAttention(8, 2, seq_len=6), (2, 5, 8)),
    ("LlamaBlock", lambda: LlamaBlock(8, 2, 16, seq_len=6), (2, 5, 8)),
]


@pytest.mark.parametrize(
    ("name", "make", "shape"), BLOCKS, ids=[f"{b[0]}-{k}" for k, b in enumerate(BLOCKS)]
)
def test_block_refuses_an_input_dtype_other_than_its_weights(name, make, shape):
    torch.manual_seed(0)
    block = make().eval()
    x = torch.randn(shape)
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(ValueError, match=rf"^{name} expects a float32 input .*got {str(dtype)[6:]}"):
            block(x.to(dtype))
    # matching dtypes still run: the float32 block against its own float64 copy (the reference)
    ref = copy.deepcopy(block).double()(x.double())
    with torch.no_grad():
        out = block(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_autocast_still_casts_a_bfloat16_input_to_a_float32_block():
    """Under autocast the layers cast their inputs themselves: the dtype check must stand aside."""
    torch.manual_seed(0)
    mlp = Mlp(8, 16).eval()
    x = torch.randn(3, 8)
    ref = copy.deepcopy(mlp).double()(x.double())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = mlp(x.to(torch.bfloat16))
    torch.testing.assert_close(out.double(), ref, rtol=0.05, atol=0.05)


def test_mlp_one_hidden_unit_is_still_a_valid_width():
    torch.manual_seed(0)
    mlp = Mlp(4, 1).eval()
    x = torch.randn(2, 4)
    w1, b1, w2, b2 = (p.detach().double() for p in (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias))
    ref = torch.nn.functional.gelu(x.double() @ w1.T + b1) @ w2.T + b2  # exact GELU in float64
    with torch.no_grad():
        torch.testing.assert_close(mlp(x).double(), ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Profiler


@pytest.fixture(scope="module")
def conv_art(tmp_path_factory):
    path = tmp_path_factory.mktemp("prof") / "conv.onnx"
    counts = conv_stack(path, size=8, ch=8, n=1)
    return path, counts["macs"]


@pytest.mark.parametrize("as_type", [str, lambda p: p], ids=["str", "Path"])
def test_profile_artifacts_takes_one_path_as_one_artifact(conv_art, as_type):
    from edgeattn.profile.measure import profile_artifacts

    path, macs = conv_art
    report = profile_artifacts(as_type(path), runtime="onnxruntime", warmup=1, iters=5, threads=1)
    assert [r.artifact for r in report.results] == [str(path)]
    result = report.results[0]
    assert len(result.samples_ms) == 5
    assert result.efficiency.macs == macs  # the hand count of the ONNX graph


def test_plot_report_to_a_folder_is_one_error_and_writes_nothing(conv_art, tmp_path):
    from edgeattn.profile.measure import profile_artifacts
    from edgeattn.profile.plot import plot_report

    report = profile_artifacts([conv_art[0]], runtime="onnxruntime", warmup=1, iters=3, threads=1)
    folder = tmp_path / "plots"
    folder.mkdir()
    with pytest.raises(EdgeAttnError, match="is a folder"):
        plot_report(report, folder)
    assert list(folder.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# HLS generator


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_width": 2, "weight_int": 4}, "weight_int must be in 1..2 (at most weight_width), got 4"),
        ({"prob_frac": 0}, "prob_frac must be in 4..24, got 0"),
        ({"act_width": 0}, "act_width must be in 8..32 (the LayerNorm datapath), got 0"),
        ({"act_width": "24"}, "act_width must be an integer, got '24'"),
        ({"act_int": 0}, "act_int must be in 1..27 (>= 5 fraction bits: the GELU table step is 1/32), got 0"),
        ({"score_int": 0}, "score_int must be in 1..16 (<= 32 fraction bits), got 0"),
        ({"weight_width": True}, "weight_width must be an integer, got True"),
    ],
)
def test_hls_formats_check_names_the_field(kwargs, message):
    with pytest.raises(ValueError) as info:
        HLSFormats(**kwargs).check()
    assert str(info.value) == message


def test_hls_formats_check_names_the_profile_field_when_asked():
    with pytest.raises(ValueError, match=r"^hls\.softmax_out_frac must be in 4\.\.24, got 0$"):
        HLSFormats(prob_frac=0).check(profile=True)


def test_hls_formats_narrowest_allowed_widths_pass():
    fmt = HLSFormats(act_width=8, act_int=3, weight_width=2, weight_int=2, prob_frac=4, gelu_table_frac=8)
    fmt.check()
    # ap_fixed<2,2>: integers -2..1; ap_fixed<8,3>: steps of 1/32 up to 127/32
    assert (fmt.weight.min_value, fmt.weight.max_value) == (-2.0, 1.0)
    assert fmt.act.max_value == 127 / 32


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("vit_tiny",), {"tolerance": {"atol": 0.1}}, "tolerance: unknown key(s) 'atol'; allowed: max_abs, min_cosine"),
        (
            ("vit_tiny",),
            {"formats": HLSFormats(weight_width=2, weight_int=4)},
            "formats: weight_int must be in 1..2 (at most weight_width), got 4",
        ),
        (("vit_tiny",), {"formats": HLSFormats(prob_frac=0)}, "formats: prob_frac must be in 4..24, got 0"),
        (
            ("vit_tiny",),
            {"formats": HLSFormats(act_width=0)},
            "formats: act_width must be in 8..32 (the LayerNorm datapath), got 0",
        ),
        ((None,), {}, "model must be a registry name or a torch model, got NoneType"),
        (("vit_tiny",), {"layer": "0"}, "layer must be an encoder layer index (an integer) or None, got '0'"),
        (("vit_tiny",), {"vectors": "2"}, "vectors must be an integer >= 1, got '2'"),
    ],
    ids=["tolerance-key", "weight-int", "prob-frac", "act-width", "no-model", "layer-str", "vectors-str"],
)
def test_generate_project_bad_argument_is_one_line_and_writes_nothing(tmp_path, args, kwargs, message):
    out = tmp_path / "prj"
    with pytest.raises(EdgeAttnError) as info:
        generate_project(*args, "zcu102-hls", out, **{"vectors": 1, **kwargs})
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []


def test_generate_project_profile_widths_are_named_by_the_profile(tmp_path):
    from edgeattn.device_profile import load_profile

    prof = load_profile("zcu102-hls")
    hls = prof.hls.model_copy(update={"softmax_in": prof.hls.softmax_in.model_copy(update={"width": 40})})
    want = r"^profile 'zcu102-hls': hls\.softmax_in\.width must be in 2\.\.32, got 40$"
    with pytest.raises(EdgeAttnError, match=want):
        generate_project("vit_tiny", prof.model_copy(update={"hls": hls}), tmp_path / "prj", vectors=1)


def test_a_profile_read_from_a_file_is_named_by_its_path(tmp_path, capsys):
    """A copy of zcu102-hls with a width the templates cannot take: the error names the file (the shipped profile
    is fine), in the estimate and the project alike, and the CLI says it in one line."""
    import yaml
    from edgeattn.fpga_hls import estimate_model

    from edgeattn.cli import main
    from edgeattn.device_profile import load_profile

    data = load_profile("zcu102-hls").model_dump(mode="json")
    data["hls"]["softmax_in"]["width"] = 40
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    want = f"{path} (profile 'zcu102-hls'): hls.softmax_in.width must be in 2..32, got 40"
    with pytest.raises(EdgeAttnError) as info:
        estimate_model("vit_tiny", str(path))
    assert str(info.value) == want
    with pytest.raises(EdgeAttnError) as info:
        generate_project("vit_tiny", path, tmp_path / "prj", vectors=1)
    assert str(info.value) == want
    assert main(["hls", "vit_tiny", "-o", str(tmp_path / "prj"), "-p", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {want}\n" and not (tmp_path / "prj").exists()


@pytest.mark.parametrize("name", ["vit_tiny", "edge_moe_vit", "fmvit_t", "mobilenetv2"])
def test_model_names_itself_for_a_wrong_input_dtype(name):
    from edgeattn.models import create_model

    m = create_model(name, img_size=32).eval()
    with pytest.raises(ValueError, match=rf"^{name} expects a float32 input .*got float64"):
        m(torch.randn(1, 3, 32, 32, dtype=torch.float64))


def test_generate_project_of_a_name_is_reproducible_and_matches_the_cli(tmp_path):
    """A registry name's weights came from the caller's global RNG: two identical calls gave max abs err 0.0357
    and 0.0371. Now they come from ``seed`` (as `edgeattn hls` draws them), leaving the caller's RNG alone."""
    import json

    from edgeattn.fpga_hls import generate_project

    from edgeattn.cli import main as cli_main

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate_project("vit_tiny", "zcu102-hls", tmp_path / "a", layer=0, vectors=1)
    assert torch.equal(torch.rand(1), before)  # the caller's random state is not consumed
    torch.rand(7)  # move the global state: it must not matter
    b = generate_project("vit_tiny", "zcu102-hls", tmp_path / "b", layer=0, vectors=1)
    assert a.golden_vs_float == b.golden_vs_float and a.golden_vs_float["max_abs_err"] > 0
    args = ["hls", "vit_tiny", "-o", str(tmp_path / "c"), "--layer", "0", "--vectors", "1"]
    assert cli_main([*args, "--json", str(tmp_path / "c.json")]) == 0
    cli = json.loads((tmp_path / "c.json").read_text())
    assert cli["golden_vs_float"] == a.golden_vs_float  # the same weights and images as the command line

"""Model registry, shapes, parameter/MAC counts against the papers, and the `edgeattn models` CLI."""

from __future__ import annotations

import json

import pytest
import torch
from _reparam_helpers import small_model
from torch import nn

import edgeattn
from edgeattn.blocks import ELA, ULSAM
from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import count_macs, count_params, create_model, example_input, list_models
from edgeattn.models.mobilenetv2 import InvertedResidual

REQUIRED = {
    "fmvit_t",
    "fmvit_s",
    "fmvit_b",
    "mobilenetv2",
    "mobilenetv2_ela",
    "mobilenetv2_ulsam",
    "vit_tiny",
    "tiny_llama",
}


def test_registry_has_required_models():
    assert set(list_models()) >= REQUIRED
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_at_small_input(name):
    model = small_model(name).eval()
    x = example_input(model, batch_size=2)
    with torch.no_grad():
        y = model(x)
    if name == "tiny_llama":
        assert x.dtype == torch.int64 and y.shape == (2, 32, model.vocab_size)
    else:
        assert x.shape[1:] == model.input_size and y.shape == (2, model.num_classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["fmvit_t", "mobilenetv2_ela", "vit_tiny"])
def test_vision_models_take_in_chans_and_approx_names(name):
    kwargs = {"img_size": 32, "in_chans": 1, "num_classes": 7}
    if name != "mobilenetv2_ela":
        kwargs.update(softmax="shift", gelu="ibert")
    m = create_model(name, **kwargs).eval()
    assert m.input_size == (1, 32, 32)
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    methods = {getattr(mod, "method", None) for mod in m.modules()} - {None}
    assert methods <= {"shift", "ibert"} or name == "mobilenetv2_ela"


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(EdgeAttnError, match="unknown model 'resnet9'; valid models: .*fmvit_t"):
        create_model("resnet9")
    with pytest.raises(EdgeAttnError, match="fmvit_t.*unexpected keyword"):
        create_model("fmvit_t", colour="red")
    with pytest.raises(ValueError, match="img_size=30 must be divisible"):
        create_model("vit_tiny", img_size=30)


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("tiny_llama", {"num_heads": 0}, "tiny_llama: num_heads must be a positive integer, got 0"),
        ("tiny_llama", {"depth": 2.0}, "tiny_llama: depth must be a positive integer, got 2.0"),
        ("vit_tiny", {"depth": "2"}, "vit: depth must be a positive integer, got '2'"),
        ("vit_tiny", {"depth": -1}, "vit: depth must be a positive integer, got -1"),
        ("vit_tiny", {"num_heads": 0}, "vit: num_heads must be a positive integer"),
        ("vit_tiny", {"embed_dim": 0}, "vit: embed_dim must be a positive integer"),
        ("vit_tiny", {"img_size": "32"}, "vit: img_size must be a positive integer, got '32'"),
        ("vit_tiny", {"patch_size": 0}, "vit: patch_size must be a positive integer"),
        ("vit_tiny", {"num_classes": True}, "vit: num_classes must be a positive integer, got True"),
        ("vit_tiny", {"mlp_ratio": "4"}, "vit: mlp_ratio must be a positive number"),
        ("edge_moe_vit", {"depth": 0}, "edge_moe_vit: depth must be a positive integer, got 0"),
        ("edge_moe_vit", {"num_experts": 0}, "edge_moe_vit: num_experts must be a positive integer"),
        ("fmvit_t", {"depths": [1, -1, 1, 1]}, r"FMViT: depths\[1\] must be a positive integer, got -1"),
        ("fmvit_t", {"size": "s"}, "model 'fmvit_t' takes no argument 'size'"),
        ("mobilenetv2", {"num_classes": "10"}, "MobileNetV2: num_classes must be a positive integer, got '10'"),
        ("mobilenetv2_ela", {"attention": "ulsam"}, "model 'mobilenetv2_ela' sets argument 'attention' itself"),
        ("mobilenetv2_ulsam", {"attention": "ela"}, "model 'mobilenetv2_ulsam' sets argument 'attention' itself"),
    ],
)
def test_bad_model_arguments_are_user_errors_naming_the_argument(name, kwargs, needle):
    """Bad factory arguments fail up front as ValueError naming the argument (EdgeAttnError for arguments
    that do not bind), not ZeroDivisionError / TypeError, and never as a model with no layers."""
    with pytest.raises(ValueError, match=needle) as info:
        create_model(name, **{**({} if name == "tiny_llama" else {"img_size": 32}), **kwargs})
    assert isinstance(info.value, EdgeAttnError) == needle.startswith("model '")


def test_llama_attention_checks_heads_before_dividing():
    from edgeattn.blocks.llama import LlamaAttention

    with pytest.raises(ValueError, match=r"LlamaAttention: num_heads must be a positive integer, got 0"):
        LlamaAttention(16, 0, seq_len=8)


def test_cli_qat_bad_model_kwargs_is_one_line_exit_2_nothing_written(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: vit_tiny\nimg_size: 16\nmodel_kwargs: {depth: 0, num_heads: 2, embed_dim: 32}\n")
    out = tmp_path / "out"
    assert main(["qat", "--config", str(cfg), "--output", str(out), "--max-train-samples", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "depth must be a positive integer, got 0" in err
    assert not out.exists()


def test_count_macs_against_hand_count():
    lin = nn.Linear(10, 7)
    assert count_macs(lin, torch.randn(3, 10)) == 3 * 10 * 7
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    assert count_macs(conv, torch.randn(1, 4, 5, 5)) == 6 * (4 // 2) * 9 * 25


def test_fmvit_sizes_span_2m_to_25m_at_224():
    params = {}
    for size in "tsb":
        deploy = edgeattn.reparameterize(create_model(f"fmvit_{size}"))
        params[size] = count_params(deploy)
    assert 1.8e6 <= params["t"] < params["s"] < params["b"] <= 25e6, params


def test_mobilenetv2_matches_published_size():
    m = create_model("mobilenetv2")
    assert 3.45e6 <= count_params(edgeattn.reparameterize(m)) <= 3.55e6  # 3.4-3.5M published
    assert 295e6 <= count_macs(m, torch.randn(1, 3, 224, 224)) <= 305e6  # ~300M MACs published


def test_mobilenetv2_ela_placement_and_cost():
    base, ela = create_model("mobilenetv2"), create_model("mobilenetv2_ela")
    modules = [m for m in ela.modules() if isinstance(m, ELA)]
    expanding = [b for b in ela.modules() if isinstance(b, InvertedResidual) and len(b.conv) == 4]
    assert (
        len(modules) == len(expanding) == 16
    )  # every expanding inverted residual (t=6), none in the t=1 block
    for block in expanding:  # expand 1x1, depthwise 3x3, ELA-L, project 1x1
        dw, attn = block.conv[1].conv, block.conv[2]
        assert dw.groups == dw.in_channels and isinstance(attn, ELA) and attn.variant == "L"
        assert block.conv[3].conv.kernel_size == (1, 1)
    extra = sum(56 * m.conv.in_channels + 2 * m.conv.in_channels for m in modules)  # ELA-L: 7*8 C + GN 2C
    assert count_params(ela) - count_params(base) == extra


def test_mobilenetv2_ulsam_placement_and_cost():
    base, ul = create_model("mobilenetv2"), create_model("mobilenetv2_ulsam")
    modules = [m for m in ul.modules() if isinstance(m, ULSAM)]
    assert [m.channels for m in modules] == [96, 160, 160] and all(m.num_subspaces == 4 for m in modules)
    conv_weights = sum(m.conv_dw.weight.numel() + m.conv_pw.weight.numel() for m in modules)
    assert conv_weights == 2 * (96 + 160 + 160)  # 2m per module
    per_module = [2 * m.channels + (m.channels + 4) + 2 * (m.channels + 4) for m in modules]  # + biases + BN
    assert count_params(ul) - count_params(base) == sum(per_module)


def test_tiny_llama_defaults():
    m = create_model("tiny_llama")
    assert (m.vocab_size, m.seq_len, m.dim, len(m.blocks)) == (256, 128, 128, 4)
    blk = m.blocks[0]
    for name in ("in_quant", "q_quant", "k_quant", "v_quant", "logits_probe", "attn_quant", "proj_in_quant"):
        assert isinstance(getattr(blk.attn, name), nn.Identity)
    assert isinstance(blk.mlp.in_quant, nn.Identity) and isinstance(blk.mlp.hidden_quant, nn.Identity)


def test_cli_models_list_and_info(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "list", "--img-size", "32", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert set(rows) >= REQUIRED
    # figures are the library's own counts
    m = create_model("fmvit_t", img_size=32)
    assert rows["fmvit_t"]["params_train"] == count_params(m)
    assert rows["fmvit_t"]["macs"] == count_macs(edgeattn.reparameterize(m), torch.randn(1, 3, 32, 32))
    assert rows["fmvit_t"]["macs"] < rows["fmvit_t"]["macs_train"]
    assert rows["tiny_llama"]["input_shape"] == [1, 128] and rows["tiny_llama"]["input_dtype"] == "int64"
    info = tmp_path / "info.json"
    assert main(["models", "info", "mobilenetv2_ulsam", "--img-size", "32", "--json", str(info)]) == 0
    assert json.loads(info.read_text())["params"] == rows["mobilenetv2_ulsam"]["params"]


# vit_tiny names itself and the patch size it chose (the user never named one)
PATCH_9 = (
    "vit_tiny: img_size=9 must be divisible by its patch size, 4 at this size (4 below 112 px, 16 from 112 px); "
    "or pass patch_size"
)


def test_cli_img_size_a_model_cannot_take(tmp_path, capsys, monkeypatch):
    """``info`` refuses --img-size for a language model (it was ignored without a word); ``list`` shows the models
    that cannot take the size as '-' with the reason, instead of failing the whole list at the first one."""
    assert main(["models", "info", "tiny_llama", "--img-size", "64"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --img-size: model 'tiny_llama' takes no image size (a language model: its input is token ids)"
    )
    import edgeattn.models as models

    monkeypatch.setattr(models, "list_models", lambda: ["vit_tiny", "tiny_llama"])
    out = tmp_path / "models.json"
    assert main(["models", "list", "--img-size", "9", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    assert rows["vit_tiny"] == {"name": "vit_tiny", "error": PATCH_9}
    assert rows["tiny_llama"]["input_shape"] == [1, 128]  # language models keep their own input
    assert f"vit_tiny: not at --img-size 9: {PATCH_9}" in " ".join(
        capsys.readouterr().out.split()
    )
    monkeypatch.setattr(models, "list_models", lambda: ["vit_tiny"])
    assert main(["models", "list", "--img-size", "9"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --img-size 9: no registered model takes it ({PATCH_9})"
    )


def test_cli_unknown_model_is_one_line_exit_2(capsys):
    assert main(["models", "info", "resnet9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model 'resnet9'" in err and "fmvit_t" in err

"""What the user configures for QAT reaches the model, or is refused/warned about by name (QA sweep 4)."""

from __future__ import annotations

import warnings

import pytest
import torch
from edgeattn.quant import QuantConfig, quantize_model
from edgeattn.quant.quantize import quant_layers

from edgeattn import reparameterize
from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

STEM = "stem.0.reparam_conv"
AVX2_OVERRIDES = {"stem.0": {"weight_bits": 8}, "stages.2.1.attn": {"weight_bits": 4, "act_bits": 4}}


def _fmvit() -> torch.nn.Module:
    torch.manual_seed(0)
    return reparameterize(create_model("fmvit_t", num_classes=10, img_size=32)).eval()


def _config(profile: str, **updates) -> QuantConfig:
    data = QuantConfig.from_profile(profile).model_dump()
    data.update(updates)
    return QuantConfig.parse(data)


def _int_weight_range(layer: torch.nn.Module) -> tuple[int, int]:
    """(min, max) of the layer's integer weights, recomputed from its float weight and scale in float64."""
    qw = layer.quant_weight()
    ints = torch.round(layer.weight.detach().double() / qw.scale.detach().double())
    return int(ints.min()), int(ints.max())


def test_an_override_cannot_exceed_the_no_vnni_weight_cap():
    cfg = _config("intel-avx2-openvino", overrides=AVX2_OVERRIDES)
    assert cfg.weight_max_bits == 7
    assert cfg.weight_bits_for(STEM) == 7 and cfg.weight_bits_for("stages.0.0.x") == 7
    with pytest.warns(UserWarning, match=r"overrides pattern 'stem\.0' asks for 8-bit weights; capped at .* 7"):
        q = quantize_model(_fmvit(), cfg)
    stem = quant_layers(q)[STEM]
    assert float(stem.quant_weight().bit_width) == 7.0
    # a signed 7-bit narrow grid: integers within -63..63; an 8-bit stem reaches 127 (the saturating case)
    lo, hi = _int_weight_range(stem)
    assert lo >= -63 and hi <= 63 and max(-lo, hi) == 63
    # a lower override is kept, and w8a8 on the capped config stays 7-bit (the profile's special case)
    assert _config("intel-avx2-openvino", overrides={"stem.0": {"weight_bits": 4}}).weight_bits_for(STEM) == 4
    assert cfg.with_bits("w8a8").weight_bits == 7 and cfg.with_bits("w16a16").weight_bits == 7
    assert cfg.with_bits("w4a8").weight_bits == 4


def test_vnni_profiles_and_old_checkpoints_have_no_weight_cap():
    vnni = _config("intel-vnni-openvino", overrides={"stem.0": {"weight_bits": 8}})
    assert vnni.weight_max_bits is None and vnni.weight_bits_for(STEM) == 8
    assert QuantConfig.from_profile("zcu102-hls").weight_max_bits is None
    # a QuantConfig saved before the field existed still parses, uncapped as it was trained
    old = QuantConfig.from_profile("intel-avx2-openvino").model_dump(mode="json")
    del old["weight_max_bits"]
    old["overrides"] = {"stem.0": {"weight_bits": 8}}
    parsed = QuantConfig.parse(old, "checkpoint meta 'quant'")
    assert parsed.weight_max_bits is None and parsed.weight_bits_for(STEM) == 8


@pytest.mark.parametrize(("vnni", "cap"), [(False, 7), (True, None)])
def test_host_cpu_gets_the_cap_only_without_vnni(monkeypatch, vnni, cap):
    import edgeattn.hostinfo as hostinfo

    host = hostinfo.detect_host().model_copy(
        update={"recommended_weight_bits": 8 if vnni else 7, "recommended_kv_max_bits": None if vnni else 7}
    )
    monkeypatch.setattr(hostinfo, "detect_host", lambda: host)
    cfg = QuantConfig.from_profile("host-cpu")
    assert cfg.weight_max_bits == cap
    over = _config("host-cpu", overrides={"stem.0": {"weight_bits": 8}})
    assert over.weight_bits_for(STEM) == (8 if vnni else 7)


def test_an_override_on_layers_the_profile_keeps_float_is_warned_by_name():
    cfg = _config("intel-avx2-openvino", overrides={"stages.2.1.attn": {"weight_bits": 4, "act_bits": 4}})
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        q = quantize_model(_fmvit(), cfg)
    ignored = [str(w.message) for w in got if "is ignored" in str(w.message)]
    assert len(ignored) == 1 and "'stages.2.1.attn'" in ignored[0]
    assert "quantize_attention is false" in ignored[0] and "quantize_linear is false" in ignored[0]
    assert not any(n.startswith("stages.2.1.attn") for n in quant_layers(q))
    # where the profile quantizes that attention, the same override reaches it: 4-bit weights, no warning
    cfg = _config("intel-vnni-openvino", overrides={"stages.2.1.attn": {"weight_bits": 4, "act_bits": 4}})
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        q = quantize_model(_fmvit(), cfg)
    assert not [w for w in got if "overrides pattern" in str(w.message)]
    layers = quant_layers(q)
    assert float(layers["stages.2.1.attn.q"].quant_weight().bit_width) == 4.0
    lo, hi = _int_weight_range(layers["stages.2.1.attn.q"])
    assert lo >= -7 and hi <= 7


def test_qat_run_trains_the_capped_stem(tmp_path):
    from edgeattn.quant.checkpoint import load_checkpoint
    from edgeattn.quant.train import TrainConfig, run

    cfg = TrainConfig(
        model="fmvit_t", profile="intel-avx2-openvino", quant={"overrides": {"stem.0": {"weight_bits": 8}}},
        fp_epochs=1, skip_qat=True, max_train_samples=32, max_val_samples=8, calib_samples=8, batch_size=16,
        output_dir=str(tmp_path / "run"), num_threads=1,
    )
    with pytest.warns(UserWarning, match="'stem.0' asks for 8-bit weights"):
        result = run(cfg, progress=False)
    assert result["quant_config"]["weight_max_bits"] == 7
    model, _ = load_checkpoint(tmp_path / "run" / "ptq.pt")
    stem = quant_layers(model)[STEM]
    assert float(stem.quant_weight().bit_width) == 7.0
    assert max(abs(v) for v in _int_weight_range(stem)) <= 63


def test_the_default_bits_are_named_when_the_profile_wants_others(tmp_path, capsys):
    from edgeattn.quant.train import TrainConfig, default_bits_note

    note = default_bits_note(TrainConfig(profile="zcu102-hls"))
    assert note == "bits w8a8 (the default); profile 'zcu102-hls' is W16A16: --bits profile trains at its widths"
    assert default_bits_note(TrainConfig(profile="zcu102-hls", bits="w8a8")) is None  # asked for
    assert default_bits_note(TrainConfig(profile="intel-avx2-openvino")) is None  # w8a8 is its W7A8
    assert default_bits_note(TrainConfig(profile="intel-vnni-openvino")) is None
    # the CLI prints it before the run (refused here at once: the output is a file)
    blocker = tmp_path / "out"
    blocker.write_text("x")
    rc = main(["qat", "-p", "zcu102-hls", "-o", str(blocker), "--no-progress"])
    out = " ".join(capsys.readouterr().out.split())
    assert rc == 2 and "bits w8a8 (the default); profile 'zcu102-hls' is W16A16" in out


def test_model_kwargs_approximations_that_the_profile_does_not_deploy_are_refused(tmp_path, capsys):
    cfg = tmp_path / "apx.yaml"
    cfg.write_text("model: vit_tiny\nmodel_kwargs: {softmax: ibert, gelu: edgemoe}\n")
    out = tmp_path / "run"
    rc = main(["qat", "-c", str(cfg), "-p", "host-cpu", "-o", str(out), "--no-progress", "--max-train-samples", "8"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "softmax='ibert'" in err and "approx.softmax 'exact'" in err and "approx: {softmax: ibert}" in err
    assert not out.exists()
    # the profile's own method is no contradiction
    from edgeattn.quant.train import TrainConfig, check_model_approximations

    check_model_approximations(TrainConfig(model="vit_tiny", model_kwargs={"softmax": "exact"}))
    with pytest.raises(EdgeAttnError, match=r"gelu='tanh' differs from profile 'host-cpu' approx.gelu 'exact'"):
        check_model_approximations(TrainConfig(model="vit_tiny", model_kwargs={"gelu": "tanh"}))


def test_the_results_table_names_the_bits_the_model_has():
    from edgeattn.cli._common import console
    from edgeattn.cli.qat import _print_table

    avx2 = _config("intel-avx2-openvino", overrides=AVX2_OVERRIDES, float_layers=("head",))
    result = {
        "model": "m", "data": "d", "bits": "w8a8", "profile": "p", "fp32": 1.0, "output_dir": "o",
        "quant_config": avx2.model_dump(mode="json"),
    }
    with console.capture() as cap:
        _print_table(result)
    text = " ".join(cap.get().split())
    assert "m on d, W7A8, mixed: 2 overrides, 1 float layer (p)" in text and "w8a8" not in text
    result["quant_config"] = QuantConfig().with_bits("w4a4").model_dump(mode="json")
    with console.capture() as cap:
        _print_table(result)
    assert "m on d, W4A4 (p)" in " ".join(cap.get().split())

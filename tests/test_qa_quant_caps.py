"""A `quant:` section may lower a profile's hardware caps (7-bit weights and K/V on x86 without VNNI), not lift them."""

from __future__ import annotations

import pytest
from edgeattn.quant.train import TrainConfig, quant_config_for

from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError

VISION = {"task": "vision"}


def _qcfg(**quant):
    return quant_config_for(TrainConfig(model="fmvit_t", profile="intel-avx2-openvino", quant=quant), VISION)


@pytest.mark.parametrize("key", ["weight_max_bits", "kv_max_bits"])
@pytest.mark.parametrize("value", [None, 8, 16])
def test_a_config_cannot_lift_the_no_vnni_caps(key, value):
    lifted = rf"quant\.{key}: .* would lift the 7-bit cap of profile 'intel-avx2-openvino'"
    with pytest.raises(EdgeAttnError, match=lifted):
        _qcfg(**{key: value})


def test_a_config_may_lower_the_caps_and_the_caps_hold_without_one():
    plain = _qcfg()
    assert (plain.weight_max_bits, plain.kv_max_bits) == (7, 7)
    assert plain.weight_bits_for("stem.0") == 7 and plain.act_bits_for("stages.2.1.attn.k_quant") == 7
    lower = _qcfg(weight_max_bits=6, kv_max_bits=5)
    assert lower.weight_bits_for("stem.0") == 6 and lower.act_bits_for("stages.2.1.attn.k_quant") == 5
    assert lower.act_bits_for("stages.2.1.attn.q_quant") == 8  # only K and V are capped
    # a profile without caps (VNNI) takes any value, null included
    uncapped = TrainConfig(model="fmvit_t", profile="intel-vnni-openvino", quant={"weight_max_bits": None})
    vnni = quant_config_for(uncapped, VISION)
    assert vnni.weight_max_bits is None and vnni.weight_bits_for("stem.0") == 8


def test_the_cli_refuses_a_lifted_cap_in_one_line_before_writing(tmp_path, capsys):
    config = tmp_path / "qat.yaml"
    config.write_text("model: fmvit_t\nprofile: intel-avx2-openvino\nquant:\n  weight_max_bits: null\n")
    out = tmp_path / "run"
    assert main(["qat", "--config", str(config), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quant.weight_max_bits: null would lift" in err[0], err
    assert not out.exists() or not any(out.iterdir())

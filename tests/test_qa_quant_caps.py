"""What a profile holds against a user's quant settings: a `quant:` section may lower its hardware caps (7-bit weights
and K/V on x86 without VNNI), not lift them; an override that lands only partly says how much the profile keeps float.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from edgeattn.quant import QuantConfig, quantize_model
from edgeattn.quant.quantize import SWAPPED, is_quant_point, quant_layers
from edgeattn.quant.train import TrainConfig, quant_config_for

from edgeattn import reparameterize
from edgeattn.cli import main
from edgeattn.errors import EdgeAttnError
from edgeattn.models import create_model

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


# ---------------------------------------------------------------------------------------------- partial overrides
def _override_warnings(profile: str, **updates) -> tuple[list[str], dict]:
    """The partial-override warnings of quantizing fmvit_t with ``profile`` + ``updates``, and what was quantized."""
    torch.manual_seed(0)
    model = reparameterize(create_model("fmvit_t", num_classes=10, img_size=32)).eval()
    data = QuantConfig.from_profile(profile).model_dump()
    data.update(updates)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        q = quantize_model(model, QuantConfig.parse(data))
    candidates = [n for n, m in model.named_modules() if n and (type(m) in SWAPPED or is_quant_point(n, m))]
    messages = [str(w.message) for w in got if re.search(r"overrides pattern .* reaches", str(w.message))]
    return messages, {"candidates": candidates, "quantized": set(quant_layers(q))}


def test_an_override_that_only_partly_lands_says_how_much_stays_float():
    messages, seen = _override_warnings("intel-avx2-openvino", overrides={"stages.2": {"weight_bits": 4}})
    under = [n for n in seen["candidates"] if n.startswith("stages.2.")]
    landed = [n for n in under if n in seen["quantized"]]
    assert 0 < len(landed) < len(under)  # the profile keeps the attention float, the convolutions are quantized
    assert len(messages) == 1, messages
    assert f"reaches {len(landed)} of the {len(under)} layers" in messages[0]
    assert f"{len(under) - len(landed)} stay float" in messages[0] and "quantize_attention is false" in messages[0]


def test_no_partial_warning_when_all_lands_or_the_user_chose_the_float_part():
    assert _override_warnings("intel-vnni-openvino", overrides={"stages.2": {"weight_bits": 4}})[0] == []
    mine = _override_warnings(
        "intel-vnni-openvino", overrides={"stages.2": {"weight_bits": 4}}, float_layers=("stages.2.1.attn",)
    )
    assert mine[0] == []

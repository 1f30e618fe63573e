"""What a walk through the documentation found (QA sweep of the docs against the code): cross-setting refusals
name the flag that set them, image-only settings are refused for text, and a module registered twice stays shared
when its approximation is swapped. Each test fails on the code before the sweep."""

from __future__ import annotations

import pytest
import torch
from edgeattn.quant.train_config import PRESETS, TrainConfig, build_config
from torch import nn

from edgeattn.approx import ApproxGELU, set_approximations
from edgeattn.errors import EdgeAttnError


@pytest.mark.parametrize(
    ("preset", "flags", "expected"),
    [
        ("llama", {"resize": "stretch"}, "--resize: resize brings images to img_size"),
        (None, {"model": "tiny_llama", "data": "stdlib", "resize": "stretch"}, "--resize: resize brings images"),
        ("llama", {"augment_shift": 2}, "--augment-shift: augment_shift moves images"),
        ("demo", {"augment_shift": 40}, "--augment-shift: augment_shift 40 must be smaller than img_size 32"),
    ],
)
def test_a_check_across_settings_names_the_flag_that_set_it(preset, flags, expected):
    """docs/qat.md: the refusal names 'where it came from, the config file or the flag'; a flag was blamed on the
    preset ("preset 'llama': resize ...") or on "settings"."""
    with pytest.raises(EdgeAttnError) as err:
        build_config(preset=preset, output_dir="unused", **flags)
    assert str(err.value).startswith(expected)


def test_image_settings_are_refused_for_text():
    """`qat --preset llama --img-size 16` was taken silently and ignored (export refuses it); so was in_chans in a
    config file."""
    with pytest.raises(EdgeAttnError, match="^--img-size: img_size is the images' size"):
        build_config(preset="llama", output_dir="unused", img_size=16)
    data = {**PRESETS["llama"], "in_chans": 1, "output_dir": "unused"}
    with pytest.raises(EdgeAttnError, match="^config file 't.yaml': in_chans is the images' channel count"):
        TrainConfig.parse(data, "config file 't.yaml'")


def test_the_image_defaults_still_work_for_text():
    cfg = build_config(preset="llama", output_dir="unused")
    assert cfg.is_language and cfg.img_size == 32


def test_set_approximations_keeps_a_shared_module_shared():
    """A GELU registered under two names got two new ApproxGELU objects (seq[1] is seq[3] became False)."""
    gelu = nn.GELU()
    seq = nn.Sequential(nn.Linear(4, 4), gelu, nn.Linear(4, 4), gelu)
    set_approximations(seq, gelu="edgemoe")
    assert isinstance(seq[1], ApproxGELU) and seq[1] is seq[3]
    x = torch.linspace(-3, 3, 8).reshape(2, 4)
    assert torch.equal(seq[1](x), seq[3](x))

"""ControlNetModel against the reference goldens, through a saved-and-reloaded TorchScript file."""

from __future__ import annotations

import copy

import pytest
import torch
from blipdiff_export.controlnet import ControlNetModel
from blipdiff_export.errors import ExportError
from conftest import assert_close, script_roundtrip
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def scripted_controlnet(fixture, tmp_path_factory):
    cn = ControlNetModel(fixture.config("controlnet", "ckpt-controlnet"))
    weights = load_file(str(fixture.ckpt_controlnet / "controlnet" / "diffusion_pytorch_model.safetensors"))
    cn.load_state_dict(weights, strict=True)
    return script_roundtrip(cn, tmp_path_factory.mktemp("controlnet"))


@pytest.mark.parametrize("case", ["s1", "s05"])
def test_controlnet_matches_golden(fixture, scripted_controlnet, case):
    c = fixture.json["cases"]["controlnet"]["cases"][case]
    with torch.no_grad():
        down, mid = scripted_controlnet(
            fixture[c["latents"]],
            torch.tensor(c["timestep"]),
            fixture[c["encoder_hidden_states"]],
            fixture[c["controlnet_cond"]],
            float(c["conditioning_scale"]),
        )
    assert len(down) == len(c["down"])
    for actual, name in zip(down, c["down"], strict=True):
        assert_close(actual, fixture[name], name)
    assert_close(mid, fixture[c["mid"]], c["mid"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("controlnet_conditioning_channel_order", "bgr"),
        ("global_pool_conditions", True),
        ("mid_block_type", None),
        ("class_embed_type", "projection"),
        ("up_block_types", ["UpBlock2D", "CrossAttnUpBlock2D"]),
    ],
)
def test_controlnet_rejects_unsupported_config(fixture, key, value):
    config = copy.deepcopy(fixture.config("controlnet", "ckpt-controlnet"))
    config[key] = value
    with pytest.raises(ExportError) as err:
        ControlNetModel(config)
    assert key in str(err.value)

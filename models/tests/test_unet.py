"""UNet2DConditionModel against the reference goldens, through a saved-and-reloaded TorchScript file."""

from __future__ import annotations

import copy

import pytest
import torch
from blipdiff_export.errors import ExportError
from blipdiff_export.unet import UNet2DConditionModel
from conftest import assert_close, script_roundtrip
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def scripted_unet(fixture, tmp_path_factory):
    unet = UNet2DConditionModel(fixture.config("unet"))
    unet.load_state_dict(load_file(str(fixture.ckpt / "unet" / "diffusion_pytorch_model.safetensors")), strict=True)
    return script_roundtrip(unet, tmp_path_factory.mktemp("unet"))


def _case(fixture, name):
    return fixture.json["cases"]["unet"]["cases"][name]


@pytest.mark.parametrize("case", ["t981", "t1"])
def test_unet_matches_golden(fixture, scripted_unet, case):
    c = _case(fixture, case)
    with torch.no_grad():
        out = scripted_unet(fixture[c["latents"]], torch.tensor(c["timestep"]), fixture[c["encoder_hidden_states"]])
    assert_close(out, fixture[c["output"]], c["output"])


def test_unet_batched_timestep_equals_scalar(fixture, scripted_unet):
    c = _case(fixture, "t981")
    latents = fixture[c["latents"]]
    t = torch.full((latents.shape[0],), c["timestep"], dtype=torch.int64)
    with torch.no_grad():
        out = scripted_unet(latents, t, fixture[c["encoder_hidden_states"]])
    assert_close(out, fixture[c["output"]], c["output"] + " ([B] timestep)")


def test_unet_with_controlnet_residuals(fixture, scripted_unet):
    c = _case(fixture, "t981_res")
    down = [fixture[n] for n in c["down_block_additional_residuals"]]
    with torch.no_grad():
        out = scripted_unet(
            fixture[c["latents"]],
            torch.tensor(c["timestep"]),
            fixture[c["encoder_hidden_states"]],
            down,
            fixture[c["mid_block_additional_residual"]],
        )
    assert_close(out, fixture[c["output"]], c["output"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("class_embed_type", "timestep"),
        ("time_cond_proj_dim", 256),
        ("resnet_time_scale_shift", "scale_shift"),
        ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
        ("dual_cross_attention", True),
        ("upcast_attention", True),
        ("addition_embed_type", "text_time"),
        ("down_block_types", ["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"]),
        ("act_fn", "gelu"),
        ("some_future_option", "on"),
    ],
)
def test_unet_rejects_unsupported_config(fixture, key, value):
    config = copy.deepcopy(fixture.config("unet"))
    config[key] = value
    with pytest.raises(ExportError) as err:
        UNet2DConditionModel(config)
    assert key in str(err.value)
    shown = value[-1] if isinstance(value, list) else value
    assert repr(shown) in str(err.value)


def _small_config(**overrides):
    config = {
        "block_out_channels": [8, 16, 16],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": [1, 2, 1],
        "attention_head_dim": [2, 4, 4],
        "cross_attention_dim": 12,
        "norm_num_groups": 4,
        "in_channels": 4,
        "out_channels": 4,
    }
    config.update(overrides)
    return config


@pytest.mark.parametrize("use_linear_projection", [False, True])
def test_unet_other_shapes_script_and_match_eager(tmp_path, use_linear_projection):
    """Per-block lists, a third level and latent sizes not divisible by the total downsampling factor."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(_small_config(use_linear_projection=use_linear_projection)).eval()
    scripted = script_roundtrip(unet, tmp_path)
    sample = torch.randn(2, 4, 11, 7)
    ctx = torch.randn(2, 5, 12)
    with torch.no_grad():
        expected = unet(sample, torch.tensor(500), ctx)
        out = scripted(sample, torch.tensor([500, 500]), ctx)
    assert out.shape == sample.shape
    assert_close(out, expected, "scripted vs eager")


def test_unet_runs_in_bfloat16(fixture, tmp_path):
    """Dtype-agnostic: no float32 tensor created in forward meets bfloat16 activations (the timestep embedding is
    computed in float32 and cast). The loose tolerance only guards against garbage."""
    unet = UNet2DConditionModel(fixture.config("unet"))
    unet.load_state_dict(load_file(str(fixture.ckpt / "unet" / "diffusion_pytorch_model.safetensors")), strict=True)
    scripted = script_roundtrip(unet.to(torch.bfloat16), tmp_path)
    c = _case(fixture, "t981")
    with torch.no_grad():
        out = scripted(
            fixture[c["latents"]].bfloat16(),
            torch.tensor(c["timestep"]),
            fixture[c["encoder_hidden_states"]].bfloat16(),
        )
    assert out.dtype == torch.bfloat16
    assert_close(out, fixture[c["output"]], c["output"] + " (bfloat16)", atol=0.1, rtol=0.05)

"""VAE encoder and decoder against the reference goldens, through saved-and-reloaded TorchScript files."""

from __future__ import annotations

import copy

import pytest
import torch
from blipdiff_export.errors import ExportError
from blipdiff_export.vae import DECODER_PREFIXES, ENCODER_PREFIXES, VAEDecoder, VAEEncoder, filter_state_dict
from conftest import assert_close, script_roundtrip
from safetensors.torch import load_file


def _vae_state_dict(fixture):
    return load_file(str(fixture.ckpt / "vae" / "diffusion_pytorch_model.safetensors"))


def test_vae_decoder_matches_golden(fixture, tmp_path):
    decoder = VAEDecoder(fixture.config("vae"))
    decoder.load_state_dict(filter_state_dict(_vae_state_dict(fixture), DECODER_PREFIXES), strict=True)
    scripted = script_roundtrip(decoder, tmp_path)
    with torch.no_grad():
        out = scripted(fixture["vae.decoder_input"])
    assert_close(out, fixture["vae.decoded"], "vae.decoded")


def test_vae_encoder_matches_golden(fixture, tmp_path):
    encoder = VAEEncoder(fixture.config("vae"))
    encoder.load_state_dict(filter_state_dict(_vae_state_dict(fixture), ENCODER_PREFIXES), strict=True)
    scripted = script_roundtrip(encoder, tmp_path)
    with torch.no_grad():
        mean, logvar = scripted(fixture["vae_enc.image"])
    assert_close(mean, fixture["vae_enc.mean"], "vae_enc.mean")
    assert_close(logvar, fixture["vae_enc.logvar"], "vae_enc.logvar")


def test_vae_halves_cover_the_checkpoint(fixture):
    keys = set(_vae_state_dict(fixture))
    config = fixture.config("vae")
    owned = set(VAEDecoder(config).state_dict()) | set(VAEEncoder(config).state_dict())
    assert owned == keys


def test_vae_optional_parts(tmp_path):
    """Without quant convs and mid-block attention: those keys disappear and the modules still script."""
    config = {
        "block_out_channels": [8, 8, 16],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "latent_channels": 4,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": False,
    }
    decoder, encoder = VAEDecoder(config), VAEEncoder(config)
    keys = set(decoder.state_dict()) | set(encoder.state_dict())
    assert not any("quant_conv" in k or "attentions" in k for k in keys)
    image = torch.randn(1, 3, 20, 12)
    with torch.no_grad():
        mean, logvar = script_roundtrip(encoder, tmp_path, "e.pt")(image)
        assert mean.shape == logvar.shape == (1, 4, 5, 3)
        assert script_roundtrip(decoder, tmp_path, "d.pt")(mean).shape == (1, 3, 20, 12)


@pytest.mark.parametrize(
    ("key", "value"),
    [("act_fn", "gelu"), ("up_block_types", ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]), ("use_quant_conv", "yes")],
)
def test_vae_rejects_unsupported_config(fixture, key, value):
    config = copy.deepcopy(fixture.config("vae"))
    config[key] = value
    with pytest.raises(ExportError) as err:
        VAEDecoder(config)
    assert key in str(err.value)


def test_vae_decoder_runs_in_bfloat16(fixture, tmp_path):
    decoder = VAEDecoder(fixture.config("vae"))
    decoder.load_state_dict(filter_state_dict(_vae_state_dict(fixture), DECODER_PREFIXES), strict=True)
    scripted = script_roundtrip(decoder.to(torch.bfloat16), tmp_path)
    with torch.no_grad():
        out = scripted(fixture["vae.decoder_input"].bfloat16())
    assert out.dtype == torch.bfloat16
    assert_close(out, fixture["vae.decoded"], "vae.decoded (bfloat16)", atol=0.1, rtol=0.05)

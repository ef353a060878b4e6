"""QFormerModel (vision tower + Q-Former + projection) against the reference's golden tensors.

Every comparison goes through the TorchScript file saved and loaded back, as the runtime will use it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from blipdiff_export.errors import ExportError
from blipdiff_export.qformer import QFormerModel
from blipdiff_export.weights import load_into, read_weights
from conftest import assert_close, script_roundtrip

CASES = ("dog", "teddy", "batch2")
OUTPUTS = ("image_embeds", "last_hidden_state", "query_embeds")


def build(fixture) -> QFormerModel:
    module = QFormerModel(fixture.config("qformer"))
    load_into(module, read_weights(fixture.ckpt / "qformer", "qformer"), "qformer")
    return module.eval()


@pytest.fixture(scope="module")
def scripted(fixture, tmp_path_factory):
    return script_roundtrip(build(fixture), tmp_path_factory.mktemp(f"qformer-{fixture.name}"))


def case_inputs(fixture, case: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cases = fixture.json["cases"]["qformer"]["cases"]
    if case not in cases:
        pytest.fail(f"{fixture.name}: golden.json has no qformer case {case!r}; the fixture is incomplete")
    pixel_values = torch.cat([fixture[name] for name in cases[case]["image_input"]], dim=0)
    return pixel_values, fixture[f"qformer.{case}.input_ids"], fixture[f"qformer.{case}.attention_mask"]


def test_state_dict_keys_are_the_checkpoints(fixture):
    module = QFormerModel(fixture.config("qformer"))
    state = read_weights(fixture.ckpt / "qformer", "qformer")
    ours = set(module.state_dict())
    # position_ids buffers are not saved by every transformers version; load_into supplies them.
    assert ours - set(state) <= {"embeddings.position_ids"}
    assert set(state) - ours == set()
    if "embeddings.position_ids" in state:
        module.load_state_dict(state, strict=True)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("case", CASES)
def test_golden(fixture, scripted, case, output):
    pixel_values, input_ids, attention_mask = case_inputs(fixture, case)
    with torch.no_grad():
        if output == "image_embeds":
            actual = scripted.image_embeds(pixel_values)
        elif output == "last_hidden_state":
            actual = scripted.last_hidden_state(pixel_values, input_ids, attention_mask)
        else:
            actual = scripted(pixel_values, input_ids, attention_mask)
    assert_close(actual, fixture[f"qformer.{case}.{output}"], f"qformer.{case}.{output}")


def test_batch_rows_equal_single_runs(fixture, scripted):
    """Each row of a padded batch equals that subject run alone (padding is fully masked)."""
    pixel_values, input_ids, attention_mask = case_inputs(fixture, "batch2")
    with torch.no_grad():
        batch = scripted(pixel_values, input_ids, attention_mask)
        for row in range(pixel_values.size(0)):
            length = int(attention_mask[row].sum())
            single = scripted(
                pixel_values[row : row + 1], input_ids[row : row + 1, :length], attention_mask[row : row + 1, :length]
            )
            assert_close(batch[row : row + 1], single, f"batch2 row {row}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_runs(fixture, tmp_path, dtype):
    """Nothing inside forward is pinned to float32: the module runs end to end in half precision."""
    module = build(fixture)
    pixel_values, input_ids, attention_mask = case_inputs(fixture, "batch2")
    with torch.no_grad():
        expected = module(pixel_values, input_ids, attention_mask)
        scripted = script_roundtrip(copy.deepcopy(module).to(dtype), tmp_path)
        actual = scripted(pixel_values, input_ids, attention_mask)
    assert actual.dtype == dtype
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().item()
    assert (actual.float() - expected).abs().max().item() < 0.1 * scale


def test_cross_attention_frequency_and_defaults(fixture, tmp_path):
    """Layers with i % cross_attention_frequency != 0 have no crossattention.*; missing keys take transformers' defaults."""
    config = copy.deepcopy(fixture.config("qformer"))
    qformer, vision = config["qformer_config"], config["vision_config"]
    qformer.update(num_hidden_layers=3, cross_attention_frequency=2)
    for key in ("layer_norm_eps", "hidden_act", "position_embedding_type"):
        qformer.pop(key, None)
    for key in ("layer_norm_eps", "qkv_bias"):
        vision.pop(key, None)
    vision["image_size"] = 2 * vision.get("patch_size", 14)
    module = QFormerModel(config)

    keys = set(module.state_dict())
    assert any(k.startswith("encoder.layer.0.crossattention.") for k in keys)
    assert not any(k.startswith("encoder.layer.1.crossattention.") for k in keys)
    assert any(k.startswith("encoder.layer.2.crossattention.") for k in keys)
    assert "visual_encoder.encoder.layers.0.self_attn.qkv.bias" in keys
    assert module.visual_encoder.post_layernorm.eps == 1e-6
    assert module.embeddings.LayerNorm.eps == 1e-12
    assert module.visual_encoder.embeddings.position_embedding.shape[1] == 5
    assert isinstance(module.encoder.layer[0].intermediate.act, torch.nn.GELU)

    scripted = script_roundtrip(module, tmp_path)
    image = torch.randn(2, 3, vision["image_size"], vision["image_size"])
    ids = torch.tensor([[4, 31, 5, 0], [4, 34, 35, 5]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = scripted(image, ids, mask)
        hidden = scripted.last_hidden_state(image, ids, mask)
    nq = config["num_query_tokens"]
    assert out.shape == (2, nq, qformer["hidden_size"])
    assert hidden.shape == (2, nq + 4, qformer["hidden_size"])
    assert_close(out, module(image, ids, mask), "scripted vs eager")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("qformer_config", "position_embedding_type", "relative_key"),
        ("qformer_config", "hidden_act", "mish_of_doom"),
        ("vision_config", "hidden_act", "tanhshrink"),
        ("qformer_config", "cross_attention_frequency", 0),
    ],
)
def test_unsupported_config_raises(fixture, section, key, value):
    config = copy.deepcopy(fixture.config("qformer"))
    config[section][key] = value
    with pytest.raises(ExportError) as info:
        QFormerModel(config)
    assert key in str(info.value) and str(value) in str(info.value)


def test_heads_must_divide_hidden_size(fixture):
    config = copy.deepcopy(fixture.config("qformer"))
    heads = config["vision_config"]["hidden_size"] + 1
    config["vision_config"]["num_attention_heads"] = heads
    with pytest.raises(ExportError, match=f"num_attention_heads {heads}"):
        QFormerModel(config)

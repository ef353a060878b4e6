"""ContextCLIPTextEncoder against the reference's golden tensors, through the saved TorchScript file."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from blipdiff_export.errors import ExportError
from blipdiff_export.text_encoder import ContextCLIPTextEncoder
from blipdiff_export.weights import load_into, read_weights
from conftest import assert_close, script_roundtrip

CTX_CASES = ("dog", "teddy")
UNCOND_CASES = ("uncond_empty", "uncond_neg")


def build(fixture) -> ContextCLIPTextEncoder:
    module = ContextCLIPTextEncoder(fixture.config("text_encoder"))
    load_into(module, read_weights(fixture.ckpt / "text_encoder", "text_encoder"), "text_encoder")
    return module.eval()


def ctx_begin_pos(fixture) -> int:
    return int(json.loads((fixture.ckpt / "model_index.json").read_text())["ctx_begin_pos"])


@pytest.fixture(scope="module")
def scripted(fixture, tmp_path_factory):
    return script_roundtrip(build(fixture), tmp_path_factory.mktemp(f"text-{fixture.name}"))


def test_state_dict_keys_are_the_checkpoints(fixture):
    module = ContextCLIPTextEncoder(fixture.config("text_encoder"))
    state = read_weights(fixture.ckpt / "text_encoder", "text_encoder")
    ours = set(module.state_dict())
    # position_ids buffers are not saved by every transformers version; load_into supplies them.
    assert ours - set(state) <= {"text_model.embeddings.position_ids"}
    assert set(state) - ours == set()
    if "text_model.embeddings.position_ids" in state:
        module.load_state_dict(state, strict=True)


@pytest.mark.parametrize("case", CTX_CASES)
def test_golden_with_ctx(fixture, scripted, case):
    with torch.no_grad():
        actual = scripted(
            fixture[f"text.{case}.input_ids"], fixture[f"qformer.{case}.query_embeds"], ctx_begin_pos(fixture)
        )
    assert_close(actual, fixture[f"text.{case}.last_hidden_state"], f"text.{case}.last_hidden_state")


@pytest.mark.parametrize("case", UNCOND_CASES)
def test_golden_without_ctx(fixture, scripted, case):
    with torch.no_grad():
        actual = scripted(fixture[f"text.{case}.input_ids"], None, ctx_begin_pos(fixture))
    assert_close(actual, fixture[f"text.{case}.last_hidden_state"], f"text.{case}.last_hidden_state")


def test_batch2(fixture, scripted):
    """Two prompts (and two ctx sets) in one batch give each prompt's own golden row."""
    ids = torch.cat([fixture[f"text.{c}.input_ids"] for c in CTX_CASES])
    ctx = torch.cat([fixture[f"qformer.{c}.query_embeds"] for c in CTX_CASES])
    uncond_ids = torch.cat([fixture[f"text.{c}.input_ids"] for c in UNCOND_CASES])
    with torch.no_grad():
        with_ctx = scripted(ids, ctx, ctx_begin_pos(fixture))
        without_ctx = scripted(uncond_ids, None, 0)
    for row, case in enumerate(CTX_CASES):
        assert_close(with_ctx[row : row + 1], fixture[f"text.{case}.last_hidden_state"], f"batch row {row} ({case})")
    for row, case in enumerate(UNCOND_CASES):
        assert_close(without_ctx[row : row + 1], fixture[f"text.{case}.last_hidden_state"], f"batch row {row} ({case})")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_runs(fixture, tmp_path, dtype):
    """Nothing inside forward is pinned to float32; float32 ctx is cast to the module's dtype."""
    module = build(fixture)
    ids = fixture["text.dog.input_ids"]
    ctx = fixture["qformer.dog.query_embeds"]
    with torch.no_grad():
        expected = module(ids, ctx, ctx_begin_pos(fixture))
        scripted = script_roundtrip(copy.deepcopy(module).to(dtype), tmp_path)
        actual = scripted(ids, ctx, ctx_begin_pos(fixture))
    assert actual.dtype == dtype
    assert torch.isfinite(actual).all()
    assert (actual.float() - expected).abs().max().item() < 0.1 * expected.abs().max().item()


def test_too_many_tokens_is_an_error(fixture, scripted):
    """Prompt ids + ctx tokens beyond max_position_embeddings fail with a message, not a shape error."""
    max_positions = fixture.config("text_encoder")["max_position_embeddings"]
    ids = torch.zeros(1, max_positions, dtype=torch.long)
    ctx = fixture["qformer.dog.query_embeds"]
    with pytest.raises(Exception, match="positions"):
        scripted(ids, ctx, ctx_begin_pos(fixture))


@pytest.mark.parametrize(("key", "value"), [("hidden_act", "mish_of_doom"), ("num_hidden_layers", 0)])
def test_unsupported_config_raises(fixture, key, value):
    config = copy.deepcopy(fixture.config("text_encoder"))
    config[key] = value
    with pytest.raises(ExportError) as info:
        ContextCLIPTextEncoder(config)
    assert key in str(info.value) and str(value) in str(info.value)

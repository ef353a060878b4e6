"""edit_layers.attention_table: the controlled attention layers (edit.json spec section 5) against the fixtures'
tables, for the fixture UNet and for SD-1.5's config at several sizes."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from blipdiff_export.edit_layers import attention_table
from blipdiff_export.errors import ExportError
from blipdiff_export.export import CONFIGS_DIR
from blipdiff_export.unet import UNet2DConditionModel

ROLES = ("cross_replace", "self_replace", "local_blend")


def edit_json(fixture) -> dict:
    path = fixture.path / "edit.json"
    if not path.exists():
        pytest.skip(f"{fixture.name} has no editing goldens")
    return json.loads(path.read_text())


def text_length(fixture) -> int:
    return fixture.config("text_encoder")["max_position_embeddings"]


def sd15_config() -> dict:
    return json.loads((CONFIGS_DIR / "unet" / "config.json").read_text())


def test_fixture_table_matches_edit_json(fixture):
    expected = edit_json(fixture)["attention_layers"]
    hw = tuple(expected["latent_hw"])
    table = attention_table(fixture.config("unet"), hw, text_length(fixture))
    assert table.l_star == expected["l_star"]
    assert table.num_levels == expected["num_levels"]
    assert [layer.as_dict() for layer in table.layers] == expected["layers"]
    counts = {role: sum(getattr(layer, role) for layer in table.layers) for role in ROLES}
    assert counts == expected["counts"]


def test_table_from_built_unet_equals_table_from_config(fixture):
    """The UNet's own module tree and its config give the same table (the roles the UNet sets come from it)."""
    config = fixture.config("unet")
    hw = (16, 24)
    from_config = attention_table(config, hw, text_length(fixture))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(config)
    assert attention_table(unet, hw, text_length(fixture)) == from_config
    for layer in from_config.layers:
        attn = unet.get_submodule(layer.name)
        assert (attn.edit_cross, attn.edit_cross_replace, attn.edit_self_replace, attn.edit_local_blend) == (
            layer.kind == "cross",
            layer.cross_replace,
            layer.self_replace,
            layer.local_blend,
        )
    assert unet.edit_blend_level == from_config.l_star
    assert unet.edit_layer_names == from_config.names
    assert unet.edit_blend_layer_names == [layer.name for layer in from_config.layers if layer.local_blend]


def _selection(table) -> dict[str, list[str]]:
    return {role: [layer.name for layer in table.layers if getattr(layer, role)] for role in ROLES}


@pytest.mark.parametrize("size", ["256x256", "512x512", "768x768"])
def test_sd15_selection(fixture, size):
    """SD-1.5's UNet (on the meta device): 32 layers; at 512 our level rules select exactly LAVIS's layers, and at
    every size they select the layers edit.json recorded; query sizes scale with the latent size."""
    check = edit_json(fixture)["sd15_512_selection_check"]
    entry = check[size]
    hw = tuple(entry["latent_hw"])
    table = attention_table(sd15_config(), hw, 77)
    assert len(table.layers) == 32
    assert table.l_star == check["l_star"]
    assert _selection(table) == entry["ours"]
    if size == "512x512":
        assert _selection(table) == {role: entry["lavis"][role] for role in ROLES}
        for ours, ref in zip(table.layers, entry["layers"], strict=True):
            assert (ours.call_index, ours.name, ours.kind, ours.place, ours.level, ours.heads) == (
                ref["call_index"],
                ref["name"],
                ref["kind"],
                ref["place"],
                ref["level"],
                ref["heads"],
            )
            assert ours.query_hw[0] * ours.query_hw[1] == ref["queries"]
            assert ours.keys == ref["keys"]
            assert (ours.self_replace, ours.local_blend) == (ref["ours_self_replace"], ref["ours_local_blend"])
    for layer in table.layers:
        scale = 2**layer.level
        assert layer.query_hw == [hw[0] // scale, hw[1] // scale]


def test_sd15_same_layers_at_every_size():
    at = {hw: attention_table(sd15_config(), hw, 77) for hw in [(32, 32), (64, 64), (96, 96), (64, 96)]}
    unsized = [[layer.as_dict(sized=False) for layer in t.layers] for t in at.values()]
    assert all(u == unsized[0] for u in unsized)


def test_unsized_table_and_manifest_entry(fixture):
    table = attention_table(fixture.config("unet"))
    assert all(layer.query_hw is None and layer.keys is None for layer in table.layers)
    entry = table.manifest_entry()
    assert entry["l_star"] == table.l_star
    assert entry["layers"][0].keys() == {
        "call_index",
        "name",
        "place",
        "level",
        "kind",
        "heads",
        "cross_replace",
        "self_replace",
        "local_blend",
    }


def _no_cross_down(config: dict) -> dict:
    config = copy.deepcopy(config)
    n = len(config["block_out_channels"])
    config["down_block_types"] = ["DownBlock2D"] * n
    config["up_block_types"] = ["UpBlock2D"] * n
    return config


def test_no_cross_attention_down_block_is_refused(fixture):
    config = _no_cross_down(fixture.config("unet"))
    with pytest.raises(ExportError, match="no down block has cross-attention"):
        attention_table(config)
    # The UNet itself still builds (generation needs no edit layers); forward_edit refuses any control.
    unet = UNet2DConditionModel(config)
    assert unet.edit_blend_level == -1 and unet.edit_layer_names == [] and unet.edit_blend_layer_names == []


def test_sized_table_needs_text_length(fixture):
    with pytest.raises(ValueError, match="text_length"):
        attention_table(fixture.config("unet"), (16, 16))

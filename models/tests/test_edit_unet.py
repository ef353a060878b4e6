"""UNet2DConditionModel.forward_edit (prompt-to-prompt attention control) against the editing goldens, through a
saved-and-reloaded TorchScript file; `forward` stays what it was."""

from __future__ import annotations

import json
import re

import pytest
import torch
from blipdiff_export.edit_layers import attention_table
from blipdiff_export.export import EXPORTER_VERSION
from blipdiff_export.module_files import load_module
from blipdiff_export.unet import UNet2DConditionModel
from conftest import assert_close, script_roundtrip
from safetensors.torch import load_file
from torch import nn

CASES = {"p2p_generated": "gen", "p2p_real": "real"}


class Edit:
    """A fixture's edit.json and edit.safetensors."""

    def __init__(self, fixture):
        path = fixture.path / "edit.json"
        if not path.exists():
            pytest.skip(f"{fixture.name} has no editing goldens")
        self.json = json.loads(path.read_text())
        self.t = load_file(str(fixture.path / "edit.safetensors"))

    def case(self, name: str) -> dict:
        return self.json["cases"][name]


_edits: dict = {}


@pytest.fixture(scope="module")
def edit(fixture) -> Edit:
    if fixture.path not in _edits:
        _edits[fixture.path] = Edit(fixture)
    return _edits[fixture.path]


def build_unet(fixture) -> UNet2DConditionModel:
    unet = UNet2DConditionModel(fixture.config("unet"))
    unet.load_state_dict(load_file(str(fixture.ckpt / "unet" / "diffusion_pytorch_model.safetensors")), strict=True)
    return unet.eval()


@pytest.fixture(scope="module")
def scripted_unet(fixture, tmp_path_factory):
    return script_roundtrip(build_unet(fixture), tmp_path_factory.mktemp("edit-unet"))


def assert_latents_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """edit.json's tolerance for latents and UNet outputs: |a - b| <= 1e-4 + 2e-5 * max|b|."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bound = 1e-4 + 2e-5 * expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert diff <= bound, f"{name}: max |diff| {diff:.3g} > {bound:.3g}"


def step_input(edit: Edit, prefix: str, k: int) -> torch.Tensor:
    """The 4-row UNet input of controller step k: the golden latents [src, edit] before the step, twice."""
    if k == 0:
        if prefix == "gen":
            x = edit.t["gen.latents_init"]
        else:
            x = edit.t[f"real.inv.step{len(edit.case('p2p_real')['scheduler']['inversion_order']) - 1}.latents"]
        x = x.repeat(2, 1, 1, 1)
    else:
        x = edit.t[f"{prefix}.step{k - 1}.latents"]
    return torch.cat([x, x])


def call(unet, edit: Edit, case: str, k: int, *, control: bool = True, collect: bool = True, record: bool = False):
    c = edit.case(case)
    p = CASES[case]
    t = edit.t
    with torch.no_grad():
        return unet.forward_edit(
            step_input(edit, p, k),
            torch.tensor(c["scheduler"]["timesteps"][k]),
            t[f"{p}.text_states"],
            t[f"{p}.mapper"],
            t[f"{p}.alphas"],
            t[f"{p}.cross_alpha"][k],
            control and k in c["cross_replace_controller_steps"],
            control and k in c["self_replace_controller_steps"],
            collect,
            record,
        )


def blend_map(blend: list[torch.Tensor], subject_alpha: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """LocalBlend's map (spec section 8) from accumulated cond_src probabilities [heads, Q, P] per layer."""
    maps = [p.reshape(1, p.shape[0], 1, hw[0], hw[1], p.shape[-1]) for p in blend]
    return (torch.cat(maps, dim=1) * subject_alpha).sum(-1).mean(1)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_edit_matches_goldens_at_every_step(fixture, edit, scripted_unet, case):
    """Every controller step's UNet output, and the LocalBlend probabilities (through the accumulated map)."""
    c = edit.case(case)
    p = CASES[case]
    table = edit.json["attention_layers"]
    scale = 2 ** table["l_star"]
    h, w = c["params"]["latent_hw"]
    blend_hw = ((h + scale - 1) // scale, (w + scale - 1) // scale)
    steps = len(c["scheduler"]["timesteps"])
    assert steps == c["controller_steps"]
    acc: list[torch.Tensor] | None = None
    for k in range(steps):
        out, blend, recorded = call(scripted_unet, edit, case, k)
        assert_latents_close(out, edit.t[f"{p}.step{k}.unet_out"], f"{p}.step{k}.unet_out")
        assert recorded == []
        assert len(blend) == sum(layer["local_blend"] for layer in table["layers"])
        acc = blend if acc is None else [a + b for a, b in zip(acc, blend, strict=True)]
        lb_map = blend_map(acc, edit.t[f"{p}.subject_alpha"], blend_hw)
        assert_close(lb_map, edit.t[f"{p}.step{k}.lb_map"], f"{p}.step{k}.lb_map", atol=0, rtol=1e-4)


def shorten(name: str) -> str:
    """edit.json spec section 13: d = down_blocks, u = up_blocks, m = mid_block, a = attentions, t = transformer_blocks."""
    for long, short in (("down_blocks.", "d"), ("up_blocks.", "u"), ("mid_block", "m")):
        name = name.replace(long, short)
    return name.replace("attentions.", "a").replace("transformer_blocks.", "t")


@pytest.mark.parametrize("case", list(CASES))
def test_record_at_step0(fixture, edit, scripted_unet, case):
    p = CASES[case]
    out, _, recorded = call(scripted_unet, edit, case, 0, record=True)
    assert_latents_close(out, edit.t[f"{p}.step0.unet_out"], f"{p}.step0.unet_out (record)")
    layers = edit.json["attention_layers"]["layers"]
    assert len(recorded) == len(layers)
    checked = 0
    for layer, probs in zip(layers, recorded, strict=True):
        heads, (qh, qw), keys = layer["heads"], layer["query_hw"], layer["keys"]
        assert probs.shape == (2 * heads, qh * qw, keys), layer["name"]
        golden = f"{p}.attn_step0.{shorten(layer['name'])}"
        if golden in edit.t:
            assert_close(probs, edit.t[golden], golden, atol=1e-5, rtol=0)
            checked += 1
    assert checked == len([n for n in edit.t if n.startswith(f"{p}.attn_step0.")]) > 0


@pytest.mark.parametrize("case", list(CASES))
def test_control_changes_the_edited_branch_only(fixture, edit, scripted_unet, case):
    """Without control the edited rows move away from the golden (so the test above can fail); the source rows,
    never modified, stay."""
    p = CASES[case]
    out, blend, _ = call(scripted_unet, edit, case, 0, control=False, collect=False)
    golden = edit.t[f"{p}.step0.unet_out"]
    assert blend == []
    assert_latents_close(out[:3], golden[:3], "uncond and cond_src rows without control")
    bound = 1e-4 + 2e-5 * golden.abs().max().item()
    assert (out[3] - golden[3]).abs().max().item() > 10 * bound


def test_inversion_calls(fixture, edit, scripted_unet):
    """The DDIM inversion's batch-1 UNet calls (no control) through forward_edit and through forward."""
    order = edit.case("p2p_real")["scheduler"]["inversion_order"]
    states = edit.t["real.inv_text_states"]
    empty = torch.zeros(0, dtype=torch.int64)
    for k, t in enumerate(order):
        x = edit.t["real.latents_x0"] if k == 0 else edit.t[f"real.inv.step{k - 1}.latents"]
        expected = edit.t[f"real.inv.step{k}.noise_pred"]
        with torch.no_grad():
            out, blend, recorded = scripted_unet.forward_edit(
                x, torch.tensor(t), states, empty, empty.float(), empty.float(), False, False, False, False
            )
            plain = scripted_unet(x, torch.tensor(t), states)
        assert blend == [] and recorded == []
        assert_latents_close(out, expected, f"real.inv.step{k}.noise_pred (forward_edit)")
        assert_latents_close(plain, expected, f"real.inv.step{k}.noise_pred (forward)")


def test_explicit_attention_equals_sdpa(fixture, edit, scripted_unet):
    """record without control runs every layer with explicit probabilities: the same math as forward's SDPA."""
    x = step_input(edit, "gen", 0)
    t = torch.tensor(edit.case("p2p_generated")["scheduler"]["timesteps"][0])
    states = edit.t["gen.text_states"]
    mapper, alphas, a = edit.t["gen.mapper"], edit.t["gen.alphas"], edit.t["gen.cross_alpha"][0]
    with torch.no_grad():
        out, _, recorded = scripted_unet.forward_edit(x, t, states, mapper, alphas, a, False, False, False, True)
        plain = scripted_unet(x, t, states)
    assert len(recorded) == len(scripted_unet.edit_layer_names)
    assert_close(out, plain, "explicit vs SDPA", atol=1e-5, rtol=1e-5)
    for probs in recorded:
        assert_close(probs.sum(-1), torch.ones(probs.shape[:2]), "probabilities sum to 1", atol=1e-5, rtol=0)


def test_attributes(fixture, edit, scripted_unet):
    table = edit.json["attention_layers"]
    assert scripted_unet.edit_blend_level == table["l_star"]
    assert list(scripted_unet.edit_layer_names) == [layer["name"] for layer in table["layers"]]
    assert list(scripted_unet.edit_blend_layer_names) == [
        layer["name"] for layer in table["layers"] if layer["local_blend"]
    ]


def test_bad_arguments_are_refused(fixture, edit, scripted_unet):
    """A loaded module raises torch.jit.Error; its message ends with the RuntimeError's one line."""
    t = edit.t
    x = step_input(edit, "gen", 0)
    timestep = torch.tensor(801)
    states, mapper, alphas, a = t["gen.text_states"], t["gen.mapper"], t["gen.alphas"], t["gen.cross_alpha"][0]
    with torch.no_grad():
        for flags in [(True, False, False, False), (False, True, False, False), (False, False, True, False)]:
            with pytest.raises(torch.jit.Error, match="4-row editing batch"):
                scripted_unet.forward_edit(x[:2], timestep, states[:2], mapper, alphas, a, *flags)
        with pytest.raises(torch.jit.Error, match="mapper must be int64"):
            scripted_unet.forward_edit(x, timestep, states, mapper[:-1], alphas, a, True, False, False, False)
        with pytest.raises(torch.jit.Error, match="mapper must be int64"):
            scripted_unet.forward_edit(x, timestep, states, mapper.int(), alphas, a, True, False, False, False)
        with pytest.raises(torch.jit.Error, match="alphas and cross_alpha"):
            scripted_unet.forward_edit(x, timestep, states, mapper, alphas[:-1], a, True, False, False, False)


def test_unet_without_edit_layers_refuses_control(fixture, tmp_path):
    config = fixture.config("unet")
    n = len(config["block_out_channels"])
    config.update(down_block_types=["DownBlock2D"] * n, up_block_types=["UpBlock2D"] * n)
    torch.manual_seed(0)
    scripted = script_roundtrip(UNet2DConditionModel(config), tmp_path)
    c = config["cross_attention_dim"]
    x, states, keys = torch.randn(4, config["in_channels"], 8, 8), torch.randn(4, 7, c), torch.zeros(7)
    with torch.no_grad(), pytest.raises(torch.jit.Error, match="no cross-attention down block"):
        scripted.forward_edit(x, torch.tensor(1), states, keys.long(), keys, keys, False, True, False, False)
    with torch.no_grad():
        out, _, _ = scripted.forward_edit(
            x, torch.tensor(1), states, keys.long(), keys, keys, False, False, False, False
        )
    assert_close(out, scripted(x, torch.tensor(1), states), "no control")


def _normalized(code: str) -> str:
    """Without mangled type-name suffixes and source-location comments (their paths depend on what the process
    scripted before, see reproducible.py)."""
    code = re.sub(r"___torch_mangle_\d+\.", "", code)
    return re.sub(r" # \S+:\d+:\d+$", "", code, flags=re.MULTILINE)


def test_forward_graph_is_unchanged_by_forward_edit(fixture):
    """forward compiles to the same TorchScript whether or not the class has forward_edit."""
    unet = build_unet(fixture)
    members = {
        k: v for k, v in vars(UNet2DConditionModel).items() if k not in ("forward_edit", "__dict__", "__weakref__")
    }
    without = type("UNet2DConditionModel", (nn.Module,), members)
    twin = without.__new__(without)
    twin.__dict__.update(unet.__dict__)  # the same submodules, parameters and attributes
    with_edit = torch.jit.script(unet)
    plain = torch.jit.script(twin)
    assert not hasattr(plain, "forward_edit") and hasattr(with_edit, "forward_edit")
    assert _normalized(str(with_edit.forward.graph)) == _normalized(str(plain.forward.graph))
    assert _normalized(with_edit.forward.code) == _normalized(plain.forward.code)


def test_forward_edit_with_lora_adapters(fixture, edit, tmp_path):
    """Attached LoRA adapters (AdaptableLinear) act in forward_edit's explicit attention as in forward."""
    unet = build_unet(fixture)
    torch.manual_seed(1)
    for module in unet.modules():
        if hasattr(module, "lora_down") and module.lora_down is None and module.in_features > 0:
            module.lora_down = torch.randn(2, module.in_features) * 0.1
            module.lora_up = torch.randn(module.out_features, 2) * 0.1
    scripted = script_roundtrip(unet, tmp_path)
    x = step_input(edit, "gen", 0)
    t = torch.tensor(edit.case("p2p_generated")["scheduler"]["timesteps"][0])
    states = edit.t["gen.text_states"]
    mapper, alphas, a = edit.t["gen.mapper"], edit.t["gen.alphas"], edit.t["gen.cross_alpha"][0]
    with torch.no_grad():
        out, _, _ = scripted.forward_edit(x, t, states, mapper, alphas, a, False, False, False, True)
        plain = scripted(x, t, states)
        controlled, _, _ = scripted.forward_edit(x, t, states, mapper, alphas, a, True, True, False, False)
    assert_close(out, plain, "explicit vs SDPA with LoRA", atol=1e-5, rtol=1e-5)
    golden = edit.t["gen.step0.unet_out"]
    bound = 1e-4 + 2e-5 * golden.abs().max().item()
    assert (controlled - golden).abs().max().item() > 10 * bound  # the adapters changed the result


def test_exported_unet_and_manifest(fixture, edit, exported):
    """The `convert` CLI's unet.pt has forward_edit and the attributes; the manifest announces them."""
    folder = exported(fixture)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["exporter_version"] == EXPORTER_VERSION
    assert manifest["capabilities"] == ["attention_control"]
    table = edit.json["attention_layers"]
    sized = ("query_hw", "keys")
    assert manifest["attention_control"] == {
        "l_star": table["l_star"],
        "layers": [{k: v for k, v in layer.items() if k not in sized} for layer in table["layers"]],
    }
    assert manifest["attention_control"] == attention_table(fixture.config("unet")).manifest_entry()
    unet = load_module(folder / "unet.pt")
    assert list(unet.edit_layer_names) == [layer["name"] for layer in manifest["attention_control"]["layers"]]
    assert unet.edit_blend_level == manifest["attention_control"]["l_star"]
    for case, p in CASES.items():
        out, blend, _ = call(unet, edit, case, 0)
        assert_latents_close(out, edit.t[f"{p}.step0.unet_out"], f"{p}.step0.unet_out (exported unet.pt)")
        assert len(blend) == len(unet.edit_blend_layer_names)


@pytest.mark.parametrize("use_linear_projection", [False, True])
def test_other_shapes_table_matches_what_runs(tmp_path, use_linear_projection):
    """Three levels, two layers in one block, odd latent sizes: the recorded and LocalBlend probabilities have the
    shapes the table gives, and the controls leave the source rows alone."""
    from test_unet import _small_config

    config = _small_config(use_linear_projection=use_linear_projection)
    torch.manual_seed(0)
    scripted = script_roundtrip(UNet2DConditionModel(config).eval(), tmp_path)
    hw, keys = (11, 7), 5
    table = attention_table(config, hw, keys)
    sample = torch.randn(4, 4, *hw)
    states = torch.randn(4, keys, config["cross_attention_dim"])
    mapper = torch.tensor([0, -1, 1, 3, 4])
    alphas = torch.ones(keys)  # also where mapper is -1 (the editing goldens have 0 there), to see the last column
    with torch.no_grad():
        out, blend, recorded = scripted.forward_edit(
            sample, torch.tensor(500), states, mapper, alphas, torch.ones(keys), True, True, True, True
        )
        plain = scripted(sample, torch.tensor(500), states)
    assert [tuple(p.shape) for p in recorded] == [
        (2 * layer.heads, layer.query_hw[0] * layer.query_hw[1], layer.keys) for layer in table.layers
    ]
    assert [tuple(p.shape) for p in blend] == [
        (layer.heads, layer.query_hw[0] * layer.query_hw[1], keys) for layer in table.layers if layer.local_blend
    ]
    for layer, probs in zip(table.layers, recorded, strict=True):
        src, edited = probs[: layer.heads], probs[layer.heads :]
        if layer.self_replace:
            assert torch.equal(edited, src), layer.name
        if layer.cross_replace:  # alphas * cross_alpha = 1: exactly the source column mapper[j] (-1: the last)
            for j in range(keys):
                assert torch.equal(edited[..., j], src[..., int(mapper[j])]), (layer.name, j)
    assert_close(out[:3], plain[:3], "rows other than cond_edit", atol=1e-5, rtol=1e-5)
    assert (out[3] - plain[3]).abs().max() > 1e-3

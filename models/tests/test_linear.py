"""layers.Linear: nn.Linear's parameters and math, with the runtime's switch to oneDNN's matmul on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from blipdiff_export.checkpoint import read_checkpoint
from blipdiff_export.export import MODULES, module_class
from blipdiff_export.layers import Linear
from blipdiff_export.unet_blocks import AdaptableLinear
from conftest import script_roundtrip
from torch import nn


def make(in_features: int = 48, out_features: int = 40, bias: bool = True, cls: type = Linear) -> nn.Module:
    torch.manual_seed(0)
    return cls(in_features, out_features, bias=bias).eval()


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x3 = torch.randn(2, 77, 48, generator=g)
    return {
        "2-D": torch.randn(33, 48, generator=g),
        "3-D": x3,
        "transposed": torch.randn(2, 48, 77, generator=g).transpose(1, 2),
        "strided": x3[:, ::2],
    }


@pytest.mark.parametrize("bias", [True, False])
def test_switched_off_is_nn_linear_bit_for_bit(tmp_path, bias):
    eager = make(bias=bias)
    scripted = script_roundtrip(eager, tmp_path)
    assert scripted.cpu_onednn is False
    assert sorted(eager.state_dict()) == (["bias", "weight"] if bias else ["weight"])
    with torch.no_grad():
        for name, x in inputs().items():
            assert torch.equal(scripted(x), F.linear(x, eager.weight, eager.bias)), name


@pytest.mark.parametrize("bias", [True, False])
def test_switched_on_matches_within_float32_rounding(tmp_path, bias):
    eager = make(bias=bias)
    scripted = script_roundtrip(eager, tmp_path)
    scripted.cpu_onednn = True
    with torch.no_grad():
        for name, x in inputs().items():
            got = scripted(x)
            want = F.linear(x, eager.weight, eager.bias)
            assert got.shape == want.shape, name
            assert got.dtype == torch.float32, name
            # Same float32 product, another summation order.
            assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item(), name


def test_switched_on_with_gradients_uses_aten_and_trains(tmp_path):
    """oneDNN's pointwise op has no backward: with gradients on, the switch is ignored, so fine-tuning works."""
    eager = make()
    scripted = script_roundtrip(eager, tmp_path)
    scripted.cpu_onednn = True
    x = inputs()["3-D"].requires_grad_(True)
    y = scripted(x)
    assert torch.equal(y, F.linear(x, eager.weight, eager.bias))
    y.square().sum().backward()
    assert x.grad is not None and scripted.weight.grad is not None
    assert scripted.weight.grad.abs().sum().item() > 0


def test_adaptable_linear_keeps_its_adapters_with_the_switch(tmp_path):
    eager = make(cls=AdaptableLinear)
    scripted = script_roundtrip(eager, tmp_path)
    scripted.cpu_onednn = True
    g = torch.Generator().manual_seed(2)
    down, up = torch.randn(4, 48, generator=g), torch.randn(40, 4, generator=g)
    scripted.lora_down, scripted.lora_up, scripted.lora_scale = down, up, 0.5
    x = inputs()["3-D"]
    with torch.no_grad():
        want = F.linear(x, eager.weight, eager.bias) + 0.5 * F.linear(F.linear(x, down), up)
        got = scripted(x)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_every_linear_layer_of_every_module_has_the_switch(fixture):
    """No plain nn.Linear is left in an exported module: each one would miss the runtime's oneDNN path."""
    configs = dict(read_checkpoint(fixture.ckpt, with_controlnet=False).configs)
    if fixture.ckpt_controlnet.is_dir():
        configs["controlnet"] = fixture.config("controlnet", "ckpt-controlnet")
    seen = 0
    for spec in MODULES:
        if spec.component not in configs:
            continue
        module = module_class(spec)(configs[spec.component])
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Linear):
                assert isinstance(sub, Linear), f"{spec.name}.{name} is a plain nn.Linear"
                seen += 1
    assert seen > 0

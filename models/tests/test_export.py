"""End to end: `convert` each fixture checkpoint, load the written .pt files and reproduce the golden tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from blipdiff_export.export import convert, sha256_file
from blipdiff_export.module_files import load_module
from conftest import Fixture, assert_close

_loaded: dict[tuple[Path, str], torch.jit.ScriptModule] = {}


def load(folder: Path, name: str) -> torch.jit.ScriptModule:
    key = (folder, name)
    if key not in _loaded:
        _loaded[key] = load_module(folder / f"{name}.pt")
    return _loaded[key]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# ------------------------------------------------------------------------------------- golden checks


def check_qformer(fx: Fixture, folder: Path) -> None:
    qformer = load(folder, "qformer")
    images = {"dog": fx["pre.ref.pixel_values"], "teddy": fx["pre.ref.pixel_values"]}
    images["batch2"] = torch.cat([fx["pre.ref.pixel_values"], fx["pre.large.pixel_values"]])
    with torch.no_grad():
        for case, pixels in images.items():
            out = qformer(pixels, fx[f"qformer.{case}.input_ids"], fx[f"qformer.{case}.attention_mask"])
            assert_close(out, fx[f"qformer.{case}.query_embeds"], f"qformer.{case}.query_embeds")


def check_text(fx: Fixture, folder: Path) -> None:
    text = load(folder, "text_encoder")
    pos = manifest(folder)["config"]["ctx_begin_pos"]
    with torch.no_grad():
        for case in ("dog", "teddy"):
            out = text(fx[f"text.{case}.input_ids"], fx[f"qformer.{case}.query_embeds"], pos)
            assert_close(out, fx[f"text.{case}.last_hidden_state"], f"text.{case}")
        for case in ("uncond_empty", "uncond_neg"):
            out = text(fx[f"text.{case}.input_ids"], None, pos)
            assert_close(out, fx[f"text.{case}.last_hidden_state"], f"text.{case}")
        # Batch 2: "teddy" is padded with <|endoftext|>, "dog" is truncated; rows must not interact.
        ids = torch.cat([fx["text.dog.input_ids"], fx["text.teddy.input_ids"]])
        ctx = torch.cat([fx["qformer.dog.query_embeds"], fx["qformer.teddy.query_embeds"]])
        expected = torch.cat([fx["text.dog.last_hidden_state"], fx["text.teddy.last_hidden_state"]])
        assert_close(text(ids, ctx, pos), expected, "text.batch2")
        ids = torch.cat([fx["text.uncond_empty.input_ids"], fx["text.uncond_neg.input_ids"]])
        expected = torch.cat([fx["text.uncond_empty.last_hidden_state"], fx["text.uncond_neg.last_hidden_state"]])
        assert_close(text(ids, None, pos), expected, "text.uncond_batch2")


def down_residuals(fx: Fixture, scale: str) -> list[torch.Tensor]:
    count = fx.json["cases"]["controlnet"]["num_down_residuals"]
    return [fx[f"controlnet.{scale}.down.{i}"] for i in range(count)]


def check_unet(fx: Fixture, folder: Path) -> None:
    unet = load(folder, "unet")
    sample, states = fx["unet.latents"], fx["unet.encoder_hidden_states"]
    batch = sample.shape[0]
    with torch.no_grad():
        for t in (981, 1):
            out = unet(sample, torch.tensor(t, dtype=torch.int64), states, None, None)
            assert_close(out, fx[f"unet.t{t}.sample"], f"unet.t{t}")
        out = unet(sample, torch.full((batch,), 981, dtype=torch.int64), states, None, None)
        assert_close(out, fx["unet.t981.sample"], "unet.t981 (timestep [B])")
        out = unet(sample, torch.tensor(981), states, down_residuals(fx, "s1"), fx["controlnet.s1.mid"])
        assert_close(out, fx["unet.t981_res.sample"], "unet.t981_res")


def check_vae(fx: Fixture, folder: Path) -> None:
    with torch.no_grad():
        assert_close(load(folder, "vae_decoder")(fx["vae.decoder_input"]), fx["vae.decoded"], "vae.decoded")
        mean, logvar = load(folder, "vae_encoder")(fx["vae_enc.image"])
        assert_close(mean, fx["vae_enc.mean"], "vae_enc.mean")
        assert_close(logvar, fx["vae_enc.logvar"], "vae_enc.logvar")


def check_controlnet(fx: Fixture, folder: Path) -> None:
    controlnet = load(folder, "controlnet")
    for scale, value in (("s1", 1.0), ("s05", 0.5)):
        with torch.no_grad():
            down, mid = controlnet(
                fx["unet.latents"], torch.tensor(981), fx["unet.encoder_hidden_states"], fx["controlnet.cond"], value
            )
        expected = down_residuals(fx, scale)
        assert len(down) == len(expected)
        for i, (a, b) in enumerate(zip(down, expected, strict=True)):
            assert_close(a, b, f"controlnet.{scale}.down.{i}")
        assert_close(mid, fx[f"controlnet.{scale}.mid"], f"controlnet.{scale}.mid")


def test_qformer_golden(fixture, exported):
    check_qformer(fixture, exported(fixture))


def test_text_encoder_golden(fixture, exported):
    check_text(fixture, exported(fixture))


def test_unet_golden(fixture, exported):
    check_unet(fixture, exported(fixture))


def test_vae_golden(fixture, exported):
    check_vae(fixture, exported(fixture))


def test_controlnet_golden(fixture, exported):
    folder = exported(fixture, "ckpt-controlnet")
    check_controlnet(fixture, folder)
    check_unet(fixture, folder)


# ------------------------------------------------------------------------------------------ manifest


def test_manifest_content(fixture, exported):
    folder = exported(fixture)
    m = manifest(folder)
    text = fixture.config("text_encoder")
    qformer = fixture.config("qformer")
    unet = fixture.config("unet")
    vae = fixture.config("vae")
    index = json.loads((fixture.ckpt / "model_index.json").read_text())
    proc = json.loads((fixture.ckpt / "image_processor" / "preprocessor_config.json").read_text())
    scheduler = json.loads((fixture.ckpt / "scheduler" / "scheduler_config.json").read_text())
    golden = fixture.json["cases"]["qformer"]

    assert m["format"] == "blipdiff-torchscript" and m["format_version"] == 2
    assert m["source"]["checkpoint"] == f"{fixture.name}/ckpt"
    assert m["source"]["pipeline_class"] == "BlipDiffusionPipeline"
    assert m["source"]["diffusers_version"] == index["_diffusers_version"]
    assert m["source"]["random_weights"] is False
    assert m["source"]["torch_version"] == str(torch.__version__)
    assert sorted(m["modules"]) == ["qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"]
    weights = [entry["weights"] for entry in m["modules"].values()]
    assert [w["file"] for w in weights] == [f"{name}.safetensors" for name in m["modules"]]
    for entry in list(m["modules"].values()) + weights + list(m["tokenizers"].values()):
        assert sha256_file(folder / entry["file"]) == entry["sha256"]
    assert m["scheduler"] == scheduler
    c = m["config"]
    assert c == {
        "num_query_tokens": qformer["num_query_tokens"],
        "ctx_begin_pos": index["ctx_begin_pos"],
        "text_max_length": 77,
        "text_hidden_size": text["hidden_size"],
        "cross_attention_dim": unet["cross_attention_dim"],
        "qformer_hidden_size": qformer["qformer_config"]["hidden_size"],
        "qformer_max_text_length": qformer["qformer_config"]["max_position_embeddings"],
        "image_size": proc["size"]["height"],
        "image_mean": proc["image_mean"],
        "image_std": proc["image_std"],
        "image_resample": 3,
        "latent_channels": unet["in_channels"],
        "latent_scale": 2 ** (len(unet["block_out_channels"]) - 1),
        "vae_scaling_factor": vae["scaling_factor"],
        "vae_scale": 2 ** (len(vae["block_out_channels"]) - 1),
        "unet_sample_size": unet["sample_size"],
        "unet_block_out_channels": unet["block_out_channels"],
        "has_controlnet": False,
    }
    assert m["tokenizers"]["clip"] == {
        "file": "tokenizer/tokenizer.json",
        "sha256": m["tokenizers"]["clip"]["sha256"],
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    q = m["tokenizers"]["qformer"]
    assert q["file"] == "qformer_tokenizer/tokenizer.json"
    assert (q["cls_token_id"], q["sep_token_id"], q["pad_token_id"], q["dec_token_id"]) == (
        golden["cls_token_id"],
        golden["sep_token_id"],
        golden["pad_token_id"],
        golden["dec_token_id"],
    )
    assert q["do_lower_case"] is True
    # The checkpoint's tokenizer.json is copied unchanged.
    assert (folder / "tokenizer" / "tokenizer.json").read_bytes() == (
        fixture.ckpt / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    raw = (folder / "manifest.json").read_text()
    assert raw.endswith("}\n") and raw == json.dumps(json.loads(raw), indent=2, sort_keys=True) + "\n"
    assert "/work" not in raw and str(Path.home()) not in raw and str(folder) not in raw
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "manifest.json",
            "qformer_tokenizer",
            "tokenizer",
            *(f"{n}.pt" for n in m["modules"]),
            *(f"{n}.safetensors" for n in m["modules"]),
        ]
    )


@pytest.mark.parametrize("positions", [40, None], ids=["set", "default"])
def test_qformer_max_text_length(fixture, tmp_path, positions):
    """The manifest's limit is the Q-Former's position table: a text that long runs, one id more cannot."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fixture.ckpt, ckpt)
    path = ckpt / "qformer" / "config.json"
    config = json.loads(path.read_text())
    config["qformer_config"].pop("max_position_embeddings")
    if positions is not None:
        config["qformer_config"]["max_position_embeddings"] = positions
    path.write_text(json.dumps(config))
    folder = convert(str(ckpt), tmp_path / "out", random_weights=True, log=None)
    limit = manifest(folder)["config"]["qformer_max_text_length"]
    assert limit == (positions if positions is not None else 512)  # transformers' Blip2QFormerConfig default
    qformer = load_module(folder / "qformer.pt")
    pixels = fixture["pre.ref.pixel_values"]
    with torch.no_grad():
        for length in (limit, limit + 1):
            ids = torch.full((1, length), 7, dtype=torch.long)
            if length == limit:
                assert qformer(pixels, ids, torch.ones_like(ids)).shape[0] == 1
            else:
                with pytest.raises(torch.jit.Error, match=f"more than its {limit} positions"):
                    qformer(pixels, ids, torch.ones_like(ids))


def test_controlnet_manifest(fixture, exported):
    m = manifest(exported(fixture, "ckpt-controlnet"))
    plain = manifest(exported(fixture))
    assert m["source"]["pipeline_class"] == "BlipDiffusionControlNetPipeline"
    assert m["config"]["has_controlnet"] is True
    assert sorted(m["modules"]) == ["controlnet", "qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder"]
    # Same weights in both checkpoints -> byte-identical module files.
    for name, entry in plain["modules"].items():
        assert m["modules"][name]["sha256"] == entry["sha256"], name
        assert m["modules"][name]["weights"]["sha256"] == entry["weights"]["sha256"], name


def test_export_twice_is_byte_identical(fixture, tmp_path):
    """In one process; test_convert_cli checks two fresh processes with different hash seeds."""
    first = convert(str(fixture.ckpt), tmp_path / "first", log=None)
    second = convert(str(fixture.ckpt), tmp_path / "again", log=None)
    assert (second / "manifest.json").read_bytes() == (first / "manifest.json").read_bytes()
    for name in manifest(first)["modules"]:
        assert (second / f"{name}.pt").read_bytes() == (first / f"{name}.pt").read_bytes(), name


# ------------------------------------------------------------------------------------ published layout


def make_published_layout(fx: Fixture, dest: Path) -> Path:
    """tiny-a/ckpt rewritten the way the Salesforce hub checkpoint is laid out (fixtures README item 23)."""
    from safetensors.torch import load_file

    shutil.copytree(fx.ckpt, dest)
    for component in ("qformer", "text_encoder"):
        state = load_file(str(dest / component / "model.safetensors"))
        (dest / component / "model.safetensors").unlink()
        torch.save(state, dest / component / "pytorch_model.bin")
    index = json.loads((dest / "model_index.json").read_text())
    for component in ("qformer", "text_encoder", "image_processor"):
        index[component][0] = "blip_diffusion"
    proc = json.loads((dest / "image_processor" / "preprocessor_config.json").read_text())
    index["mean"], index["std"] = proc["image_mean"], proc["image_std"]
    index["_diffusers_version"] = "0.18.0.dev0"
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
    scheduler = json.loads((dest / "scheduler" / "scheduler_config.json").read_text())
    scheduler["steps_offset"] = 0
    (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    shutil.rmtree(dest / "qformer_tokenizer")
    (dest / "tokenizer" / "tokenizer.json").unlink()  # SD-1.5's tokenizer/ has only vocab.json + merges.txt
    # Leftovers of the published repo that model_index.json does not list.
    (dest / "vision_encoder").mkdir()
    (dest / "vision_encoder" / "config.json").write_text("not json")
    shutil.copytree(fx.ckpt_controlnet / "controlnet", dest / "controlnet")
    return dest


def test_published_layout(fixture, exported, tmp_path):
    ckpt = make_published_layout(fixture, tmp_path / "published")
    vocab = fixture.ckpt / "qformer_tokenizer" / "vocab.txt"
    folder = convert(str(ckpt), tmp_path / "out", qformer_vocab=vocab, log=None)
    m = manifest(folder)
    reference = manifest(exported(fixture))
    assert m["scheduler"]["steps_offset"] == 0
    assert m["source"]["diffusers_version"] == "0.18.0.dev0"
    assert m["config"] == reference["config"]
    for name in ("clip", "qformer"):  # built, not copied: same ids, other bytes
        assert {**m["tokenizers"][name], "sha256": ""} == {**reference["tokenizers"][name], "sha256": ""}
    assert "controlnet" not in m["modules"]
    # Built tokenizer files parse to the checkpoint's own tokenizer.json.
    for sub in ("tokenizer", "qformer_tokenizer"):
        built = json.loads((folder / sub / "tokenizer.json").read_text())
        assert built == json.loads((fixture.ckpt / sub / "tokenizer.json").read_text()), sub
    check_qformer(fixture, folder)
    check_text(fixture, folder)
    for name in reference["modules"]:
        ours = load_module(folder / f"{name}.pt").state_dict()
        theirs = load(exported(fixture), name).state_dict()
        assert sorted(ours) == sorted(theirs), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name

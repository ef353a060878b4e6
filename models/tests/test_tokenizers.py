"""Tokenizer files: built and copied forms reproduce every id of golden.json's tokenizer_checks."""

from __future__ import annotations

import json
import shutil

import pytest
import tokenizers  # a test prerequisite (models/requirements.txt): missing, the tests fail
from blipdiff_export.errors import ExportError
from blipdiff_export.tokenizers import (
    build_clip_tokenizer_json,
    build_qformer_tokenizer_json,
    read_merges,
    read_wordpiece_vocab,
    resolve_qformer_source,
    write_clip_tokenizer,
    write_qformer_tokenizer,
)


def encode_all(path, checks):
    tok = tokenizers.Tokenizer.from_file(str(path))
    return [tok.encode(c["text"]).ids for c in checks], [c["ids"] for c in checks]


def test_built_clip_json_equals_the_checkpoints(fixture):
    src = fixture.ckpt / "tokenizer"
    built = build_clip_tokenizer_json(
        json.loads((src / "vocab.json").read_text()),
        read_merges(src / "merges.txt"),
        json.loads((src / "tokenizer_config.json").read_text()),
    )
    assert built == json.loads((src / "tokenizer.json").read_text())


def test_built_qformer_json_equals_the_checkpoints(fixture):
    src = fixture.ckpt / "qformer_tokenizer"
    built = build_qformer_tokenizer_json(read_wordpiece_vocab(src / "vocab.txt"))
    assert built == json.loads((src / "tokenizer.json").read_text())


@pytest.mark.parametrize("form", ["copied", "built"])
def test_clip_ids(fixture, tmp_path, form):
    src = tmp_path / "src"
    shutil.copytree(fixture.ckpt / "tokenizer", src)
    if form == "built":
        (src / "tokenizer.json").unlink()
    info = write_clip_tokenizer(src, tmp_path / "out" / "tokenizer.json")
    assert (info["bos_token_id"], info["eos_token_id"], info["pad_token_id"]) == (49406, 49407, 49407)
    actual, expected = encode_all(tmp_path / "out" / "tokenizer.json", fixture.json["tokenizer_checks"]["clip"])
    assert actual == expected


@pytest.mark.parametrize("form", ["tokenizer.json", "vocab.txt"])
def test_qformer_ids(fixture, tmp_path, form):
    golden = fixture.json["cases"]["qformer"]
    vocab_size = fixture.config("qformer")["qformer_config"]["vocab_size"]
    info = write_qformer_tokenizer(fixture.ckpt / "qformer_tokenizer" / form, tmp_path / "tokenizer.json", vocab_size)
    assert info == {
        "cls_token_id": golden["cls_token_id"],
        "sep_token_id": golden["sep_token_id"],
        "pad_token_id": golden["pad_token_id"],
        "dec_token_id": golden["dec_token_id"],
        "do_lower_case": True,
    }
    checks = fixture.json["tokenizer_checks"]["qformer"]
    actual, expected = encode_all(tmp_path / "tokenizer.json", checks)
    assert actual == expected
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [tok.encode(c["text"]).tokens for c in checks] == [c["tokens"] for c in checks]
    assert tok.token_to_id("[DEC]") == golden["dec_token_id"] == vocab_size - 1
    # Padding to the longest in the batch with [PAD], as the reference's tokenizer call does.
    tok.enable_padding(pad_id=golden["pad_token_id"], pad_token="[PAD]")
    batch = tok.encode_batch(["dog", "teddy bear"])
    assert [e.ids for e in batch] == golden["cases"]["batch2"]["input_ids"]


def test_exported_tokenizer_files(fixture, exported):
    folder = exported(fixture)
    for name, sub in (("clip", "tokenizer"), ("qformer", "qformer_tokenizer")):
        actual, expected = encode_all(folder / sub / "tokenizer.json", fixture.json["tokenizer_checks"][name])
        assert actual == expected, name


def test_qformer_tokenizer_json_without_dec_gets_it(fixture, tmp_path):
    tok = json.loads((fixture.ckpt / "qformer_tokenizer" / "tokenizer.json").read_text())
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["content"] != "[DEC]"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    info = write_qformer_tokenizer(tmp_path / "tokenizer.json", tmp_path / "out.json")
    assert info["dec_token_id"] == fixture.json["cases"]["qformer"]["dec_token_id"]


def test_wrong_vocab_size_is_an_error(fixture, tmp_path):
    with pytest.raises(ExportError, match="vocab_size is 30523.*--qformer-vocab"):
        write_qformer_tokenizer(fixture.ckpt / "qformer_tokenizer" / "vocab.txt", tmp_path / "t.json", 30523)


def isolate_hf_cache(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_qformer_vocab_from_hf_cache(fixture, tmp_path, monkeypatch):
    isolate_hf_cache(monkeypatch, tmp_path)
    snapshot = tmp_path / "hf" / "hub" / "models--bert-base-uncased" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    shutil.copy(fixture.ckpt / "qformer_tokenizer" / "vocab.txt", snapshot / "vocab.txt")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert resolve_qformer_source(None, None) == snapshot / "vocab.txt"
    explicit = tmp_path / "explicit.txt"
    explicit.write_text("[PAD]\n")
    assert resolve_qformer_source(fixture.ckpt / "qformer_tokenizer", explicit) == explicit


def test_no_qformer_vocab_says_what_is_needed(tmp_path, monkeypatch):
    isolate_hf_cache(monkeypatch, tmp_path)
    with pytest.raises(ExportError) as info:
        resolve_qformer_source(None, None)
    assert (
        "--qformer-vocab" in str(info.value)
        and "bert-base-uncased" in str(info.value)
        and "vocab.txt" in str(info.value)
    )
    with pytest.raises(ExportError, match="no such file"):
        resolve_qformer_source(None, tmp_path / "missing.txt")


def test_not_a_clip_folder(tmp_path):
    with pytest.raises(ExportError, match="--tokenizer-dir"):
        write_clip_tokenizer(None, tmp_path / "t.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="neither tokenizer.json nor vocab.json"):
        write_clip_tokenizer(tmp_path / "empty", tmp_path / "t.json")


def test_random_weights_accept_a_smaller_vocab(fixture, tmp_path):
    vocab = fixture.ckpt / "qformer_tokenizer" / "vocab.txt"
    info = write_qformer_tokenizer(vocab, tmp_path / "t.json", 30523, allow_smaller=True)
    assert "vocab_size is 30523" in info["warning"]
    with pytest.raises(ExportError, match="vocab_size is 100"):  # ids beyond the embedding would crash
        write_qformer_tokenizer(vocab, tmp_path / "t.json", 100, allow_smaller=True)

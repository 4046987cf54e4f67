"""`apply_gguf` end to end on GGUFs built by code: a new file (or split set) that differs from the source only in
the edited rows and the `patchkit.*` metadata; `--force`, dry runs and re-apply refusals; and in-place patching
with its journal, sidecar, undo and crash recovery.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_builders import SAMPLE_KV, read_metadata, read_tensors, split_paths, tiny_llama

import patchkit.edit.gguf_apply as ga
from patchkit.edit.gguf_apply import apply_gguf, undo_gguf_in_place
from patchkit.edit.gguf_blocks import FORMATS
from patchkit.edit.gguf_plan import provenance_of
from patchkit.errors import ApplyError
from patchkit.model.gguf_header import scan_gguf_header, validate_gguf
from patchkit.model.gguf_model import open_gguf_model

# Comments, odd spacing and a trailing blank line: `patchkit.recipe` must carry the text exactly as written.
RECIPE = """\
# test recipe (kept verbatim)
patchkit: 1
name: t1
model: {architecture: llama}
source: {kind: manual}
edits:
  - {layer: 0, neuron: 3, op: invert}
  - {layer: 1, neuron: [5, 7], op: scale, factor: 2.0}
  - {layer: 1, neuron: 9,      op: zero}
  - {layer: 0, neuron: 10, op: scale, factor: -2.0}

"""
#: (tensor, row) -> factor the recipe multiplies it by
EDITED = {
    ("blk.0.ffn_up.weight", 3): -1.0,
    ("blk.1.ffn_up.weight", 5): 2.0,
    ("blk.1.ffn_up.weight", 7): 2.0,
    ("blk.1.ffn_up.weight", 9): 0.0,
    ("blk.0.ffn_up.weight", 10): -2.0,
}
OTHER = RECIPE.replace("name: t1", "name: t2").replace("neuron: 3, op: invert", "neuron: 4, op: invert")
TYPES = ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "IQ4_NL", "F16", "BF16"]


def _recipe(tmp_path: Path, text: str = RECIPE, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_edited(src: Path, out: Path, edited: dict[tuple[str, int], float] = EDITED) -> None:
    """Edited rows de-quantize to f x the original; every other row and tensor is byte-identical."""
    a, b = read_tensors(src), read_tensors(out)
    assert a.keys() == b.keys()
    touched = {name for name, _ in edited}
    for name, (type_name, raw, values) in a.items():
        type_b, raw_b, values_b = b[name]
        assert type_b == type_name
        if name not in touched:
            assert raw_b == raw, f"{name} changed"
            continue
        rows = values.shape[0]
        ra = np.frombuffer(raw, dtype=np.uint8).reshape(rows, -1)
        rb = np.frombuffer(raw_b, dtype=np.uint8).reshape(rows, -1)
        for row in range(rows):
            f = edited.get((name, row))
            if f is None:
                assert np.array_equal(ra[row], rb[row]), f"{name} row {row} changed"
            else:
                assert np.array_equal(values_b[row], np.float32(f) * values[row]), f"{name} row {row} is not x{f:g}"
                assert not np.array_equal(ra[row], rb[row])


def _scale_offsets(path: Path, edited: dict[tuple[str, int], float] = EDITED) -> set[int]:
    """Absolute file offsets of the scale-field bytes of every edited row (every byte for F16/BF16/F32 rows),
    computed from the gguf reader's tensor offsets and ggml-common.h's layouts."""
    reader = gguf.GGUFReader(str(path))
    where = {t.name: t for t in reader.tensors}
    out: set[int] = set()
    for name, row in edited:
        if name not in where:
            continue
        t = where[name]
        fmt = FORMATS[gguf.GGMLQuantizationType(t.tensor_type).name]
        row_bytes = int(t.n_bytes) // int(t.shape[1])
        start = int(t.data_offset) + row * row_bytes
        if fmt.kind == "element":
            out.update(range(start, start + row_bytes))
            continue
        fields = {"fp16": [b for o in fmt.scales for b in (o, o + 1)], "iq1m": range(48, 56)}[fmt.kind]
        for block in range(start, start + row_bytes, fmt.block_bytes):
            out.update(block + f for f in fields)
    return out


def _diff(a: bytes, b: bytes) -> set[int]:
    assert len(a) == len(b)
    return set(np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8)).tolist())


# --- a new file --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
def test_apply_edits_only_the_recipe_rows_and_records_provenance(tmp_path, type_name):
    """The output holds f x each edited row, every other byte of tensor data as it was, every original metadata
    entry with its value, and the patchkit.* provenance; the source is not touched."""
    src = tiny_llama(tmp_path / "m.gguf", type_name, kv=SAMPLE_KV)
    recipe = _recipe(tmp_path)
    before = _sha(src)
    out = tmp_path / "out" / "edited.gguf"
    result = apply_gguf(recipe, model=src, out=out)

    assert result.out == out and result.files == [out] and not result.dry_run
    assert _sha(src) == before, "the source changed"
    _check_edited(src, out)
    validate_gguf(out)  # the bounded walk and the gguf reader both accept the output

    meta_src, meta_out = read_metadata(src), read_metadata(out)
    for key, value in meta_src.items():
        assert meta_out[key] == value, key
    added = set(meta_out) - set(meta_src)
    assert added == {
        "patchkit.version",
        "patchkit.recipe",
        "patchkit.recipe.sha256",
        "patchkit.source.sha256",
        "patchkit.provenance",
    }
    assert meta_out["patchkit.recipe"] == RECIPE
    assert meta_out["patchkit.recipe.sha256"] == hashlib.sha256(RECIPE.encode()).hexdigest()
    assert meta_out["patchkit.source.sha256"] == before
    assert meta_out["patchkit.version"]
    prov = json.loads(meta_out["patchkit.provenance"])
    got = {(e["tensor"], e["rows"][0]): (e["factor"], e["type"]) for e in prov["edits"]}
    assert got == {k: (f, type_name) for k, f in EDITED.items()}
    assert prov["base"]["files"] == [{"name": "m.gguf", "size": src.stat().st_size}]
    # what the library reads back agrees with what the reader sees
    doc = provenance_of(scan_gguf_header(out))
    assert doc is not None and doc["source_sha256"] == [before] and doc["recipe"]["text"] == RECIPE
    assert result.provenance is not None and result.provenance["source_sha256"] == [before]
    assert os.listdir(out.parent) == ["edited.gguf"], "a temp file was left behind"


def test_an_inexact_factor_is_within_fp16_rounding(tmp_path):
    """x3 on a Q8_0 row: every block is 3x the original up to the fp16 rounding of its scale (2^-11 relative)."""
    src = tiny_llama(tmp_path / "m.gguf", "Q8_0")
    text = RECIPE.split("edits:")[0] + "edits:\n  - {layer: 1, neuron: 2, op: scale, factor: 3.0}\n"
    out = apply_gguf(_recipe(tmp_path, text), model=src, out=tmp_path / "o.gguf").out
    x = read_tensors(src)["blk.1.ffn_up.weight"][2][2].reshape(-1, 32)
    y = read_tensors(out)["blk.1.ffn_up.weight"][2][2].reshape(-1, 32)
    bound = 2.0**-11 * 3 * np.abs(x).max(axis=1) + 1e-12
    assert np.all(np.abs(y - 3 * x).max(axis=1) <= bound)
    assert np.any(y != x)


def test_reapplying_the_same_recipe_to_its_output_is_refused(tmp_path):
    """An output carries its recipe's sha256: applying that recipe again would stack the edits. Another recipe
    may build on it, and records the first as its parent."""
    src = tiny_llama(tmp_path / "m.gguf", "Q4_K")
    out = apply_gguf(_recipe(tmp_path), model=src, out=tmp_path / "a.gguf").out
    with pytest.raises(ApplyError, match="already") as info:
        apply_gguf(_recipe(tmp_path), model=out, out=tmp_path / "b.gguf")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "b.gguf").exists()
    second = apply_gguf(_recipe(tmp_path, OTHER, "o.yaml"), model=out, out=tmp_path / "c.gguf")
    assert second.provenance["parent"]["recipe"] == "t1"
    meta = read_metadata(tmp_path / "c.gguf")
    assert meta["patchkit.recipe"] == OTHER  # the earlier patchkit.* entries are replaced, not duplicated
    assert meta["patchkit.source.sha256"] == _sha(out)


def test_force_replaces_only_a_patchkit_output(tmp_path):
    """An existing output is refused without force; with force, a GGUF an earlier apply wrote is replaced, but a
    plain GGUF or any other file never is."""
    src = tiny_llama(tmp_path / "m.gguf", "Q8_0")
    recipe, other = _recipe(tmp_path), _recipe(tmp_path, OTHER, "o.yaml")
    plain = tmp_path / "plain.gguf"
    shutil.copyfile(src, plain)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    for victim in (plain, text):
        before = victim.read_bytes()
        for force in (False, True):
            with pytest.raises(ApplyError) as info:
                apply_gguf(recipe, model=src, out=victim, force=force)
            assert "\n" not in str(info.value)
            assert victim.read_bytes() == before
        assert "not a GGUF written by patchkit" in str(info.value)

    out = tmp_path / "out.gguf"
    apply_gguf(recipe, model=src, out=out)
    with pytest.raises(ApplyError, match="already exists"):
        apply_gguf(other, model=src, out=out)
    assert read_metadata(out)["patchkit.recipe"] == RECIPE
    apply_gguf(other, model=src, out=out, force=True)
    assert read_metadata(out)["patchkit.recipe"] == OTHER
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.gguf",
        "notes.gguf",
        "o.yaml",
        "out.gguf",
        "plain.gguf",
        "r.yaml",
    ]


def test_non_default_alignment_and_a_long_recipe(tmp_path):
    """general.alignment 64 is kept (tensor offsets stay valid in the regrown header), and a recipe longer than
    the header walk keeps in memory (4 KiB) is still written verbatim and still recognised on re-apply."""
    src = tiny_llama(tmp_path / "m.gguf", "Q4_K", kv={"general.alignment": (64, gguf.GGUFValueType.UINT32)})
    text = RECIPE.replace("# test recipe", "# " + "long " * 2000)
    recipe = _recipe(tmp_path, text)
    out = apply_gguf(recipe, model=src, out=tmp_path / "o.gguf").out
    meta = read_metadata(out)
    assert meta["general.alignment"] == 64 and meta["patchkit.recipe"] == text
    assert all(int(t.data_offset) % 64 == 0 for t in gguf.GGUFReader(str(out)).tensors)
    _check_edited(src, out)
    with pytest.raises(ApplyError, match="already"):
        apply_gguf(recipe, model=out, out=tmp_path / "again.gguf")


def test_dry_run_writes_nothing(tmp_path):
    """A dry run plans (and refuses) like a real one, and leaves the directory as it was."""
    src = tiny_llama(tmp_path / "m.gguf", "Q4_K")
    recipe = _recipe(tmp_path)
    listing = sorted(os.listdir(tmp_path))
    result = apply_gguf(recipe, model=src, out=tmp_path / "o.gguf", dry_run=True)
    assert result.dry_run and result.provenance is None
    assert len(result.plan.edits) == len(EDITED)
    assert result.plan.bytes_edited > 0
    assert sorted(os.listdir(tmp_path)) == listing
    result = apply_gguf(recipe, model=src, in_place=True, dry_run=True)
    assert sorted(os.listdir(tmp_path)) == listing


def test_default_and_directory_outputs(tmp_path, monkeypatch):
    """No -o: `./<recipe name>.gguf`; an existing directory as -o: the source's file name inside it."""
    src = tiny_llama(tmp_path / "m.gguf", "Q8_0")
    monkeypatch.chdir(tmp_path)
    assert apply_gguf(_recipe(tmp_path), model=src).out == tmp_path / "t1.gguf"
    (tmp_path / "d").mkdir()
    assert apply_gguf(_recipe(tmp_path), model=src, out=tmp_path / "d").out == tmp_path / "d" / "m.gguf"
    _check_edited(src, tmp_path / "d" / "m.gguf")


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    """A write that fails half way (disk full) leaves no output and no temp file, for a file and a split set."""
    single = tiny_llama(tmp_path / "m.gguf", "Q8_0")
    split = tiny_llama(tmp_path / "s.gguf", "Q8_0", blocks=3, split_max_tensors=4)
    real = ga._write_part

    def full(header, plan, part, dst, *args, **kw):
        real(header, plan, part, dst, *args, **kw)
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(ga, "_write_part", full)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for model, out in ((single, out_dir / "x.gguf"), (split, out_dir / "set")):
        with pytest.raises(ApplyError, match="No space left") as info:
            apply_gguf(_recipe(tmp_path), model=model, out=out)
        assert "\n" not in str(info.value)
        assert os.listdir(out_dir) == []


# --- split sets ----------------------------------------------------------------------------------------------


def test_split_set_edit_in_the_second_part(tmp_path):
    """A 3-part split set (block i in part i+1) with edits in block 1: the output directory holds the three
    parts under their own names; part 3 is a byte copy, part 2 differs only in scale bytes of the edited rows,
    part 1 only in its metadata (one source sha256 per part, in order)."""
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    first = tiny_llama(src_dir / "m.gguf", "Q4_K", blocks=3, split_max_tensors=4, kv=SAMPLE_KV)
    parts = split_paths(first)
    assert [p.name for p in parts] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    edited = {k: f for k, f in EDITED.items() if k[0].startswith("blk.1.")}
    text = RECIPE.split("edits:")[0] + (
        "edits:\n  - {layer: 1, neuron: [5, 7], op: scale, factor: 2.0}\n  - {layer: 1, neuron: 9, op: zero}\n"
    )
    hashes = [_sha(p) for p in parts]
    out = tmp_path / "outset"
    result = apply_gguf(_recipe(tmp_path, text), model=parts[1], out=out)  # any part names the set

    assert result.out == out
    assert sorted(os.listdir(out)) == [p.name for p in parts]
    assert [_sha(p) for p in parts] == hashes, "the source changed"
    assert (out / parts[2].name).read_bytes() == parts[2].read_bytes()
    diff = _diff(parts[1].read_bytes(), (out / parts[1].name).read_bytes())
    assert diff and diff <= _scale_offsets(parts[1], edited)
    _check_edited(parts[1], out / parts[1].name, edited)
    _check_edited(parts[0], out / parts[0].name, {})
    meta = read_metadata(out / parts[0].name)
    assert meta["patchkit.source.sha256"].split() == hashes
    for key, value in read_metadata(parts[0]).items():
        assert meta[key] == value
    model = open_gguf_model(out / parts[0].name)  # the output is a valid split set
    assert model.is_split and len(model.parts) == 3
    doc = provenance_of(model.parts[0])
    assert doc["source_sha256"] == hashes
    assert {e["part"] for e in doc["edits"]} == {1}
    assert [f["name"] for f in doc["base"]["files"]] == [p.name for p in parts]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outset", "r.yaml", "src"]


# --- in place ------------------------------------------------------------------------------------------------


def _in_place_copy(tmp_path: Path, type_name: str = "Q4_K") -> tuple[Path, bytes]:
    path = tiny_llama(tmp_path / "m.gguf", type_name)
    return path, path.read_bytes()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".patchkit.json")


def _journal(path: Path) -> Path:
    return path.with_name(path.name + ".patchkit-journal.json")


@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_1", "IQ1_M", "BF16"])
def test_in_place_writes_only_scale_bytes_and_undo_restores_them(tmp_path, type_name):
    """In place, the only bytes that change are scale fields of the edited rows (every byte of an edited BF16
    row); a sidecar records provenance and the old bytes, no journal or lock stays, and undo restores the
    exact original file."""
    path, original = _in_place_copy(tmp_path, type_name)
    recipe = _recipe(tmp_path)
    result = apply_gguf(recipe, model=path, in_place=True)
    assert result.in_place and result.out == path and result.warnings == []
    diff = _diff(original, path.read_bytes())
    assert diff and diff <= _scale_offsets(path)
    _check_edited(_write(tmp_path / "orig.gguf", original), path)
    side = json.loads(_sidecar(path).read_text())
    assert side["in_place"] is True and side["recipe"]["text"] == RECIPE and side["undo"]
    assert not _journal(path).exists() and not path.with_name("m.gguf.patchkit.lock").exists()

    with pytest.raises(ApplyError, match="already patched in place"):
        apply_gguf(_recipe(tmp_path, OTHER, "o.yaml"), model=path, in_place=True)
    message = undo_gguf_in_place(path)
    assert "undone" in message and "\n" not in message
    assert path.read_bytes() == original
    assert not _sidecar(path).exists()
    with pytest.raises(ApplyError, match="nothing to undo"):
        undo_gguf_in_place(path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_undo_refuses_bytes_changed_since(tmp_path):
    """Undo writes old bytes back only where the file still holds the bytes the apply wrote."""
    path, original = _in_place_copy(tmp_path)
    apply_gguf(_recipe(tmp_path), model=path, in_place=True)
    run = json.loads(_sidecar(path).read_text())["undo"][0]
    data = bytearray(path.read_bytes())
    data[run["offset"]] ^= 0xFF  # someone wrote over a patched scale byte
    path.write_bytes(data)
    tampered = path.read_bytes()
    with pytest.raises(ApplyError, match="refusing to undo"):
        undo_gguf_in_place(path)
    assert path.read_bytes() == tampered


def _crash(monkeypatch, point: str) -> None:
    """Make the next in-place apply die at `point`: after half the byte runs, after all of them (before the
    sidecar is written), or after the sidecar (before the journal is removed)."""
    real_runs, real_json = ga._write_runs, ga.atomic_write_json

    def write_runs(model, runs, which):
        if which == "after" and point == "half":
            real_runs(model, runs[: len(runs) // 2], which)
            raise KeyboardInterrupt("simulated crash")
        real_runs(model, runs, which)

    def atomic_write_json(path, doc, *a, **kw):
        sidecar = str(path).endswith(".patchkit.json")
        if point == "before-sidecar" and sidecar:
            raise KeyboardInterrupt("simulated crash")
        written = real_json(path, doc, *a, **kw)
        if point == "after-sidecar" and sidecar:
            raise KeyboardInterrupt("simulated crash")
        return written

    monkeypatch.setattr(ga, "_write_runs", write_runs)
    monkeypatch.setattr(ga, "atomic_write_json", atomic_write_json)


@pytest.mark.parametrize("point", ["half", "before-sidecar", "after-sidecar"])
def test_interrupted_in_place_apply_is_rolled_back_by_undo(tmp_path, monkeypatch, point):
    """A run killed after the journal (half the bytes written, all of them, or even the sidecar) leaves the
    journal: a new-file apply refuses the file, and undo rolls it back to the exact original bytes (dropping a
    sidecar that belongs to the killed run), saying so."""
    path, original = _in_place_copy(tmp_path)
    assert len(open_gguf_model(path).parts) == 1
    with monkeypatch.context() as m:
        _crash(m, point)
        with pytest.raises(KeyboardInterrupt):
            apply_gguf(_recipe(tmp_path), model=path, in_place=True)
    assert _journal(path).exists()
    assert path.read_bytes() != original
    with pytest.raises(ApplyError, match="interrupted") as info:
        apply_gguf(_recipe(tmp_path), model=path, out=tmp_path / "o.gguf")
    assert _journal(path).name in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "o.gguf").exists()
    message = undo_gguf_in_place(path)
    assert "rolled back" in message
    assert path.read_bytes() == original
    assert not _journal(path).exists() and not _sidecar(path).exists()


def test_interrupted_in_place_apply_is_rolled_back_by_the_next_apply(tmp_path, monkeypatch):
    """The next in-place apply rolls the interrupted one back first (reporting it), then applies cleanly: the
    file ends up as a clean in-place apply leaves it."""
    path, original = _in_place_copy(tmp_path)
    with monkeypatch.context() as m:
        _crash(m, "half")
        with pytest.raises(KeyboardInterrupt):
            apply_gguf(_recipe(tmp_path), model=path, in_place=True)
    result = apply_gguf(_recipe(tmp_path), model=path, in_place=True)
    assert any("rolled back" in w for w in result.warnings)
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = _write(clean_dir / "m.gguf", original)
    apply_gguf(_recipe(tmp_path), model=clean, in_place=True)
    assert path.read_bytes() == clean.read_bytes()
    assert not _journal(path).exists() and _sidecar(path).exists()
    undo_gguf_in_place(path)
    assert path.read_bytes() == original


def test_a_hand_written_journal_is_rolled_back(tmp_path):
    """Recovery needs only the journal on disk: one written by hand (old and new bytes of two scale fields, the
    first of them written) is rolled back by undo."""
    import base64

    path, original = _in_place_copy(tmp_path)
    offsets = sorted(_scale_offsets(path, {("blk.0.ffn_up.weight", 1): -1.0}))[:2]
    runs = [
        {
            "part": 0,
            "offset": o,
            "before": base64.b64encode(original[o : o + 1]).decode(),
            "after": base64.b64encode(bytes([original[o] ^ 0x80])).decode(),
        }
        for o in offsets
    ]
    _journal(path).write_text(json.dumps({"runs": runs}))
    with open(path, "r+b") as fh:
        fh.seek(offsets[0])
        fh.write(bytes([original[offsets[0]] ^ 0x80]))
    assert "rolled back" in undo_gguf_in_place(path)
    assert path.read_bytes() == original and not _journal(path).exists()


def test_in_place_split_set_and_lock(tmp_path):
    """In place on a split set touches only the part holding the edit; a second writer is locked out."""
    first = tiny_llama(tmp_path / "s.gguf", "Q8_0", blocks=3, split_max_tensors=4)
    parts = split_paths(first)
    originals = [p.read_bytes() for p in parts]
    text = RECIPE.split("edits:")[0] + "edits:\n  - {layer: 1, neuron: 5, op: invert}\n"
    lock = first.with_name(first.name + ".patchkit.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ApplyError, match="another patchkit apply"):
            apply_gguf(_recipe(tmp_path, text), model=first, in_place=True)
    finally:
        os.close(fd)
    assert [p.read_bytes() for p in parts] == originals
    apply_gguf(_recipe(tmp_path, text), model=first, in_place=True)
    now = [p.read_bytes() for p in parts]
    assert now[0] == originals[0] and now[2] == originals[2]
    assert _diff(originals[1], now[1]) <= _scale_offsets(parts[1], {("blk.1.ffn_up.weight", 5): -1.0})
    undo_gguf_in_place(first)
    assert [p.read_bytes() for p in parts] == originals


def test_new_file_apply_of_a_file_patched_in_place_by_the_same_recipe_is_refused(tmp_path):
    """A file patched in place carries its recipe in the sidecar, not in its header: applying the same recipe to
    it again (to a new file) stacks the edits (invert twice = no edit) under provenance saying the recipe is in."""
    path, _ = _in_place_copy(tmp_path)
    apply_gguf(_recipe(tmp_path), model=path, in_place=True)
    with pytest.raises(ApplyError):
        apply_gguf(_recipe(tmp_path), model=path, out=tmp_path / "o.gguf")


def test_in_place_records_belong_to_the_split_set_not_the_part_named(tmp_path):
    """Any part names a split set, so an in-place patch made through part 3 must be seen through part 1: undone
    by it, and refused as already patched (else a second apply stacks the edit, and the lock does not exclude)."""
    first = tiny_llama(tmp_path / "s.gguf", "Q8_0", blocks=3, split_max_tensors=4)
    parts = split_paths(first)
    originals = [p.read_bytes() for p in parts]
    text = RECIPE.split("edits:")[0] + "edits:\n  - {layer: 1, neuron: 5, op: invert}\n"
    apply_gguf(_recipe(tmp_path, text), model=parts[2], in_place=True)
    with pytest.raises(ApplyError, match="already patched in place"):
        apply_gguf(
            _recipe(tmp_path, OTHER.replace("layer: 0, neuron: 4", "layer: 2, neuron: 4"), "o.yaml"),
            model=first,
            in_place=True,
        )
    undo_gguf_in_place(first)
    assert [p.read_bytes() for p in parts] == originals


def test_an_interrupted_undo_can_be_finished(tmp_path, monkeypatch):
    """Undo writes the old bytes back without a journal; killed half way, the file holds some old and some new
    runs. The next undo must finish the job (each run already old, or still new), not refuse the file as
    'changed since' and leave it half patched with no way back but a re-download."""
    path, original = _in_place_copy(tmp_path)
    apply_gguf(_recipe(tmp_path), model=path, in_place=True)
    real = ga._write_runs

    def write_runs(model, runs, which):
        real(model, runs[: len(runs) // 2], which)
        raise KeyboardInterrupt("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(ga, "_write_runs", write_runs)
        with pytest.raises(KeyboardInterrupt):
            undo_gguf_in_place(path)
    undo_gguf_in_place(path)
    assert path.read_bytes() == original


def test_cli_apply_in_place_and_undo(tmp_path):
    """`patchkit apply RECIPE --model X.gguf` writes the new file (--json: the plan as data), `--in-place` patches
    the file itself and `--in-place --undo` restores it."""
    from click.testing import CliRunner

    from patchkit.cli import main

    src, original = _in_place_copy(tmp_path)
    recipe = str(_recipe(tmp_path))
    out = tmp_path / "o.gguf"
    run = CliRunner().invoke
    result = run(main, ["apply", recipe, "--model", str(src), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["format"] == "gguf" and payload["out"] == str(out) and len(payload["plan"]["edits"]) == len(EDITED)
    _check_edited(src, out)
    result = run(main, ["apply", recipe, "--model", str(src), "--in-place"])
    assert result.exit_code == 0, result.output
    assert src.read_bytes() != original and _sidecar(src).exists()
    result = run(main, ["apply", recipe, "--model", str(src), "--in-place", "--undo"])
    assert result.exit_code == 0, result.output
    assert "undone" in result.output and src.read_bytes() == original

"""Damaged GGUFs and recipes that do not fit: every refusal is one line naming the problem, and nothing is
written (no output, no temp file, the source untouched), through the library and through `patchkit apply`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf_builders import split_paths, tensor_info_fields, tiny_llama

from patchkit.cli import main
from patchkit.edit.gguf_apply import apply_gguf
from patchkit.errors import EXIT_BAD_INPUT, ApplyError, ModelError, PatchkitError, RecipeError

HEAD = "patchkit: 1\nname: bad\nmodel: {architecture: llama}\nsource: {kind: manual}\nedits:\n"
INVERT = HEAD + "  - {layer: 1, neuron: 3, op: invert}\n"


def _patched(path: Path, pos: int, fmt: str, value: int) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, pos, value)
    path.write_bytes(bytes(data))
    return path


def _cut(path: Path, at: int) -> Path:
    path.write_bytes(path.read_bytes()[:at])
    return path


def _model(tmp_path: Path, type_name: str = "Q8_0", **kw) -> Path:
    return tiny_llama(tmp_path / "src" / "m.gguf", type_name, **kw)


def _truncated_data(tmp: Path) -> Path:
    m = _model(tmp)
    _, _, start = tensor_info_fields(m)["blk.1.ffn_up.weight"]
    return _cut(m, start + 100)  # in the middle of the tensor data


def _truncated_header(tmp: Path) -> Path:
    m = _model(tmp)
    type_pos, _, _ = tensor_info_fields(m)["blk.0.ffn_up.weight"]
    return _cut(m, type_pos)  # in the middle of the tensor-info table


def _wrong_magic(tmp: Path) -> Path:
    m = _model(tmp)
    return _patched(m, 0, "<4s", b"GGUG")


def _offset_past_eof(tmp: Path) -> Path:
    m = _model(tmp)
    _, off_pos, _ = tensor_info_fields(m)["blk.1.ffn_up.weight"]
    return _patched(m, off_pos, "<Q", 1 << 24)


def _overlapping(tmp: Path) -> Path:
    m = _model(tmp)
    _, off_pos, _ = tensor_info_fields(m)["blk.1.ffn_up.weight"]
    return _patched(m, off_pos, "<Q", 0)  # on top of the first tensor


def _unknown_type(tmp: Path) -> Path:
    m = _model(tmp)
    type_pos, _, _ = tensor_info_fields(m)["blk.1.ffn_up.weight"]
    return _patched(m, type_pos, "<I", 200)


def _missing_part(tmp: Path) -> Path:
    first = _model(tmp, blocks=3, split_max_tensors=4)
    split_paths(first)[1].unlink()
    return first


def _swapped_parts(tmp: Path) -> Path:
    first = _model(tmp, blocks=3, split_max_tensors=4)
    a, b = split_paths(first)[1:]
    tmp_name = a.with_suffix(".x")
    a.rename(tmp_name)
    b.rename(a)
    tmp_name.rename(b)
    return first


def _one_part_alone(tmp: Path) -> Path:
    first = _model(tmp, blocks=2, split_max_tensors=4)
    return first.rename(first.with_name("alone.gguf"))


def _unknown_arch(tmp: Path) -> Path:
    m = _model(tmp)
    data = m.read_bytes()
    return _write(m, data.replace(b"llama", b"llamb"))  # every key and the architecture value


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


#: id -> (make the model, recipe text, error type, what the message must say)
MODEL_CASES: dict[str, tuple[Callable[[Path], Path], str, type[PatchkitError], str]] = {
    "truncated-data": (_truncated_data, INVERT, ModelError, "outside the file"),
    "truncated-header": (_truncated_header, INVERT, ModelError, "truncated"),
    "wrong-magic": (_wrong_magic, INVERT, ModelError, "not a GGUF file"),
    "offset-past-eof": (_offset_past_eof, INVERT, ModelError, r"blk\.1\.ffn_up\.weight.*outside the file"),
    "overlapping-tensors": (_overlapping, INVERT, ModelError, "overlap"),
    "unknown-ggml-type": (_unknown_type, INVERT, ModelError, "unknown ggml type 200"),
    "missing-split-part": (_missing_part, INVERT, ModelError, r"m-00002-of-00003\.gguf.*missing"),
    "swapped-split-parts": (_swapped_parts, INVERT, ModelError, "split metadata says part"),
    "lone-split-part": (_one_part_alone, INVERT, ModelError, "split into 2 files"),
    "unknown-architecture": (_unknown_arch, INVERT, ModelError, "not one patchkit maps"),
    "neuron-beyond-n_ff": (
        _model,
        HEAD + "  - {layer: 1, neuron: 64, op: invert}\n",
        RecipeError,
        r"neuron 64 is out of range.*blk\.1\.ffn_up\.weight has 64 rows",
    ),
    "layer-beyond-blocks": (
        _model,
        HEAD + "  - {layer: 2, neuron: 3, op: invert}\n",
        RecipeError,
        "layer 2 is out of range.*2 blocks",
    ),
    "no-editable-scale-I8": (
        lambda t: _model(t, up_type="I8"),
        INVERT,
        RecipeError,
        r"blk\.1\.ffn_up\.weight is I8: ggml type I8 has no scale field",
    ),
    "no-editable-scale-Q8_1": (
        lambda t: _model(t, up_type="Q8_1"),
        INVERT,
        RecipeError,
        r"blk\.1\.ffn_up\.weight is Q8_1: .*no scale field",
    ),
    "mxfp4-factor-3": (
        lambda t: _model(t, "MXFP4"),
        HEAD + "  - {layer: 0, neuron: 1, op: scale, factor: 3.0}\n",
        RecipeError,
        r"blk\.0\.ffn_up\.weight is MXFP4: .*powers of two",
    ),
    "scale-overflow": (
        _model,
        HEAD + "  - {layer: 0, neuron: 1, op: scale, factor: 1.0e+7}\n",
        RecipeError,
        r"row 1 of blk\.0\.ffn_up\.weight \(Q8_0\).*overflows fp16",
    ),
    "same-row-twice": (
        _model,
        HEAD + "  - {layer: 0, neuron: 1, op: invert}\n  - {layer: 0, neuron: 1, op: zero}\n",
        RecipeError,
        "already edited by",
    ),
    "expert-on-llama": (_model, HEAD + "  - {layer: 0, expert: 1, op: suppress}\n", RecipeError, "no experts"),
}


def _setup(tmp_path: Path, case: str) -> tuple[Path, Path, Path, type[PatchkitError], str, dict[Path, bytes]]:
    make, text, error, match = MODEL_CASES[case]
    (tmp_path / "src").mkdir()
    model = make(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    sources = {p: p.read_bytes() for p in (tmp_path / "src").iterdir()}
    return model, recipe, out_dir, error, match, sources


def _nothing_written(tmp_path: Path, out_dir: Path, sources: dict[Path, bytes]) -> None:
    assert list(out_dir.iterdir()) == [], "an output or temp file was left"
    assert {p: p.read_bytes() for p in (tmp_path / "src").iterdir()} == sources, "the source directory changed"


@pytest.mark.parametrize("case", MODEL_CASES)
def test_refused_in_one_line_and_nothing_written(tmp_path, case):
    """New file, dry run and in place: the same one-line error, and not a byte written anywhere."""
    model, recipe, out_dir, error, match, sources = _setup(tmp_path, case)
    for kw in ({"out": out_dir / "o.gguf"}, {"out": out_dir / "o.gguf", "dry_run": True}, {"in_place": True}):
        with pytest.raises(error, match=match) as info:
            apply_gguf(recipe, model=model, **kw)
        assert "\n" not in str(info.value), str(info.value)
        _nothing_written(tmp_path, out_dir, sources)


@pytest.mark.parametrize("case", ["truncated-data", "unknown-ggml-type", "missing-split-part", "neuron-beyond-n_ff"])
def test_cli_refuses_with_one_error_line_and_exit_2(tmp_path, case):
    """`patchkit apply RECIPE --model X.gguf`: exit 2, exactly one `error:` line with the same message."""
    model, recipe, out_dir, error, match, sources = _setup(tmp_path, case)
    result = CliRunner().invoke(main, ["apply", str(recipe), "--model", str(model), "-o", str(out_dir / "o.gguf")])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    with pytest.raises(error) as info:
        apply_gguf(recipe, model=model, out=out_dir / "o.gguf")
    assert errors[0].startswith("error: ") and info.value.message in errors[0]
    _nothing_written(tmp_path, out_dir, sources)


def test_a_missing_single_file_is_not_called_a_split_set(tmp_path):
    """`nope.gguf` is one file, not a split set: the error says it is not found, not that 'part 1 of the split
    set' is missing (and does not tell the user to download the other parts)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(INVERT)
    with pytest.raises(ModelError) as info:
        apply_gguf(recipe, model=tmp_path / "nope.gguf", out=tmp_path / "o.gguf")
    assert "not found" in str(info.value) and "split set" not in str(info.value)


def test_symlinked_gguf_is_not_edited_in_place(tmp_path):
    """A symlinked GGUF (an HF-cache snapshot) is never edited in place: that would change the blob it points
    to."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(INVERT)
    (tmp_path / "src").mkdir()
    real = _model(tmp_path)
    link = tmp_path / "src" / "link.gguf"
    link.symlink_to(real.name)
    before = real.read_bytes()
    with pytest.raises(ApplyError, match="symlink") as info:
        apply_gguf(recipe, model=link, in_place=True)
    assert "\n" not in str(info.value)
    assert real.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["link.gguf", "m.gguf"]


def test_in_place_and_out_exclude_each_other(tmp_path):
    """--in-place with -o is a contradiction, refused before anything is read or written."""
    (tmp_path / "src").mkdir()
    model = _model(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(INVERT)
    before = model.read_bytes()
    with pytest.raises(ApplyError, match="exclude each other"):
        apply_gguf(recipe, model=model, in_place=True, out=tmp_path / "o.gguf")
    assert model.read_bytes() == before and not (tmp_path / "o.gguf").exists()

"""Hostile model directories, safetensors files, indexes, configs and scale factors, built by code.

Every case starts from a valid tiny checkpoint (`raw_llama_checkpoint`: 3 layers, 3 shards, layer 1 in shard 2),
breaks one thing, and runs `patchkit validate RECIPE --model DIR` and `patchkit apply RECIPE --model DIR -o OUT`
through the shared harness: exit 1/2, one `error:` line naming the offending file (and tensor / key), no
traceback, nothing written, the model directory unchanged, no hang; memory and time bombs run in a subprocess
under a 4 GiB address-space limit. The factor cases are scales whose result would be wrong in the tensor's dtype
(refused at plan time); the valid edge cases at the end must still apply, exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures.tiny_models import raw_llama_checkpoint, shard_names, write_file

from hostile.harness import refuse, tree_digest
from patchkit.cli import main
from patchkit.edit.bytes import apply_op, to_float32
from patchkit.model.refs import MAX_CONFIG_BYTES, MAX_INDEX_BYTES
from patchkit.model.safetensors_io import MAX_TENSORS, read_header, read_tensor_bytes

S1, S2, S3 = shard_names(3)
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
DOWN1 = "model.layers.1.mlp.down_proj.weight"
UP1 = "model.layers.1.mlp.up_proj.weight"
SHA = "c" * 40

RECIPE = """patchkit: 1
name: hostile
model: {{repo: test-org/tiny-llama, revision: "{rev}", architecture: {arch}}}
source: {{kind: manual, reference: hostile corpus}}
edits:
  - {edit}
"""
INVERT = "{layer: 1, neuron: 5, op: invert}"


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return raw_llama_checkpoint(tmp_path_factory.mktemp("pristine") / "model", "BF16", shards=3)


def write_recipe(path: Path, edit: str = INVERT, arch: str = "llama") -> Path:
    path.write_text(RECIPE.format(rev=SHA, arch=arch, edit=edit))
    return path


# --- building hostile files -------------------------------------------------------------------------------


def split(path: Path) -> tuple[dict, bytes]:
    """(header dict, data area) of a valid safetensors file."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def put(path: Path, header: bytes | str, data: bytes = b"", *, length: int | None = None) -> None:
    raw = header.encode() if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


def edit_header(path: Path, fn: Callable[[dict], object]) -> None:
    header, data = split(path)
    fn(header)
    put(path, json.dumps(header), data)


def edit_header_text(path: Path, fn: Callable[[str], str]) -> None:
    header, data = split(path)
    put(path, fn(json.dumps(header)), data)


def tensors_of(path: Path) -> dict:
    header, data = split(path)
    header.pop("__metadata__", None)
    return {
        k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0] : v["data_offsets"][1]]) for k, v in header.items()
    }


def edit_index(m: Path, fn: Callable[[dict], object]) -> None:
    index = json.loads((m / INDEX).read_text())
    fn(index)
    (m / INDEX).write_text(json.dumps(index))


def edit_config(m: Path, fn: Callable[[dict], object]) -> None:
    config = json.loads((m / CONFIG).read_text())
    fn(config)
    (m / CONFIG).write_text(json.dumps(config))


def replace_with(path: Path, make: Callable[[Path], object]) -> None:
    path.unlink()
    make(path)


def link(path: Path, target: str | Path) -> None:
    if os.path.lexists(path):
        path.unlink()
    path.symlink_to(target)


def unix_socket(path: Path) -> None:
    old = os.getcwd()
    os.chdir(path.parent)  # bind by a short relative name: socket paths are limited to ~100 bytes
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path.name)
        sock.close()
    finally:
        os.chdir(old)


def sparse(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)


def gemma_config(m: Path, **text_config) -> None:
    tc = {"model_type": "gemma4_text", "num_hidden_layers": 3, "intermediate_size": 24, **text_config}
    (m / CONFIG).write_text(
        json.dumps({"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "text_config": tc})
    )


def deep(n: int = 50_000) -> str:
    return '{"a": ' + "[" * n + "]" * n + "}"


def many_tensors(n: int) -> str:
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(n))
    return "{" + entries + "}"


def shifted(name: str, delta: int) -> Callable[[dict], object]:
    def fn(h: dict) -> None:
        h[name]["data_offsets"] = [o + delta for o in h[name]["data_offsets"]]

    return fn


def second_tensor(path: Path) -> str:
    header, _ = split(path)
    header.pop("__metadata__", None)
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])[1]


def shard_copy_outside(m: Path, env: Path) -> Path:
    target = env / "outside" / S2
    shutil.copyfile(m / S2, target)
    return target


def map_s2_to(value: str) -> Callable[[dict], object]:
    def fn(index: dict) -> None:
        index["weight_map"] = {k: (value if v == S2 else v) for k, v in index["weight_map"].items()}

    return fn


def duplicate_down1_in_s1(m: Path) -> None:
    tensors = tensors_of(m / S1)
    tensors[DOWN1] = tensors_of(m / S2)[DOWN1]
    write_file(m / S1, tensors, {"format": "pt"})


def single_file(m: Path) -> None:
    shutil.rmtree(m)
    raw_llama_checkpoint(m, "BF16", shards=1)


# --- the corpus -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[Path, Path], object]  # (model dir, scratch dir with outside/)
    names: tuple[str, ...]
    bomb: bool = False  # memory/time bomb: run in a subprocess under the 4 GiB limit
    arch: str = "llama"


def C(id: str, mutate, *names: str, bomb: bool = False, arch: str = "llama") -> Case:
    return Case(id, mutate, names, bomb, arch)


SAFETENSORS = [
    C("st-empty-file", lambda m, e: (m / S2).write_bytes(b""), S2, "truncated"),
    C("st-3-byte-file", lambda m, e: (m / S2).write_bytes(b"\x01\x02\x03"), S2, "truncated"),
    C("st-header-length-huge", lambda m, e: put(m / S2, "{}", length=2**62), S2, "exceeds"),
    C("st-header-length-past-end", lambda m, e: put(m / S2, "{}", b"\0" * 64, length=10_000), S2, "runs past the end"),
    C("st-header-not-utf8", lambda m, e: put(m / S2, b'{"\xff": 1}'), S2, "UTF-8"),
    C("st-header-not-json", lambda m, e: put(m / S2, "{not json}"), S2, "not valid JSON"),
    C("st-header-json-array", lambda m, e: put(m / S2, "[1, 2]"), S2, "does not start with"),
    C("st-header-deeply-nested", lambda m, e: put(m / S2, deep()), S2, "nested too deeply"),
    C(
        "st-offset-5000-digits",
        lambda m, e: edit_header_text(
            m / S2, lambda t: t.replace('"data_offsets": [0, ', '"data_offsets": [0, 1' + "0" * 5000, 1)
        ),
        S2,
        "digits",
    ),
    C(
        "st-dim-5000-digits",
        lambda m, e: edit_header_text(m / S2, lambda t: t.replace('"shape": [', '"shape": [1' + "0" * 5000 + ", ", 1)),
        S2,
        "digits",
    ),
    C(
        "st-float-dim",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(shape=[16.0, 24])),
        S2,
        DOWN1,
        "shape",
    ),
    C(
        "st-nan-offset",
        lambda m, e: edit_header_text(m / S2, lambda t: t.replace('"data_offsets": [0, ', '"data_offsets": [NaN, ', 1)),
        S2,
        "NaN",
    ),
    C(
        "st-unknown-dtype",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(dtype="F12")),
        S2,
        DOWN1,
        "unknown dtype",
    ),
    C(
        "st-negative-dim",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(shape=[-16, 24])),
        S2,
        DOWN1,
        "shape",
    ),
    C(
        "st-shape-product-overflows",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(shape=[2**40, 2**40, 2**40])),
        S2,
        DOWN1,
        "overflows",
    ),
    C("st-offsets-overlap", lambda m, e: edit_header(m / S2, shifted(second_tensor(m / S2), -2)), S2, "overlap"),
    C(
        "st-offsets-past-the-file",
        lambda m, e: edit_header(
            m / S2,
            lambda h: h.update(
                x={
                    "dtype": "F32",
                    "shape": [1000],
                    "data_offsets": [len(split(m / S2)[1]), len(split(m / S2)[1]) + 4000],
                }
            ),
        ),
        S2,
        "data ends at",
    ),
    C(
        "st-offsets-reversed",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(data_offsets=h[DOWN1]["data_offsets"][::-1])),
        S2,
        DOWN1,
        "before begin",
    ),
    C("st-gap-between-tensors", lambda m, e: edit_header(m / S2, shifted(second_tensor(m / S2), 2)), S2, "gap"),
    C("st-trailing-bytes", lambda m, e: (m / S2).write_bytes((m / S2).read_bytes() + b"\0" * 12), S2, "trailing bytes"),
    C(
        "st-duplicate-tensor-key",
        lambda m, e: edit_header_text(
            m / S2,
            lambda t: t.replace(f'"{DOWN1}": ', f'"{DOWN1}": {json.dumps(split(m / S2)[0][DOWN1])}, "{DOWN1}": ', 1),
        ),
        S2,
        DOWN1,
        "duplicate key",
    ),
    C(
        "st-metadata-not-str",
        lambda m, e: edit_header(m / S2, lambda h: h.update(__metadata__={"format": 1})),
        S2,
        "__metadata__",
    ),
    C(
        "st-metadata-list",
        lambda m, e: edit_header(m / S2, lambda h: h.update(__metadata__=["pt"])),
        S2,
        "__metadata__",
    ),
    C(
        "st-entry-missing-offsets",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].pop("data_offsets")),
        S2,
        DOWN1,
        "missing",
    ),
    C(
        "st-entry-extra-key",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(pickle="x")),
        S2,
        DOWN1,
        "unknown keys",
    ),
    C(
        "st-name-with-newline",
        lambda m, e: edit_header(
            m / S2, lambda h: h.update({"evil\nname": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})
        ),
        S2,
        "control characters",
    ),
    C("st-too-many-tensors", lambda m, e: put(m / S2, many_tensors(MAX_TENSORS + 10)), S2, "more than", bomb=True),
    C(
        "st-fp8-target",
        lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(dtype="F8_E4M3", shape=[16, 48])),
        DOWN1,
        "F8_E4M3",
    ),
    C("st-integer-target", lambda m, e: edit_header(m / S2, lambda h: h[DOWN1].update(dtype="I16")), DOWN1, "I16"),
]

INDEXES = [
    C("ix-tensor-in-two-shards", lambda m, e: duplicate_down1_in_s1(m), DOWN1, S1, S2),
    C(
        "ix-maps-a-tensor-no-shard-holds",
        lambda m, e: edit_index(m, lambda i: i["weight_map"].update({"model.layers.9.mlp.down_proj.weight": S2})),
        INDEX,
        "model.layers.9",
        S2,
    ),
    C(
        "ix-maps-a-tensor-elsewhere",
        lambda m, e: edit_index(m, lambda i: i["weight_map"].update({UP1: S3})),
        INDEX,
        UP1,
        S3,
        S2,
    ),
    C("ix-shard-holds-unlisted-tensor", lambda m, e: edit_index(m, lambda i: i["weight_map"].pop(UP1)), S2, UP1, INDEX),
    C("ix-absolute-path", lambda m, e: edit_index(m, map_s2_to(str(shard_copy_outside(m, e)))), INDEX, "absolute"),
    C("ix-home-path", lambda m, e: edit_index(m, map_s2_to(f"~/{S2}")), INDEX, "absolute"),
    C(
        "ix-dotdot-path",
        lambda m, e: (shard_copy_outside(m, e), edit_index(m, map_s2_to(f"../outside/{S2}"))),
        INDEX,
        "..",
    ),
    C(
        "ix-path-through-a-link-out",
        lambda m, e: (shard_copy_outside(m, e), link(m / "sub", e / "outside"), edit_index(m, map_s2_to(f"sub/{S2}"))),
        "sub",
        "outside the model directory",
    ),
    C("ix-file-not-a-string", lambda m, e: edit_index(m, lambda i: i["weight_map"].update({DOWN1: 7})), INDEX, DOWN1),
    C("ix-weight-map-a-list", lambda m, e: edit_index(m, lambda i: i.update(weight_map=[S1, S2])), INDEX, "weight_map"),
    C("ix-index-a-list", lambda m, e: (m / INDEX).write_text("[]"), INDEX, "array"),
    C("ix-not-json", lambda m, e: (m / INDEX).write_text('{"weight_map": '), INDEX, "not valid JSON"),
    C(
        "ix-duplicate-tensor-key",
        lambda m, e: (m / INDEX).write_text(
            (m / INDEX).read_text().replace(f'"{DOWN1}": "{S2}"', f'"{DOWN1}": "{S1}", "{DOWN1}": "{S2}"')
        ),
        INDEX,
        DOWN1,
        "duplicate key",
    ),
    C("ix-deeply-nested", lambda m, e: (m / INDEX).write_text(deep()), INDEX, "nested too deeply"),
    C(
        "ix-index-past-its-cap",
        lambda m, e: replace_with(m / INDEX, lambda p: sparse(p, MAX_INDEX_BYTES + 1)),
        INDEX,
        "too large",
        bomb=True,
    ),
    C(
        "ix-newline-in-file-name",
        lambda m, e: edit_index(m, map_s2_to("model-00002\n.safetensors")),
        INDEX,
        "plain file name",
    ),
    C("ix-not-a-safetensors-file", lambda m, e: edit_index(m, map_s2_to(CONFIG)), INDEX, "not a .safetensors"),
    C("ix-shard-missing", lambda m, e: (m / S3).unlink(), S3, "missing"),
]

CONFIGS = [
    C("cfg-a-list", lambda m, e: (m / CONFIG).write_text("[1, 2]"), CONFIG, "array"),
    C(
        "cfg-text-config-a-string",
        lambda m, e: (m / CONFIG).write_text(
            json.dumps(
                {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"], "text_config": "oops"}
            )
        ),
        CONFIG,
        "text_config",
        arch="gemma4",
    ),
    C(
        "cfg-width-list-too-short",
        lambda m, e: edit_config(m, lambda c: c.update(intermediate_size=[24, 24])),
        CONFIG,
        "intermediate_size",
    ),
    C(
        "cfg-layers-a-word",
        lambda m, e: edit_config(m, lambda c: c.update(num_hidden_layers="four")),
        CONFIG,
        "num_hidden_layers",
    ),
    C(
        "cfg-layers-negative",
        lambda m, e: edit_config(m, lambda c: c.update(num_hidden_layers=-3)),
        CONFIG,
        "num_hidden_layers",
    ),
    C(
        "cfg-layers-huge",
        lambda m, e: edit_config(m, lambda c: c.update(num_hidden_layers=10**12)),
        CONFIG,
        "num_hidden_layers",
    ),
    C(
        "cfg-layers-bool",
        lambda m, e: edit_config(m, lambda c: c.update(num_hidden_layers=True)),
        CONFIG,
        "num_hidden_layers",
    ),
    C(
        "cfg-layers-float",
        lambda m, e: edit_config(m, lambda c: c.update(num_hidden_layers=3.0)),
        CONFIG,
        "num_hidden_layers",
    ),
    C(
        "cfg-layers-missing",
        lambda m, e: edit_config(m, lambda c: c.pop("num_hidden_layers")),
        CONFIG,
        "num_hidden_layers",
    ),
    C(
        "cfg-width-missing",
        lambda m, e: edit_config(m, lambda c: c.pop("intermediate_size")),
        CONFIG,
        "intermediate_size",
    ),
    C(
        "cfg-nan",
        lambda m, e: (m / CONFIG).write_text(
            (m / CONFIG).read_text().replace('"num_hidden_layers": 3', '"num_hidden_layers": NaN')
        ),
        CONFIG,
        "NaN",
    ),
    C(
        "cfg-5000-digit-integer",
        lambda m, e: (m / CONFIG).write_text(
            (m / CONFIG).read_text().replace('"num_hidden_layers": 3', '"num_hidden_layers": 3' + "0" * 5000)
        ),
        CONFIG,
        "digits",
    ),
    C("cfg-deeply-nested", lambda m, e: (m / CONFIG).write_text(deep()), CONFIG, "nested too deeply"),
    C(
        "cfg-past-its-cap",
        lambda m, e: replace_with(m / CONFIG, lambda p: sparse(p, MAX_CONFIG_BYTES + 1)),
        CONFIG,
        "too large",
        bomb=True,
    ),
    C("cfg-not-utf8", lambda m, e: (m / CONFIG).write_bytes(b'{"model_type": "\xff"}'), CONFIG, "UTF-8"),
    C("cfg-empty", lambda m, e: (m / CONFIG).write_text(""), CONFIG, "not valid JSON"),
    C(
        "cfg-architectures-a-string",
        lambda m, e: edit_config(m, lambda c: (c.pop("model_type"), c.update(architectures="LlamaForCausalLM"))),
        CONFIG,
        "architectures",
    ),
    C("cfg-model-type-a-number", lambda m, e: edit_config(m, lambda c: c.update(model_type=7)), CONFIG, "model_type"),
    C(
        "cfg-duplicate-key",
        lambda m, e: (m / CONFIG).write_text(
            (m / CONFIG)
            .read_text()
            .replace('"num_hidden_layers": 3', '"num_hidden_layers": 3, "num_hidden_layers": 40')
        ),
        CONFIG,
        "duplicate key",
        "num_hidden_layers",
    ),
    C(
        "cfg-experts-a-word",
        lambda m, e: gemma_config(m, enable_moe_block=True, num_experts="many"),
        CONFIG,
        "text_config.num_experts",
        arch="gemma4",
    ),
    C(
        "cfg-kv-shared-beyond-layers",
        lambda m, e: gemma_config(m, num_kv_shared_layers=99),
        CONFIG,
        "text_config.num_kv_shared_layers",
        arch="gemma4",
    ),
    C("cfg-missing", lambda m, e: (m / CONFIG).unlink(), CONFIG),
]

SPECIAL = [
    C("sp-config-fifo", lambda m, e: replace_with(m / CONFIG, os.mkfifo), CONFIG, "FIFO"),
    C("sp-config-to-dev-zero", lambda m, e: link(m / CONFIG, "/dev/zero"), CONFIG, "/dev/zero"),
    C("sp-config-to-etc-passwd", lambda m, e: link(m / CONFIG, "/etc/passwd"), CONFIG, "/etc/passwd"),
    C("sp-config-link-loop", lambda m, e: link(m / CONFIG, CONFIG), CONFIG),
    C("sp-shard-fifo", lambda m, e: replace_with(m / S2, os.mkfifo), S2, "FIFO"),
    C("sp-shard-to-dev-zero", lambda m, e: link(m / S2, "/dev/zero"), S2, "/dev/zero"),
    C("sp-shard-socket", lambda m, e: replace_with(m / S2, unix_socket), S2, "socket"),
    C("sp-shard-directory", lambda m, e: replace_with(m / S2, Path.mkdir), S2, "directory"),
    C("sp-shard-dangling-link", lambda m, e: link(m / S2, "nowhere.safetensors"), S2, "dangling"),
    C("sp-shard-link-out", lambda m, e: link(m / S2, shard_copy_outside(m, e)), S2, "outside the model directory"),
    C("sp-index-fifo", lambda m, e: replace_with(m / INDEX, os.mkfifo), INDEX, "FIFO"),
    C(
        "sp-index-link-out",
        lambda m, e: (shutil.copyfile(m / INDEX, e / "outside" / INDEX), link(m / INDEX, e / "outside" / INDEX)),
        INDEX,
        "outside the model directory",
    ),
    C(
        "sp-tokenizer-to-hf-token",
        lambda m, e: link(m / "tokenizer_config.json", e / "outside" / ".cache" / "huggingface" / "token"),
        "tokenizer_config.json",
        "outside the model directory",
    ),
    C("sp-dir-link-to-etc", lambda m, e: link(m / "extra", "/etc"), "extra", "outside the model directory"),
    C(
        "sp-fifo-in-a-subdir",
        lambda m, e: ((m / "sub").mkdir(), os.mkfifo(m / "sub" / "notes.fifo")),
        "notes.fifo",
        "FIFO",
    ),
    C(
        "sp-single-file-is-a-directory",
        lambda m, e: (single_file(m), replace_with(m / "model.safetensors", Path.mkdir)),
        "model.safetensors",
        "directory",
    ),
    C(
        "sp-single-file-fifo",
        lambda m, e: (single_file(m), replace_with(m / "model.safetensors", os.mkfifo)),
        "model.safetensors",
        "FIFO",
    ),
]

MODEL_CASES = SAFETENSORS + INDEXES + CONFIGS + SPECIAL


def test_the_corpus_is_large_and_distinct():
    assert len(MODEL_CASES) >= 40
    assert len({c.id for c in MODEL_CASES}) == len(MODEL_CASES)


@pytest.fixture
def scratch(tmp_path) -> Path:
    (tmp_path / "outside" / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / "outside" / ".cache" / "huggingface" / "token").write_text("hf_not_a_real_token_but_secret")
    return tmp_path


@pytest.mark.parametrize("command", ["validate", "apply"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_hostile_model_dir_is_refused(case: Case, command: str, pristine: Path, scratch: Path):
    model = scratch / "model"
    shutil.copytree(pristine, model)
    case.mutate(model, scratch)
    recipe = write_recipe(scratch / "r.yaml", arch=case.arch)
    out = scratch / "out"
    args = (
        ["validate", str(recipe), "--model", str(model)]
        if command == "validate"
        else ["apply", str(recipe), "--model", str(model), "-o", str(out)]
    )
    refuse(args, names=case.names, unchanged=[model, scratch / "outside"], absent=[out], subprocess_run=case.bomb)


# --- scale factors that would be wrong in the tensor's dtype ---------------------------------------------


@dataclass(frozen=True)
class FactorCase:
    id: str
    dtype: str
    factor: str  # as written in the YAML
    names: tuple[str, ...]
    std: float = 0.5  # weight scale of the checkpoint
    at_validate: bool = True  # refused from the dtype alone (validate reads no weights)
    prepare: Callable[[Path], object] | None = None


def zero_column(model: Path) -> None:
    """Zero neuron 5 of layer 1 (column 5 of down_proj) in place, bytes only."""
    header = read_header(model / S2)
    start, _ = header.absolute(DOWN1)
    rows, cols = header.tensors[DOWN1].shape
    with open(model / S2, "r+b") as fh:
        for r in range(rows):
            fh.seek(start + (r * cols + 5) * 2)
            fh.write(b"\0\0")


FACTORS = [
    FactorCase("f32-1e39-is-inf", "F32", "1.0e+39", ("1e+39", "inf", "F32", DOWN1)),
    FactorCase("f32-1e-50-underflows", "F32", "1.0e-50", ("1e-50", "is 0 in F32", DOWN1, "op: zero")),
    FactorCase("f32-1.00000001-is-1", "F32", "1.00000001", ("1.00000001", "1.0 in F32", "1.0000001192092896", DOWN1)),
    FactorCase("bf16-1.001-is-1", "BF16", "1.001", ("1.001", "1.0 in BF16", "1.0078125", DOWN1)),
    FactorCase("bf16-0.999-is-1", "BF16", "0.999", ("0.999", "1.0 in BF16", "0.99609375", DOWN1)),
    FactorCase("bf16--1.001-is-minus-1", "BF16", "-1.001", ("-1.001", "-1.0 in BF16", "op: invert", DOWN1)),
    FactorCase("f16-1.0002-is-1", "F16", "1.0002", ("1.0002", "1.0 in F16", "1.0009765625", DOWN1)),
    FactorCase("f16-1e5-is-inf", "F16", "100000.0", ("100000.0", "inf in F16", "65504", DOWN1)),
    FactorCase("f16-1e-9-underflows", "F16", "1.0e-9", ("1e-09", "is 0 in F16", DOWN1)),
    FactorCase("f16-60000-overflows", "F16", "60000.0", ("overflows F16", "65504", DOWN1), std=2.0, at_validate=False),
    FactorCase(
        "f16-1000-overflows-big-weights", "F16", "1000.0", ("overflows F16", DOWN1), std=100.0, at_validate=False
    ),
    FactorCase("bf16-3e38-overflows", "BF16", "3.0e+38", ("overflows BF16", DOWN1), std=4.0, at_validate=False),
    FactorCase("f32-3e38-overflows", "F32", "3.0e+38", ("overflows F32", DOWN1), std=4.0, at_validate=False),
    FactorCase(
        "f16-1e-6-flushes-small-weights", "F16", "1.0e-6", ("underflows", "F16", DOWN1), std=0.001, at_validate=False
    ),
    FactorCase(
        "bf16-1e-38-flushes-weights", "BF16", "1.0e-38", ("underflows", "BF16", DOWN1), std=0.001, at_validate=False
    ),
    FactorCase(
        "bf16-scale-of-a-zero-column",
        "BF16",
        "0.5",
        ("changes nothing", "every element is 0", DOWN1),
        at_validate=False,
        prepare=zero_column,
    ),
]


@pytest.mark.parametrize("case", FACTORS, ids=[c.id for c in FACTORS])
def test_wrong_scale_factor_is_refused_at_plan_time(case: FactorCase, tmp_path: Path):
    model = raw_llama_checkpoint(tmp_path / "model", case.dtype, shards=3, std=case.std)
    if case.prepare:
        case.prepare(model)
    recipe = write_recipe(tmp_path / "r.yaml", f"{{layer: 1, neuron: 5, op: scale, factor: {case.factor}}}")
    out = tmp_path / "out"
    refusal = refuse(
        ["apply", str(recipe), "--model", str(model), "-o", str(out)], names=case.names, unchanged=[model], absent=[out]
    )
    assert "r.yaml:" in refusal.error_line  # the edit is named by its recipe position
    if case.at_validate:
        refuse(["validate", str(recipe), "--model", str(model)], names=case.names, unchanged=[model])
    refuse(
        ["apply", str(recipe), "--model", str(model), "-o", str(out), "--dry-run"],
        names=case.names,
        unchanged=[model],
        absent=[out],
    )


# --- valid edge cases: still accepted, and the edit is exact ----------------------------------------------


def run_ok(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def assert_exact_edit(base: Path, out: Path, shard: str, op: str, factor: float | None, dtype: str) -> None:
    """The output's edited shard differs from the base exactly in column 5 of layer 1's down_proj, by `op`;
    every other file is byte-identical."""
    for p in base.iterdir():
        if p.name != shard and p.is_file():
            assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    hb, ho = read_header(base / shard), read_header(out / shard)
    assert ho.tensors == hb.tensors
    raw_dtype = np.uint16 if dtype != "F32" else np.uint32
    for name in hb.tensors:
        a = np.frombuffer(read_tensor_bytes(hb, name), raw_dtype)
        b = np.frombuffer(read_tensor_bytes(ho, name), raw_dtype)
        if name != DOWN1:
            assert np.array_equal(a, b), name
            continue
        a2, b2 = a.reshape(hb.tensors[name].shape), b.reshape(hb.tensors[name].shape)
        want = apply_op(a2[:, 5].copy(), dtype, op, factor)
        assert np.array_equal(b2[:, 5], want)
        assert not np.array_equal(b2[:, 5], a2[:, 5])
        assert np.array_equal(np.delete(b2, 5, axis=1), np.delete(a2, 5, axis=1))


def test_hf_cache_snapshot_with_blob_links_applies(tmp_path, pristine):
    repo = tmp_path / "hub" / "models--test-org--tiny-llama"
    snap, blobs = repo / "snapshots" / SHA, repo / "blobs"
    snap.mkdir(parents=True), blobs.mkdir()
    import hashlib

    for f in pristine.iterdir():
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    recipe = write_recipe(tmp_path / "r.yaml")
    before = tree_digest(repo)
    run_ok("validate", str(recipe), "--model", str(snap))
    run_ok("apply", str(recipe), "--model", str(snap), "-o", str(tmp_path / "out"))
    assert tree_digest(repo) == before
    assert_exact_edit(pristine, tmp_path / "out", S2, "invert", None, "BF16")


def test_dot_slash_weight_map_entries_are_normalised(tmp_path, pristine):
    model = tmp_path / "model"
    shutil.copytree(pristine, model)
    edit_index(model, lambda i: i.update(weight_map={k: f"./{v}" for k, v in i["weight_map"].items()}))
    recipe = write_recipe(tmp_path / "r.yaml")
    run_ok("validate", str(recipe), "--model", str(model))
    run_ok("apply", str(recipe), "--model", str(model), "-o", str(tmp_path / "out"))
    assert_exact_edit(model, tmp_path / "out", S2, "invert", None, "BF16")


def test_links_inside_the_model_dir_are_fine(tmp_path, pristine):
    model = tmp_path / "model"
    shutil.copytree(pristine, model)
    (model / "originals").mkdir()
    os.replace(model / S2, model / "originals" / S2)
    link(model / S2, Path("originals") / S2)
    link(model / "tokenizer_config.json", "generation_config.json")
    recipe = write_recipe(tmp_path / "r.yaml")
    run_ok("apply", str(recipe), "--model", str(model), "-o", str(tmp_path / "out"))
    header = read_header(tmp_path / "out" / S2)
    assert DOWN1 in header.tensors


@pytest.mark.parametrize(
    "dtype, factor",
    [
        ("BF16", 0.5),
        ("BF16", 3.0),
        ("BF16", -0.8),
        ("BF16", -1.0),
        ("F16", 2.0),
        ("F16", 0.001),
        ("F32", 1.0000001),
        ("F32", 1e30),
    ],
)
def test_sound_scale_factors_apply_exactly(tmp_path, dtype, factor):
    model = raw_llama_checkpoint(tmp_path / "model", dtype, shards=3)
    recipe = write_recipe(tmp_path / "r.yaml", f"{{layer: 1, neuron: 5, op: scale, factor: {factor!r}}}")
    run_ok("validate", str(recipe), "--model", str(model))
    run_ok("apply", str(recipe), "--model", str(model), "-o", str(tmp_path / "out"))
    assert_exact_edit(model, tmp_path / "out", S2, "scale", factor, dtype)
    edited = to_float32(
        np.frombuffer(
            read_tensor_bytes(read_header(tmp_path / "out" / S2), DOWN1), np.uint16 if dtype != "F32" else np.uint32
        ),
        dtype,
    )
    assert np.isfinite(edited).all()

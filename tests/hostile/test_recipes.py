"""Hostile recipe corpus, built by code: every case goes through `patchkit validate` (and a representative subset
through `patchkit apply --model DIR -o OUT`) and must be refused the same way: one `error:` line naming the file
and, where there is one, `file:line:`; exit 2; no traceback; nothing written; the model and the recipe unchanged;
under 20 s (the memory and time bombs in a child process under a 4 GiB address-space limit).

The other half of the contract: the VALID edge cases next to them (a 96-character name, a UTF-8 byte order mark,
CRLF line endings, anchors used once, a factor of 1e-3 on a bf16 model, ...) are still accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures.tiny_models import raw_llama_checkpoint

from hostile.harness import refuse
from patchkit.cli import main
from patchkit.errors import RecipeError
from patchkit.recipe import load_recipe, parse_recipe
from patchkit.recipe.limits import MAX_EXPANDED_EDITS, MAX_INDEX, MAX_NODES, MAX_RECIPE_BYTES

HEAD = "patchkit: 1\nname: t\nsource: {kind: manual}\n"  # lines 1-3
EDIT = "edits: [{layer: 0, neuron: 1, op: zero}]\n"  # line 4 when it follows HEAD
SHA = "0123456789abcdef0123456789abcdef01234567"


def edit(body: str) -> str:
    """A recipe whose only edit (line 4) is `{body}`."""
    return HEAD + f"edits: [{{{body}}}]\n"


def extra(body: str) -> str:
    """A valid recipe plus `body` from line 5 on."""
    return HEAD + EDIT + body


def name(value: str) -> str:
    """A recipe whose name (line 2) is `value`, written as given."""
    return f"patchkit: 1\nname: {value}\nsource: {{kind: manual}}\n" + EDIT


def model(body: str) -> str:
    return extra(f"model: {{{body}}}\n")  # line 5


def ints(n: int, start: int = 0) -> str:
    return ", ".join(str(i) for i in range(start, start + n))


Builder = Callable[[Path], Path]


@dataclass(frozen=True)
class Case:
    content: str | bytes | Builder  # the recipe text / bytes, or a builder making the path in a directory
    line: int | None  # the line the error must name (`file:LINE:`); None when the file itself is refused
    says: str  # a fragment the error line must contain
    apply: bool = False  # also through `patchkit apply --model DIR -o OUT`
    bomb: bool = False  # run in a child process under the memory limit (and the harness's 20 s)
    watch: bool = True  # check the recipe file is unchanged (not for a 10 GiB sparse file: hashing it is the bomb)


# --- builders for what is not plain file content ----------------------------------------------------------


def _fifo(d: Path) -> Path:
    p = d / "fifo.yaml"
    os.mkfifo(p)
    return p


def _link(target: str | Path) -> Builder:
    def build(d: Path) -> Path:
        p = d / "link.yaml"
        p.symlink_to(target(d) if callable(target) else target)
        return p

    return build


def _sparse(d: Path) -> Path:
    p = d / "sparse.yaml"
    with open(p, "wb") as fh:
        fh.truncate(10 << 30)  # 10 GiB of holes: refused by its size, never read
    return p


def _huge(d: Path) -> Path:
    p = d / "huge.yaml"
    p.write_bytes(HEAD.encode() + EDIT.encode() + b"# " + b"x" * MAX_RECIPE_BYTES + b"\n")
    return p


def _laughs() -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")  # 10^9 strings at i
    return HEAD + EDIT + "\n".join(lines) + "\n"  # a..i on lines 5..13; the running count crosses 100,000 in e (line 9)


def _alias_chain(n: int) -> str:
    body = "x0: &x0 [1]\n" + "".join(f"x{i}: &x{i} [*x{i - 1}]\n" for i in range(1, n))
    return extra("description: ok\nnotes:\n" + "".join("  " + line + "\n" for line in body.splitlines()))


CASES: dict[str, Case] = {
    # --- the file itself: kind, size, encoding -------------------------------------------------------------
    "fifo": Case(_fifo, None, "is a FIFO", apply=True),
    "link-to-dev-zero": Case(_link("/dev/zero"), None, "is a device", apply=True),
    "link-to-fifo": Case(_link(_fifo), None, "is a FIFO"),
    "dangling-link": Case(_link("/nonexistent/recipe.yaml"), None, "dangling link"),
    "huge-file": Case(_huge, None, f"too large for a recipe (limit {MAX_RECIPE_BYTES})", apply=True),
    "sparse-10-GiB": Case(_sparse, None, "too large for a recipe", watch=False),
    "utf-16": Case(HEAD.encode("utf-16"), 1, "UTF-16 text, not UTF-8"),
    "latin-1-byte": Case(
        extra("description: caf\xe9\n").encode("latin-1"), 5, "not UTF-8 text (byte 0xe9)", apply=True
    ),
    "encoded-surrogate": Case(extra("description: ").encode() + b"\xed\xa0\x80\n", 5, "not UTF-8"),
    "overlong-utf8": Case(extra("description: ").encode() + b"\xc0\xaf\n", 5, "not UTF-8"),
    "nul-byte": Case(extra("description: a\x00b\n"), 5, "control character U+0000"),
    "bell-raw": Case(extra("description: a\x07b\n"), 5, "control character U+0007"),
    "escape-raw": Case(extra("description: \x1b[2Jcleared\n"), 5, "control character U+001B"),
    "bidi-override-in-comment": Case(
        extra("# \u202e }]oreZ :po ,1 :noruen{\n"), 5, "bidirectional control U+202E", apply=True
    ),
    "bidi-isolate-in-value": Case(extra("description: ok\u2066 hidden\n"), 5, "bidirectional control U+2066"),
    "next-line-char": Case(extra("description: a\x85op: invert\n"), 5, "Unicode line break U+0085"),
    "line-separator": Case(extra("description: a\u2028b\n"), 5, "Unicode line break U+2028"),
    "lone-carriage-return": Case(extra("description: a\rname: evil\n"), 5, "carriage return"),
    "bom-in-the-middle": Case(extra("description: a\ufeffb\n"), 5, "byte order mark"),
    "escaped-control-in-value": Case(
        extra('description: "\\e[2J"\n'), 5, "description: contains control character U+001B"
    ),
    "escaped-bidi-in-value": Case(extra('description: "abc\\u202edef"\n'), 5, "bidirectional control U+202E"),
    "escaped-nul-in-key": Case(extra('"a\\0b": 1\n'), 5, "a key contains control character U+0000"),
    # --- not a recipe-shaped document ---------------------------------------------------------------------
    "empty": Case("", 1, "the recipe is empty", apply=True),
    "only-comments": Case("# nothing\n# here\n", 1, "the recipe is empty"),
    "top-level-list": Case("- patchkit: 1\n- name: t\n", 1, "must be a mapping (key: value), got a list"),
    "top-level-scalar": Case("hf_notarealtoken0123456789\n", 1, "must be a mapping (key: value), got text", apply=True),
    "top-level-number": Case("42\n", 1, "got a number"),
    "two-documents": Case(HEAD + EDIT + "---\n" + HEAD, 5, "YAML syntax error"),
    "yaml-syntax": Case(HEAD + "edits: [{layer: 0\n", 5, "YAML syntax error"),
    "duplicate-key": Case(extra("name: again\n"), 5, "name: duplicate key (first at line 2)", apply=True),
    "duplicate-key-in-edit": Case(edit("layer: 0, layer: 1, neuron: 1, op: zero"), 4, "layer: duplicate key"),
    "duplicate-anchor": Case(
        HEAD + "edits:\n  - {layer: &a 0, neuron: 1, op: zero}\n  - {layer: &a 1, neuron: *a, op: zero}\n",
        6,
        "anchor &a is defined twice (first at line 5)",
    ),
    "recursive-alias": Case(HEAD + "edits:\n  - {layer: &a [0, *a], neuron: 1, op: zero}\n", 5, "edits[0].layer[1]"),
    "unknown-top-key": Case(extra("edit: []\n"), 5, "edit: unknown key"),
    "unknown-edit-key": Case(edit("layer: 0, neuron: 1, op: zero, sign: -1"), 4, "edits[0].sign: unknown key"),
    "long-unknown-key": Case(extra("k" * 1000 + ": 1\n"), 5, "unknown key"),
    "python-object-tag": Case(name("!!python/object/apply:os.system [echo pwned]"), 2, "YAML tag"),
    "python-name-tag": Case(extra("description: !!python/name:os.system\n"), 5, "YAML tag"),
    "custom-tag": Case(extra("publish: !foo {repo: a/b}\n"), 5, "YAML tag !foo is not allowed"),
    "set-tag": Case(edit("layer: 0, neuron: !!set {1, 2}, op: zero"), 4, "a YAML set (!!set) is not allowed"),
    "binary-tag": Case(extra("description: !!binary aGVsbG8=\n"), 5, "binary data (!!binary) is not allowed"),
    "integer-key": Case(extra("1: x\n"), 5, "key 1 must be a string"),
    "null-key": Case(extra("~: x\n"), 5, "key null must be a string"),
    "complex-key": Case(extra("? [a, b]\n: x\n"), 5, "must be a string"),
    "edits-a-mapping": Case(HEAD + "edits: {layer: 0, neuron: 1, op: zero}\n", 4, "edits: must be a list of edits"),
    "edit-a-scalar": Case(HEAD + "edits: [3]\n", 4, "edits[0]: an edit must be a mapping"),
    # --- name -----------------------------------------------------------------------------------------------
    "name-97-chars": Case(name("a" * 97), 2, "name: is 97 characters long (limit 96)"),
    "name-a-mapping": Case(name("{first: a}"), 2, "name: must be text, got a mapping"),
    "name-a-list": Case(name("[a, b]"), 2, "name: must be text, got a list"),
    "name-empty": Case(name('""'), 2, "name: must not be empty"),
    "name-traversal": Case(name("../../etc/x"), 2, "is not a usable name", apply=True),
    "name-dotdot": Case(name(".."), 2, "is not a usable name"),
    "name-tab": Case(name('"a\\tb"'), 2, "is not a usable name"),
    "name-trailing-newline": Case(name('"abc\\n"'), 2, "is not a usable name"),
    "name-spaces": Case(name("my fix"), 2, "is not a usable name"),
    "name-a-date": Case(name("2026-11-24"), 2, "read 2026-11-24 as a date"),
    "name-an-impossible-date": Case(name("2026-02-30"), 2, "not a valid date"),
    # --- loose types ------------------------------------------------------------------------------------------
    "patchkit-true": Case(
        "patchkit: true\nname: t\nsource: {kind: manual}\n" + EDIT, 1, "schema version true is not supported"
    ),
    "patchkit-float": Case(
        "patchkit: 1.0\nname: t\nsource: {kind: manual}\n" + EDIT, 1, "schema version 1.0 is not supported"
    ),
    "patchkit-text": Case(
        'patchkit: "1"\nname: t\nsource: {kind: manual}\n' + EDIT, 1, "schema version '1' is not supported"
    ),
    "layer-true": Case(
        edit("layer: true, neuron: 1, op: zero"),
        4,
        "edits[0].layer: must be an index or a list of indices, got true",
        apply=True,
    ),
    "layer-false": Case(edit("layer: false, neuron: 1, op: zero"), 4, "got false (a boolean)"),
    "neuron-quoted": Case(
        edit('layer: 0, neuron: "2", op: zero'),
        4,
        "edits[0].neuron: must be an index or a list of indices, got '2' (text)",
        apply=True,
    ),
    "neuron-float": Case(edit("layer: 0, neuron: 2.0, op: zero"), 4, "got 2.0 (a decimal number)"),
    "neuron-fraction": Case(edit("layer: 0, neuron: 1.5, op: zero"), 4, "got 1.5"),
    "neuron-null": Case(edit("layer: 0, neuron: ~, op: zero"), 4, "got null"),
    "neuron-mapping": Case(edit("layer: 0, neuron: {n: 1}, op: zero"), 4, "edits[0].neuron"),
    "neuron-list-with-bool": Case(
        edit("layer: 0, neuron: [1, true], op: zero"), 4, "edits[0].neuron[1]: must be an index"
    ),
    "neuron-list-with-text": Case(edit('layer: 0, neuron: [1, "2"], op: zero'), 4, "edits[0].neuron[1]"),
    "expert-text": Case(edit('layer: 0, expert: "3", op: suppress'), 4, "edits[0].expert"),
    "op-integer": Case(edit("layer: 0, neuron: 1, op: 1"), 4, "edits[0].op: 1 is not allowed"),
    "op-boolean": Case(edit("layer: 0, neuron: 1, op: true"), 4, "edits[0].op: true is not allowed"),
    "op-list": Case(edit("layer: 0, neuron: 1, op: [zero]"), 4, "edits[0].op"),
    "tensor-integer": Case(edit("layer: 0, neuron: 1, op: zero, tensor: 1"), 4, "edits[0].tensor"),
    "factor-text": Case(
        edit('layer: 0, neuron: 1, op: scale, factor: "0.5"'),
        4,
        "edits[0].factor: must be a number, got '0.5' (text)",
        apply=True,
    ),
    "factor-true": Case(
        edit("layer: 0, neuron: 1, op: scale, factor: true"), 4, "edits[0].factor: must be a number, got true"
    ),
    "factor-list": Case(edit("layer: 0, neuron: 1, op: scale, factor: [0.5]"), 4, "edits[0].factor: must be a number"),
    "factor-negative-zero": Case(
        edit("layer: 0, neuron: 1, op: scale, factor: -0.0"), 4, "write `op: zero`", apply=True
    ),
    "factor-zero": Case(edit("layer: 0, neuron: 1, op: scale, factor: 0"), 4, "write `op: zero`"),
    "factor-nan": Case(
        edit("layer: 0, neuron: 1, op: scale, factor: .nan"), 4, "nan is not a finite number", apply=True
    ),
    "factor-inf": Case(edit("layer: 0, neuron: 1, op: scale, factor: .inf"), 4, "inf is not a finite number"),
    "factor-overflows-to-inf": Case(
        edit("layer: 0, neuron: 1, op: scale, factor: 1e999"), 4, "inf is not a finite number"
    ),
    "factor-on-zero-op": Case(edit("layer: 0, neuron: 1, op: zero, factor: 0.5"), 4, "op zero takes no factor"),
    "private-yes-quoted": Case(
        extra('publish: {repo: a/b, private: "yes"}\n'), 5, "publish.private: must be true or false, got 'yes'"
    ),
    "private-yes": Case(extra("publish: {repo: a/b, private: yes}\n"), 5, "publish.private: must be true or false"),
    "private-one": Case(extra("publish: {repo: a/b, private: 1}\n"), 5, "got 1 (an integer)"),
    "gate-rate-text": Case(
        extra('checks: {loops: {max_loop_rate: "0.1"}}\n'), 5, "checks.loops.max_loop_rate: must be a number"
    ),
    "gate-rate-nan": Case(extra("checks: {loops: {max_loop_rate: .nan}}\n"), 5, "must be a finite number"),
    "gate-temperature-inf": Case(extra("checks: {loops: {temperature: .inf}}\n"), 5, "checks.loops.temperature"),
    "gate-samples-float": Case(
        extra("checks: {loops: {samples: 3.0}}\n"), 5, "checks.loops.samples: must be a whole number"
    ),
    "gate-samples-bool": Case(extra("checks: {loops: {samples: true}}\n"), 5, "checks.loops.samples"),
    "gate-samples-a-billion": Case(extra("checks: {loops: {samples: 1000000000}}\n"), 5, "must be <= 1000"),
    "gate-tokens-a-billion": Case(
        extra("checks: {loops: {max_new_tokens: 1000000000}}\n"), 5, "checks.loops.max_new_tokens: must be <="
    ),
    "gate-tasks-text": Case(extra("checks: {bench: {tasks: ppl}}\n"), 5, "checks.bench.tasks: must be a list"),
    # --- numbers too long to convert, indices beyond any model ----------------------------------------------
    "neuron-5000-digits": Case(
        edit("layer: 0, neuron: " + "9" * 5000 + ", op: zero"),
        4,
        "edits[0].neuron: a number written with 5000 characters is too long",
        apply=True,
        bomb=True,
    ),
    "neuron-hex-5000-digits": Case(edit("layer: 0, neuron: 0x" + "f" * 5000 + ", op: zero"), 4, "is too long"),
    "factor-5000-digits": Case(
        edit("layer: 0, neuron: 1, op: scale, factor: 0." + "5" * 5000), 4, "edits[0].factor: a number written with"
    ),
    "underscored-number": Case(edit("layer: 0, neuron: 1" + "_" * 200 + "1, op: zero"), 4, "is too long"),
    "layer-beyond-int32": Case(edit(f"layer: {MAX_INDEX + 1}, neuron: 1, op: zero"), 4, "is beyond any model"),
    "negative-in-list": Case(
        edit("layer: 0, neuron: [1, -1], op: zero"), 4, "edits[0].neuron[1]: indices must be >= 0"
    ),
    "int-tag-on-fraction": Case(edit("layer: 0, neuron: !!int 1.5, op: zero"), 4, "is not a valid integer"),
    "float-tag-on-text": Case(edit("layer: 0, neuron: 1, op: scale, factor: !!float half"), 4, "is not a valid number"),
    "bool-tag-on-maybe": Case(extra("publish: {private: !!bool maybe}\n"), 5, "is not a valid boolean"),
    # --- time and memory bombs ------------------------------------------------------------------------------
    "deep-flow-lists": Case(
        extra("description: " + "[" * 10_000 + "]" * 10_000 + "\n"),
        5,
        "nests deeper than 64 levels",
        apply=True,
        bomb=True,
    ),
    "deep-flow-maps": Case(
        extra("description: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"), 5, "nests deeper", bomb=True
    ),
    "deep-block-sequences": Case(extra("description:\n" + "- " * 10_000 + "x\n"), 6, "nests deeper", bomb=True),
    "deep-block-maps": Case(
        extra("deep:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1000))), 68, "nests deeper"
    ),  # the key of level 65
    "deep-through-aliases": Case(
        _alias_chain(5000), 70, "nests deeper than 64 levels (through YAML aliases)", bomb=True
    ),  # x63, 65 levels down
    "billion-laughs": Case(_laughs(), 9, f"expands to more than {MAX_NODES} values", apply=True, bomb=True),
    "wide-list": Case(
        edit("layer: 0, neuron: [" + ", ".join(["1"] * 200_000) + "], op: zero"),
        4,
        f"expands to more than {MAX_NODES} values",
        bomb=True,
    ),
    "expansion-bomb": Case(
        edit(f"layer: [{ints(100)}], neuron: [{ints(10_000)}], op: zero"),
        4,
        f"expands to more than {MAX_EXPANDED_EDITS:,} (layer, neuron) slices",
        apply=True,
        bomb=True,
    ),
    "expansion-across-edits": Case(
        HEAD
        + "edits:\n"
        + "".join(f"  - {{layer: [{ints(10)}], neuron: [{ints(1000, 1000 * i)}], op: zero}}\n" for i in range(11)),
        15,
        "edits[10]: the recipe expands to more than",
    ),
    "duplicate-at-end-of-long-list": Case(
        edit(f"layer: 0, neuron: [{ints(30_000)}, 29999], op: zero"), 4, "29999 is listed twice", apply=True
    ),
    "duplicate-across-edits": Case(
        HEAD + "edits:\n  - {layer: [0, 1], neuron: [" + ints(5000) + "], op: zero}\n"
        "  - {layer: 1, neuron: 4999, op: invert}\n",
        6,
        "edits[1]: layer 1 neuron 4999 is already edited by edits[0]",
    ),
    # --- model and publish references: Hub ids only, never paths ---------------------------------------------
    "repo-traversal": Case(model("repo: ../evil"), 5, "model.repo: '../evil' is not a Hub repo id", apply=True),
    "repo-absolute-path": Case(model("repo: /etc/passwd"), 5, "is not a Hub repo id"),
    "repo-relative-dir": Case(model("repo: ./my-model"), 5, "is not a Hub repo id"),
    "repo-home-dir": Case(model("repo: ~/models/x"), 5, "is not a Hub repo id"),
    "repo-three-parts": Case(model("repo: org/name/extra"), 5, "is not a Hub repo id"),
    "repo-with-space": Case(model("repo: my org/name"), 5, "is not a Hub repo id"),
    "repo-dotdot-in-name": Case(model("repo: org/na..me"), 5, "the Hub refuses it"),
    "repo-double-dash": Case(model("repo: org/a--b"), 5, "the Hub refuses it"),
    "repo-dot-git": Case(model("repo: org/name.git"), 5, "the Hub refuses it"),
    "repo-url": Case(model("repo: https://huggingface.co/org/name"), 5, "is not a Hub repo id"),
    "repo-unicode": Case(model("repo: órg/name"), 5, "is not a Hub repo id"),
    "repo-newline": Case(model('repo: "org/name\\n"'), 5, "is not a Hub repo id"),
    "repo-with-revision": Case(model("repo: org/name@main"), 5, "put the revision in model.revision"),
    "repo-a-number": Case(model("repo: 123"), 5, "model.repo: must be text"),
    "revision-with-space": Case(
        model("repo: org/name, revision: main branch"), 5, "model.revision: 'main branch' is not a commit sha"
    ),
    "revision-dotdot": Case(model("repo: org/name, revision: a..b"), 5, "not a valid git revision", apply=True),
    "revision-option": Case(model("repo: org/name, revision: --upload-pack=x"), 5, "not a valid git revision"),
    "revision-lock": Case(model("repo: org/name, revision: main.lock"), 5, "not a valid git revision"),
    "revision-newline": Case(model('repo: org/name, revision: "main\\n"'), 5, "model.revision"),
    "publish-repo-traversal": Case(
        extra("publish: {repo: ../../x}\n"), 5, "publish.repo: '../../x' is not a Hub repo id"
    ),
    "publish-repo-absolute": Case(extra("publish: {repo: /tmp/x}\n"), 5, "publish.repo"),
    "license-with-space": Case(extra("publish: {repo: a/b, license: Apache 2.0}\n"), 5, "is not a license id"),
    "diff-reference-local-path": Case(
        HEAD + "resolution: {status: unresolved, method: diff, reference: /home/me/model}\n",
        4,
        "resolution.reference: must be a Hub reference",
    ),
    "checksums-not-a-list": Case(
        "patchkit: 1\nname: t\nsource: {kind: diff, checksums: 5}\n" + EDIT, 3, "source.checksums: must be a list"
    ),
    "checksums-bad-sha": Case(
        "patchkit: 1\nname: t\nsource:\n  kind: diff\n  checksums:\n    - {layer: 0, kind: neuron, index: 1, "
        "tensor: x, before_sha256: abc, after_sha256: abc}\n" + EDIT,
        6,
        "source.checksums[0].before_sha256: must be a sha256",
    ),
    "source-base-a-number": Case(
        "patchkit: 1\nname: t\nsource: {kind: diff, base: 5}\n" + EDIT, 3, "source.base: must be text"
    ),
    "constraints-layer-bool": Case(
        HEAD + "resolution: {status: unresolved, constraints: {layers: [true]}}\n",
        4,
        "resolution.constraints.layers[0]: must be an index",
    ),
    "constraints-factor-nan": Case(
        HEAD + "resolution: {status: unresolved, constraints: {factors: [.nan]}}\n",
        4,
        "resolution.constraints.factors[0]: nan is not a finite number",
    ),
    "constraints-max-edits-huge": Case(
        HEAD + "resolution: {status: unresolved, constraints: {max_edits: 10000000}}\n",
        4,
        "resolution.constraints.max_edits: must be <=",
    ),
}

APPLY_CASES = sorted(k for k, c in CASES.items() if c.apply)


def _materialize(case: Case, directory: Path, key: str) -> Path:
    if callable(case.content):
        return case.content(directory)
    path = directory / f"{key}.yaml"
    path.write_bytes(case.content.encode() if isinstance(case.content, str) else case.content)
    return path


def _needles(case: Case, path: Path) -> list[str]:
    return [f"{path}:{case.line}:" if case.line is not None else str(path), case.says]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return raw_llama_checkpoint(tmp_path_factory.mktemp("hostile-recipes") / "model", "BF16", shards=2)


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "hash-cache"))


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60
    assert len(APPLY_CASES) >= 15
    assert sum(c.bomb for c in CASES.values()) >= 5


@pytest.mark.parametrize("key", sorted(CASES))
def test_validate_refuses(key, tmp_path):
    case = CASES[key]
    path = _materialize(case, tmp_path, key)
    result = refuse(
        ["validate", str(path)],
        names=_needles(case, path),
        unchanged=[path] if case.watch else [],
        codes=(2,),
        subprocess_run=case.bomb,
    )
    assert len(result.error_line) < 600 + len(str(path)), result.error_line  # never an echo of a huge value


@pytest.mark.parametrize("key", APPLY_CASES)
def test_apply_refuses_and_writes_nothing(key, tmp_path, model_dir):
    case = CASES[key]
    path = _materialize(case, tmp_path, key)
    out = tmp_path / "out"
    refuse(
        ["apply", str(path), "--model", str(model_dir), "-o", str(out)],
        names=_needles(case, path),
        unchanged=[model_dir, path] if case.watch else [model_dir],
        absent=[out],
        codes=(2,),
        subprocess_run=case.bomb,
    )


def test_a_non_recipe_file_is_not_echoed(tmp_path):
    """A link to a secret (a token file) must not leak its content into the error message."""
    secret = tmp_path / "token"
    secret.write_text("hf_notarealtoken0123456789\n")
    link = tmp_path / "recipe.yaml"
    link.symlink_to(secret)
    result = refuse(["validate", str(link)], names=[f"{link}:1:"], codes=(2,))
    assert "hf_" not in result.output


def test_a_directory_is_refused(tmp_path):
    directory = tmp_path / "recipe.yaml"
    directory.mkdir()
    with pytest.raises(RecipeError, match=r"recipe\.yaml: is a directory, not a regular recipe"):
        load_recipe(directory)
    result = CliRunner().invoke(main, ["validate", str(directory)])  # click's own usage check answers first
    assert result.exit_code == 2 and "Traceback" not in result.output and str(directory) in result.output


def test_dev_zero_named_directly():
    with pytest.raises(RecipeError, match=r"/dev/zero: is a device"):
        load_recipe("/dev/zero")


def test_programmatic_recipes_are_capped_before_expanding():
    from patchkit.recipe import Recipe

    recipe = Recipe.model_validate(
        {
            "name": "t",
            "source": {"kind": "manual"},
            "edits": [{"layer": list(range(100)), "neuron": list(range(2000)), "op": "zero"}],
        }
    )
    assert recipe.slice_count() == 200_000
    with pytest.raises(
        RecipeError, match=r"expands to 200,000 \(layer, index\) slices, more than the limit of 100,000"
    ):
        recipe.expanded_edits()


def test_numpy_indices_from_library_callers_are_accepted_but_not_booleans():
    import numpy as np

    from patchkit.recipe import NeuronEdit

    assert NeuronEdit.model_validate(
        {"layer": np.int64(1), "neuron": [np.int32(2)], "op": "scale", "factor": np.float32(0.5)}
    ).neuron == [2]
    with pytest.raises(Exception, match="boolean"):
        NeuronEdit.model_validate({"layer": True, "neuron": 1, "op": "zero"})


# --- valid edge cases: still accepted ---------------------------------------------------------------------

VALID: dict[str, str | bytes] = {
    "name-96-chars": name("a" * 96),
    "layer-list": edit("layer: [0, 1], neuron: 1, op: zero"),
    "factor-1e-3": edit("layer: 0, neuron: 1, op: scale, factor: 1e-3"),
    "factor-integer": edit("layer: 0, neuron: 1, op: scale, factor: 2"),
    "factor-minus-one": edit("layer: 0, neuron: 1, op: scale, factor: -1"),
    "factor-negative": edit("layer: 0, neuron: 1, op: scale, factor: -0.8"),
    "utf8-bom": "\ufeff" + HEAD + EDIT,
    "crlf": (HEAD + EDIT).replace("\n", "\r\n"),
    "comments-everywhere": "# a recipe\npatchkit: 1  # version\nname: t # name\n# between\nsource: {kind: manual}\n"
    "edits:  # the edits\n  - {layer: 0, neuron: 1, op: zero}  # one\n# end\n",
    "anchors-used-once": HEAD
    + "edits:\n  - {layer: &layers [0, 1], neuron: 1, op: zero}\n  - {layer: *layers, neuron: 2, op: invert}\n",
    "merge-key": HEAD + "edits:\n  - &z {layer: 0, neuron: 1, op: zero}\n  - {<<: *z, neuron: 2}\n",
    "hex-index": edit("layer: 0, neuron: 0x10, op: zero"),
    "unicode-description": extra('description: "Ünïcödé — ✓ 日本語 🙂"\n'),
    "tab-in-quoted-text": extra('description: "a\\tb"\n'),
    "block-scalar-text": extra("description: |\n  line one\n  line two\n"),
    "pinned-revision": model(f"repo: google/gemma-4-E2B-it, revision: '{SHA}', architecture: gemma4"),
    "branch-revision": model("repo: org/name, revision: main"),
    "pr-revision": model("repo: org/name, revision: refs/pr/1"),
    "repo-with-dots-and-underscores": model("repo: Org_1/name.v2-final"),
    "publish": extra("publish: {repo: my-org/t-fix, license: apache-2.0, private: true}\n"),
    "gates": extra(
        "checks: {loops: {suite: enumeration, samples: 3, max_loop_rate: 0.1}, bench: {max_kl: 0.02, tasks: [kl]}}\n"
    ),
    "evidence-nested-30": "patchkit: 1\nname: t\nsource:\n  kind: paper\n  evidence: "
    + "{a: " * 30
    + "1"
    + "}" * 30
    + "\n"
    + EDIT,
    "evidence-with-a-date": "patchkit: 1\nname: t\nsource: {kind: paper, published: 2026-11-24}\n" + EDIT,
    "description-500-kB": extra("description: " + "x" * 500_000 + "\n"),
    "near-the-expansion-cap": edit(f"layer: [{ints(99)}], neuron: [{ints(1000)}], op: zero"),
    "unresolved-diff-from-the-hub": HEAD
    + f"resolution: {{status: unresolved, method: diff, reference: org/fixed@{SHA}}}\n",
}


@pytest.mark.parametrize("key", sorted(VALID))
def test_validate_accepts_valid_edge_cases(key, tmp_path):
    path = tmp_path / f"{key}.yaml"
    path.write_bytes(VALID[key].encode() if isinstance(VALID[key], str) else VALID[key])
    result = CliRunner().invoke(main, ["validate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True
    assert load_recipe(path).source_text.encode() == path.read_bytes()  # exactly the text that was parsed


def test_factor_1e_3_against_a_bf16_model(tmp_path, model_dir):
    path = tmp_path / "r.yaml"
    path.write_text(edit("layer: [0, 1], neuron: 1, op: scale, factor: 1e-3"))
    result = CliRunner().invoke(main, ["validate", str(path), "--model", str(model_dir)])
    assert result.exit_code == 0, result.output


def test_symlink_to_a_recipe_is_followed(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text(HEAD + EDIT)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    assert load_recipe(link).source_text == real.read_text()


def test_bom_and_crlf_recipe_applies_and_provenance_hashes_the_file(tmp_path, model_dir):
    path = tmp_path / "bom.yaml"
    path.write_bytes(("\ufeff" + edit("layer: 1, neuron: [2, 3], op: invert")).replace("\n", "\r\n").encode())
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["apply", str(path), "--model", str(model_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "patchkit.json").read_text())
    assert prov["recipe"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["recipe"]["text"].encode() == path.read_bytes()


def test_parse_recipe_applies_the_same_bounds():
    with pytest.raises(RecipeError, match=r"x\.yaml:5:3: bidirectional control U\+202E"):
        parse_recipe(extra("# \u202e\n"), "x.yaml")
    with pytest.raises(RecipeError, match="too large for a recipe"):
        parse_recipe("#" * (MAX_RECIPE_BYTES + 1), "x.yaml")
    with pytest.raises(RecipeError, match="lone surrogate"):
        parse_recipe(extra("description: a\ud800b\n"), "x.yaml")

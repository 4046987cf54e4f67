"""Check that a patched checkpoint is exactly what its recipe produces from the base model.

Nothing is written: the expected bytes of every edited shard are regenerated in memory chunk by chunk
(the same `PatchStream` apply writes from) and compared with the patched file; every other file must be
byte-identical to the base. `patchkit.json` is ignored (it holds a timestamp), any other extra or missing
file is a mismatch. The first difference is reported by file, byte offset and tensor.

Every byte is read: verify never trusts the sha256 cache (a file rewritten with its mtime restored keeps its
cache key). A file that is the same inode as the base file (an output made with `link=True`) cannot differ from
it, so it is hashed once and checked against the sha256 the patched directory's `patchkit.json` recorded — a
write into a hard-linked shard changed the base too, and only that record can tell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchkit._io.hashing import sha256_file
from patchkit._io.progress import Progress
from patchkit.edit.apply import _resolve, read_recipe
from patchkit.edit.output import IN_PLACE_JOURNAL, UNDO_RECIPE, _source_files
from patchkit.edit.provenance import PROVENANCE_FILE, read_provenance
from patchkit.edit.stream import PatchStream
from patchkit.errors import ApplyError, Fix, PatchkitError
from patchkit.model.safetensors_io import CHUNK, read_header


@dataclass
class VerifyResult:
    ok: bool
    model_dir: Path
    patched_dir: Path
    files_checked: int = 0
    bytes_compared: int = 0
    first_difference: dict[str, Any] | None = None
    edits: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.ok:
            return f"{self.patched_dir} matches the recipe applied to {self.model_dir} byte for byte ({self.files_checked} files)"
        d = self.first_difference or {}
        where = d.get("file", "?")
        if d.get("tensor"):
            where += f" tensor {d['tensor']}"
        if d.get("offset") is not None:
            where += f" at byte {d['offset']}"
        return (
            f"{self.patched_dir} differs from the recipe applied to {self.model_dir}: {where} ({d.get('reason', '')})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "model": str(self.model_dir),
            "patched": str(self.patched_dir),
            "edits": self.edits,
            "files_checked": self.files_checked,
            "bytes_compared": self.bytes_compared,
            "first_difference": self.first_difference,
            "message": self.message,
        }


def verify_patched(
    recipe: Any, *, model: str | None, patched: str | os.PathLike[str], progress: Progress | None = None
) -> VerifyResult:
    """Check that a patched checkpoint is exactly `apply(recipe, model)`, byte for byte (patchkit.json aside).

    Args:
        recipe: a Recipe or a recipe path.
        model: the base checkpoint (default: the recipe's model).
        patched: the directory to check.
        progress: `progress(stage, done_bytes, total_bytes)`.

    Returns:
        VerifyResult: `.ok`, and `.message` naming the first differing file or tensor slice.

    Raises:
        RecipeError / ModelError: the recipe or either checkpoint cannot be read.

    Example:
        >>> verify_patched("recipes/e2b.yaml", model="./gemma-4-E2B-it", patched="./e2b-fixed").ok  # doctest: +SKIP
        True
    """
    from patchkit.edit.plan import plan_recipe

    recipe_obj, _, _ = read_recipe(recipe)
    ref, source_dir = _resolve(recipe_obj, model)
    patched_dir = Path(patched)
    if not patched_dir.is_dir():
        raise PatchkitError(
            f"{patched_dir}: not a directory", fix=Fix("patched", "DIR", "(the patched checkpoint directory)")
        )
    for d in (source_dir, patched_dir):
        if os.path.lexists(d / IN_PLACE_JOURNAL):
            raise ApplyError(
                f"{d} holds an interrupted --in-place apply ({IN_PLACE_JOURNAL}); its shards may be mid-change",
                hint="run `patchkit apply` on it first: that finishes or undoes the interrupted apply and says which",
                data={"dir": str(d)},
            )
    plan = plan_recipe(recipe_obj, ref, source_dir=source_dir)
    result = VerifyResult(ok=True, model_dir=source_dir, patched_dir=patched_dir, edits=len(plan.edits))
    expected = _source_files(source_dir)
    # the patched side is only read and compared, never copied: links may point anywhere (special files are refused)
    prov = read_provenance(patched_dir) or {}
    files_recorded = prov.get("output_files")
    recorded: dict[str, Any] = files_recorded if isinstance(files_recorded, dict) else {}
    # the undo recipe belongs to a model patched in place (apply writes it there); anywhere else it is extra
    undo_expected = prov.get("in_place") is True and prov.get("undo_recipe") == UNDO_RECIPE
    actual = set(_source_files(patched_dir, confined=False)) | {
        f for f in (UNDO_RECIPE,) if (patched_dir / f).exists() and not undo_expected
    }
    if _is_patchkit_card(patched_dir / CARD_FILE):
        # `patchkit push` replaces README.md with the card it generates, so a pulled copy holds that card
        actual.discard(CARD_FILE)
        expected = [f for f in expected if f != CARD_FILE]
        result.notes.append(f"{CARD_FILE} is the model card `patchkit push` wrote; not compared")
    extra = sorted(actual - set(expected))
    missing = [f for f in expected if f not in actual]
    if missing:
        return _fail(result, missing[0], None, None, "missing from the patched checkpoint")
    if extra:
        return _fail(result, extra[0], None, None, "not in the base checkpoint (apply would not write it)")
    rewritten = plan.files_to_rewrite
    for rel in expected:
        src, dst = source_dir / rel, patched_dir / rel
        result.files_checked += 1
        if rel in rewritten:
            diff_at = _compare_stream(PatchStream(Path(os.path.realpath(src)), rewritten[rel]), dst, result, progress)
        else:
            diff_at = _compare_files(src, dst, result, recorded.get(rel))
        if diff_at is not None:
            offset, reason = diff_at
            return _fail(result, rel, offset, _tensor_at(dst if dst.exists() else src, offset), reason)
    if (patched_dir / PROVENANCE_FILE).exists():
        result.notes.append(f"{PROVENANCE_FILE} not compared (it records when the output was made)")
    return result


CARD_FILE = "README.md"


def _is_patchkit_card(path: Path) -> bool:
    """True for a README.md whose YAML front matter lists the `patchkit` tag (a card `patchkit push` generated).

    Read here, not through `patchkit.publish` (the byte engine does not import the publishing stage): the first
    64 KB, the front matter between the leading `---` lines, its `tags` list.
    """
    if not path.is_file():  # a regular file (an HF-cache snapshot links into its blobs): FIFOs and devices are not
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16).decode("utf-8", errors="replace")
    except OSError:
        return False
    if not head.startswith("---"):
        return False
    end = head.find("\n---", 3)
    if end < 0:
        return False
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        meta = YAML(typ="safe").load(head[3:end])
    except YAMLError:
        return False
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return isinstance(tags, list) and "patchkit" in tags


def _fail(result: VerifyResult, file: str, offset: int | None, tensor: str | None, reason: str) -> VerifyResult:
    result.ok = False
    result.first_difference = {"file": file, "offset": offset, "tensor": tensor, "reason": reason}
    return result


def _compare_stream(stream: PatchStream, dst: Path, result: VerifyResult, progress: Progress | None):
    size = os.path.getsize(dst)
    if size != stream.size:
        return min(size, stream.size), f"size {size} != expected {stream.size}"
    buf = bytearray(CHUNK)
    with open(dst, "rb", buffering=0) as fh:
        fd = fh.fileno()
        for offset, expected in stream:
            n = len(expected)
            got = np.frombuffer(buf, np.uint8)[:n]
            if os.preadv(fd, [memoryview(buf)[:n]], offset) != n:
                return offset, "file shrank while reading"
            want = np.frombuffer(expected, np.uint8)
            result.bytes_compared += n
            if not np.array_equal(got, want):
                return offset + int(np.flatnonzero(got != want)[0]), "bytes differ from the recipe's result"
            if progress:
                progress(dst.name, offset + len(expected), stream.size)
    return None


def _compare_files(src: Path, dst: Path, result: VerifyResult, recorded: Any = None):
    size_a, size_b = os.path.getsize(src), os.path.getsize(dst)
    if size_a != size_b:
        return min(size_a, size_b), f"size {size_b} != base size {size_a}"
    try:
        same = os.path.samefile(src, dst)
    except OSError:
        same = False
    if same:  # one inode: equal to itself; what its bytes were when apply linked it, only provenance knows
        digest = sha256_file(dst, use_cache=False)
        result.bytes_compared += size_b
        want = recorded.get("sha256") if isinstance(recorded, dict) else None
        if want and digest != want:
            return None, (
                f"sha256 differs from {PROVENANCE_FILE}: the file changed after apply, and as it is a hard "
                "link to the base file, the base changed too"
            )
        return None
    with open(src, "rb", buffering=0) as fa, open(dst, "rb", buffering=0) as fb:
        offset = 0
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            result.bytes_compared += len(x)
            if x != y:
                first = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
                return offset + first, "bytes differ from the base file (apply leaves this file untouched)"
            if not x:
                return None
            offset += len(x)


def _tensor_at(path: Path, offset: int | None) -> str | None:
    """Name of the tensor holding byte `offset` of a safetensors file (None for headers / other files)."""
    if offset is None or not str(path).endswith(".safetensors"):
        return None
    try:
        header = read_header(path)
    except PatchkitError:
        return None
    if offset < header.data_start:
        return "(header)"
    rel = offset - header.data_start
    for info in header.tensors.values():
        if info.begin <= rel < info.end:
            return info.name
    return None

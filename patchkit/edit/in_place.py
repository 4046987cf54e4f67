"""`apply --in-place`: patch a plain local directory itself (invert-only recipes, with an undo recipe).

New shard files are built beside the old ones and renamed over them one by one; a journal lists the shards due
until the last rename is done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from patchkit._io.atomic import TMP_MARK, atomic_write_json, atomic_write_text
from patchkit._io.progress import Progress
from patchkit.edit.plan import Plan
from patchkit.edit.provenance import (
    PROVENANCE_FILE,
    known_sha256,
    remember_sha256,
    sha256_file,
)
from patchkit.errors import ApplyError
from patchkit.edit.output import (
    IN_PLACE_JOURNAL,
    UNDO_RECIPE,
    ApplyContext,
    ApplyResult,
    _pid_alive,
    _provenance,
    _source_files,
)
from patchkit.edit.stream import write_patched


def _check_in_place(source_dir: Path, plan: Plan) -> None:
    for f in plan.weight_files:
        if os.path.islink(source_dir / f):
            raise ApplyError(
                f"--in-place refused: {source_dir / f} is a symlink (Hugging Face cache?); the cache is never "
                "modified — write a new directory with -o OUT"
            )
    non_invert = sorted({e.op for e in plan.edits if e.op != "invert"})
    if non_invert:
        raise ApplyError(
            f"--in-place refused: op {', '.join(non_invert)} cannot be undone exactly; only invert-only recipes "
            "are applied in place — write a new directory with -o OUT"
        )


def _apply_in_place(ctx: ApplyContext, source_dir: Path, progress: Progress | None) -> ApplyResult:
    """Patch a plain local directory: new shard files are built beside the old ones, then renamed over them."""
    rewritten = ctx.plan.files_to_rewrite
    temps: dict[str, Path] = {}
    source_sha: dict[str, dict] = {}
    output_sha: dict[str, dict] = {}
    slice_hashes: dict[int, tuple[str, str]] = {}
    for stale in source_dir.glob(f".*{TMP_MARK}*"):  # shard temps of a killed in-place run
        pid = stale.name.rsplit(TMP_MARK, 1)[1]
        if stale.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    try:
        for rel, edits in rewritten.items():
            src = source_dir / rel
            tmp = src.with_name(f".{src.name}{TMP_MARK}{os.getpid()}")
            if tmp.exists():
                tmp.unlink()
            known = known_sha256(src)
            res = write_patched(src, tmp, edits, progress=progress, hash_source=known is None)
            temps[rel] = tmp
            source_sha[rel] = {"sha256": known or res.source_sha256, "size": res.size}
            output_sha[rel] = {"sha256": res.output_sha256, "size": res.size, "rewritten": True}
            for e, h in zip(edits, res.slice_hashes):
                slice_hashes[id(e)] = h
        for rel in _source_files(source_dir):
            if rel in rewritten:
                continue
            digest = sha256_file(source_dir / rel)
            size = (source_dir / rel).stat().st_size
            if rel in ctx.plan.weight_files:
                source_sha[rel] = {"sha256": digest, "size": size}
            output_sha[rel] = {"sha256": digest, "size": size, "rewritten": False}
        prov = _provenance(ctx, source_sha, output_sha, slice_hashes)
        prov["in_place"] = True
        prov["undo_recipe"] = UNDO_RECIPE
        # Shards are replaced one by one; a journal says which ones were due until the last rename is done.
        journal = {"recipe": ctx.recipe.name, "files": {rel: {"before_sha256": source_sha[rel]["sha256"],
                                                              "after_sha256": output_sha[rel]["sha256"]}
                                                        for rel in temps}}
        atomic_write_json(source_dir / IN_PLACE_JOURNAL, journal)
        undo_path = source_dir / UNDO_RECIPE  # after the journal: never an undo recipe for an unpatched dir
        atomic_write_text(undo_path, _undo_recipe_text(ctx.text, ctx.recipe.name))
        for rel, tmp in list(temps.items()):
            _swap_in(tmp, source_dir / rel)
            del temps[rel]
            remember_sha256(source_dir / rel, output_sha[rel]["sha256"])
        atomic_write_json(source_dir / PROVENANCE_FILE, prov)
        (source_dir / IN_PLACE_JOURNAL).unlink()
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return ApplyResult(out_dir=source_dir, plan=ctx.plan, provenance=prov, in_place=True, undo_recipe=undo_path)


def _swap_in(tmp: Path, dst: Path) -> None:
    """Atomically replace one shard with its patched version."""
    os.replace(tmp, dst)


def _refuse_interrupted_in_place(source_dir: Path) -> None:
    journal = source_dir / IN_PLACE_JOURNAL
    if journal.exists():
        try:
            files = sorted(json.loads(journal.read_text()).get("files", {}))
        except (OSError, ValueError, AttributeError):
            files = []
        raise ApplyError(
            f"{source_dir} holds an interrupted --in-place apply ({IN_PLACE_JOURNAL}): {', '.join(files) or 'its shards'} "
            f"may be partly replaced; compare their sha256 with the before/after values in {journal}, restore the "
            "originals, then delete that file"
        )


def _undo_recipe_text(text: str, name: str) -> str:
    """The recipe that undoes an invert-only recipe: the same edits under a new name (invert is its own inverse)."""
    from io import StringIO

    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(text)
    data["name"] = f"{name}-undo"
    data["description"] = f"Undo of recipe {name} applied in place (invert is its own inverse)."
    data["source"] = {"kind": "manual", "reference": f"undo of {name}"}
    for key in ("publish", "checks"):
        data.pop(key, None)
    buf = StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()

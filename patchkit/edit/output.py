"""What an apply produces: the result object, the provenance document, and which source files are carried over."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit._io.atomic import TMP_MARK
from patchkit._io.fs import UnsafeFileError, check_entry
from patchkit._version import __version__
from patchkit.edit.plan import Plan
from patchkit.edit.provenance import (
    PROVENANCE_FILE,
    utc_now,
)

UNDO_RECIPE = "patchkit-undo.yaml"
IN_PLACE_JOURNAL = ".patchkit-in-place.json"
#: the lock an in-place apply holds on its directory (fcntl.flock); removed when the apply ends
LOCK_FILE = ".patchkit.lock"
#: patchkit's own bookkeeping in a model directory: never part of a checkpoint, never copied or published
BOOKKEEPING = frozenset({PROVENANCE_FILE, UNDO_RECIPE, IN_PLACE_JOURNAL, LOCK_FILE})
#: files of a Hub snapshot that belong to the git repo, not to the checkpoint: the Hub writes and manages the root
#: .gitattributes itself (LFS rules), so a copy in an apply output would only be a file push must not upload and
#: verify must not compare. Never copied by apply, never listed in patchkit.json, never published.
HUB_MANAGED = frozenset({".gitattributes"})
_SKIP_DIRS = {".cache", ".git", ".huggingface"}


@dataclass
class ApplyResult:
    out_dir: Path | None
    plan: Plan
    provenance: dict[str, Any] | None
    dry_run: bool = False
    in_place: bool = False
    undo_recipe: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "warnings": self.warnings,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "dry_run": self.dry_run,
            "in_place": self.in_place,
            "undo_recipe": str(self.undo_recipe) if self.undo_recipe else None,
            "plan": self.plan.to_json(),
            "provenance": self.provenance,
        }


@dataclass
class ApplyContext:
    recipe: Any
    text: str
    recipe_path: str | None
    ref: Any
    plan: Plan
    parent: dict | None


def _source_files(source_dir: Path, *, confined: bool = True) -> list[str]:
    """Every file of a checkpoint directory (relative paths), minus caches, our own temp/provenance files and the
    Hub-managed root `.gitattributes` (`HUB_MANAGED`: a snapshot of a Hub repo has one, a checkpoint does not need it).

    Each entry must be a regular file (or a link to one): a FIFO, device or socket is refused by name (reading
    one would hang or never end), and so is a link to a directory. With `confined` (what apply copies), a link
    must also stay inside the directory or, for an HF-cache snapshot, its repo's blobs/ — a
    `tokenizer_config.json -> ~/.cache/huggingface/token` is refused before anything is written.

    Raises:
        UnsafeFileError: the first entry that is not a file patchkit may read (exit 2).
    """
    out = []
    root_arg = source_dir if confined else None
    for root, dirs, files in os.walk(source_dir, followlinks=False):
        kept = []
        for d in sorted(dirs):
            if d in _SKIP_DIRS or TMP_MARK in d:
                continue
            path = os.path.join(root, d)
            if os.path.islink(path):
                real = check_entry(path, root_arg, what="file", dir_ok=True)
                kind = "a directory" if os.path.isdir(real) else "not a regular file"
                raise UnsafeFileError(
                    f"{path}: is a link to {kind} ({real}); patchkit copies only regular files",
                    hint="replace the link with the files themselves",
                    data={"path": path},
                )
            kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), source_dir)
            if rel in BOOKKEEPING or rel in HUB_MANAGED or TMP_MARK in name:
                continue
            check_entry(os.path.join(root, name), root_arg)
            out.append(rel)
    return out


def _normalized(recipe: Any) -> dict:
    dump = getattr(recipe, "model_dump", None)
    return dump(mode="json", exclude_none=True) if dump else {}


def _architecture(ctx: ApplyContext) -> str | None:
    """The adapter name detected from the config.json of the files that were patched (`plan.source_dir`).

    Not the recipe's `model.architecture`: that field is optional (None in most recipes) and, when present, has
    already been checked against this same detection by `plan_recipe`; the card and the Hub tags need the real one.
    """
    at = getattr(ctx.ref, "at", None)
    if at is not None:
        return str(at(ctx.plan.source_dir).architecture)
    return getattr(getattr(ctx.recipe, "model", None), "architecture", None)


def _provenance(ctx: ApplyContext, source_sha: dict, output_sha: dict, slice_hashes: dict) -> dict[str, Any]:
    ref = ctx.ref
    prov: dict[str, Any] = {
        "patchkit_version": __version__,
        "created": utc_now(),
        "recipe": {
            "path": ctx.recipe_path,
            "sha256": hashlib.sha256(ctx.text.encode("utf-8")).hexdigest(),
            "text": ctx.text,
            "normalized": _normalized(ctx.recipe),
        },
        "base": {
            "ref": getattr(ref, "ref", None),
            "repo": getattr(ref, "repo_id", None),
            "revision": getattr(ref, "revision", None),
            "architecture": _architecture(ctx),
        },
        "source_files": dict(sorted(source_sha.items())),
        "output_files": dict(sorted(output_sha.items())),
        "edits": [
            {
                "layer": e.layer,
                "kind": e.kind,
                "index": e.index,
                "op": e.op,
                "factor": e.factor,
                "tensor": e.tensor,
                "file": e.file,
                "before_sha256": slice_hashes[id(e)][0],
                "after_sha256": slice_hashes[id(e)][1],
            }
            for e in ctx.plan.edits
        ],
    }
    if ctx.parent is not None:
        prov["parent"] = {
            "recipe": (ctx.parent.get("recipe") or {}).get("normalized", {}).get("name"),
            "recipe_sha256": (ctx.parent.get("recipe") or {}).get("sha256"),
            "created": ctx.parent.get("created"),
        }
    return prov


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

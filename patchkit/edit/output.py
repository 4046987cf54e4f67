"""What an apply produces: the result object, the provenance document, and which source files are carried over."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit._io.atomic import TMP_MARK
from patchkit._version import __version__
from patchkit.edit.plan import Plan
from patchkit.edit.provenance import (
    PROVENANCE_FILE,
    utc_now,
)



UNDO_RECIPE = "patchkit-undo.yaml"
IN_PLACE_JOURNAL = ".patchkit-in-place.json"
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


def _source_files(source_dir: Path) -> list[str]:
    """Every file of a checkpoint directory (relative paths), minus caches and our own temp/provenance files."""
    out = []
    for root, dirs, files in os.walk(source_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and TMP_MARK not in d)
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), source_dir)
            if rel in (PROVENANCE_FILE, UNDO_RECIPE, IN_PLACE_JOURNAL) or TMP_MARK in name:
                continue
            out.append(rel)
    return out


def _normalized(recipe: Any) -> dict:
    dump = getattr(recipe, "model_dump", None)
    return dump(mode="json", exclude_none=True) if dump else {}


def _provenance(ctx: ApplyContext, source_sha: dict, output_sha: dict, slice_hashes: dict) -> dict[str, Any]:
    spec = getattr(ctx.recipe, "model", None)
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
            "architecture": getattr(spec, "architecture", None),
        },
        "source_files": dict(sorted(source_sha.items())),
        "output_files": dict(sorted(output_sha.items())),
        "edits": [
            {
                "layer": e.layer, "kind": e.kind, "index": e.index, "op": e.op, "factor": e.factor,
                "tensor": e.tensor, "file": e.file,
                "before_sha256": slice_hashes[id(e)][0], "after_sha256": slice_hashes[id(e)][1],
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

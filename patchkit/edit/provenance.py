"""`patchkit.json`: the provenance file every apply output carries (recipe bytes, source and output hashes).

Hashing itself lives in `patchkit._io.hashing` (one cached helper for the whole package); this module names the
file and reads it back.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

PROVENANCE_FILE = "patchkit.json"
__all__ = ["PROVENANCE_FILE", "read_provenance", "utc_now"]


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_provenance(directory: str | os.PathLike[str]) -> dict | None:
    """The `patchkit.json` of a directory, or None if it has none (or it is unreadable JSON)."""
    from patchkit._io.fs import read_json_file
    from patchkit.errors import PatchkitError

    p = Path(directory) / PROVENANCE_FILE
    if not os.path.lexists(p):
        return None
    try:
        data = read_json_file(p, what="provenance file", root=directory)
    except (OSError, PatchkitError):
        return None
    return data if isinstance(data, dict) else None

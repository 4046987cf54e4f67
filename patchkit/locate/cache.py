"""On-disk stage cache for `--resume`: one JSON file per finished stage, keyed by what the stage depends on.

A stage's result is reused only when its key (model fingerprint + the settings that stage reads + the keys of
the stages before it) matches, so changing e.g. --layers recomputes attribution but keeps the collected
transcripts. Files are written to a temp name and renamed: an interrupted run never leaves half a stage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from patchkit._io.atomic import atomic_write_bytes

__all__ = ["StageCache", "fingerprint"]


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """`get(stage, key)` -> cached data or None; `put(stage, key, data)`. `directory=None` caches nothing."""

    def __init__(self, directory: str | Path | None):
        self.dir = Path(directory) if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.hits: list[str] = []

    def _path(self, stage: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{stage}.json"

    def get(self, stage: str, key: str) -> Any | None:
        if self.dir is None or not self._path(stage).is_file():
            return None
        try:
            data = json.loads(self._path(stage).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("key") != key:
            return None
        self.hits.append(stage)
        return data.get("data")

    def put(self, stage: str, key: str, data: Any) -> None:
        if self.dir is None:
            return
        atomic_write_bytes(
            self._path(stage), json.dumps({"stage": stage, "key": key, "data": data}).encode("utf-8"), fsync=False
        )

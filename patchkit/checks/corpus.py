"""Real text available offline, without copying anyone's text into the repository.

Two sources: (1) Python standard-library modules read from the running interpreter (a fixed list of
files, cut into deterministic chunks at line boundaries; their docstrings and comments are good English
prose mixed with code), and (2) prose this project wrote itself (`data/prose.txt`). Each chunk carries a
SHA-256 so a report says exactly which text it was measured on; chunks differ between Python versions,
so compare reports made with the same interpreter.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from patchkit._io.fs import read_capped
from patchkit.errors import CheckError

__all__ = ["CorpusText", "STDLIB_FILES", "load_corpus", "stdlib_chunks", "prose_chunks"]

#: Stable, mostly prose-heavy modules present in every CPython >= 3.10 (order matters: it is the sampling order).
STDLIB_FILES: tuple[str, ...] = (
    "textwrap.py",
    "heapq.py",
    "fractions.py",
    "statistics.py",
    "calendar.py",
    "difflib.py",
    "shlex.py",
    "string.py",
    "csv.py",
    "queue.py",
    "graphlib.py",
    "json/decoder.py",
    "email/message.py",
    "sched.py",
    "fnmatch.py",
    "glob.py",
    "colorsys.py",
    "bisect.py",
)


@dataclass(frozen=True)
class CorpusText:
    source: str  # "stdlib:textwrap.py#0" | "prose:3"
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _chunks_of(text: str, chunk_chars: int) -> list[str]:
    """Cut text into pieces of about `chunk_chars` characters, ending on line boundaries, skipping blank ones."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line)
        if size >= chunk_chars:
            piece = "".join(current).strip("\n")
            if piece.strip():
                chunks.append(piece)
            current, size = [], 0
    piece = "".join(current).strip("\n")
    if piece.strip() and size >= chunk_chars // 3:
        chunks.append(piece)
    return chunks


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_chunks(n: int, *, chunk_chars: int = 900, per_file: int = 2) -> list[CorpusText]:
    """`n` chunks: the first `per_file` chunks of each listed file in order, then more rounds if needed."""
    root = stdlib_dir()
    per_source: list[tuple[str, list[str]]] = []
    for name in STDLIB_FILES:
        path = root / name
        if path.is_file():
            text = read_capped(path, 16 << 20, what="corpus file", error=CheckError).decode("utf-8", errors="replace")
            per_source.append((name, _chunks_of(text, chunk_chars)))
    if not per_source and n > 0:
        raise CheckError(
            f"{root}: no standard-library sources found", hint="use a CPython with its .py files installed"
        )
    out: list[CorpusText] = []
    start = 0
    while len(out) < n:
        added = False
        for name, chunks in per_source:
            for j in range(start, min(start + per_file, len(chunks))):
                out.append(CorpusText(f"stdlib:{name}#{j}", chunks[j]))
                added = True
                if len(out) == n:
                    return out
        if not added:
            break
        start += per_file
    return out


def prose_chunks(n: int) -> list[CorpusText]:
    """The first `n` paragraphs of the project's own prose file (blank-line separated)."""
    text = resources.files("patchkit.checks").joinpath("data/prose.txt").read_text(encoding="utf-8")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip() and not p.lstrip().startswith("#")]
    return [CorpusText(f"prose:{i}", p) for i, p in enumerate(paragraphs[:n])]


def load_corpus(n_code: int = 16, n_prose: int = 12, *, chunk_chars: int = 900) -> list[CorpusText]:
    """The default teacher-forcing corpus: `n_code` stdlib chunks + `n_prose` project paragraphs."""
    return stdlib_chunks(n_code, chunk_chars=chunk_chars) + prose_chunks(n_prose)


def corpus_provenance() -> dict[str, str]:
    return {"python": sys.version.split()[0], "stdlib": str(stdlib_dir())}

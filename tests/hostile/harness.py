"""The hostile-input contract, checked the same way for every case of the corpus.

A refused input must give: exit 1 or 2; exactly one `error:` line that names the offending file (and line, where
there is one); no traceback; nothing written; the sources unchanged; done in under 20 s and, for the cases that
run in a subprocess, under a 4 GiB address-space limit.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from patchkit.cli import main

TIME_LIMIT_S = 20
MEMORY_LIMIT = 4 << 30


def tree_digest(path: Path) -> dict[str, str]:
    """Path -> sha256 (or link target / kind) of everything under `path`, without following links or reading
    special files (so FIFOs and devices in a hostile tree do not hang the check itself)."""
    out: dict[str, str] = {}
    path = Path(path)
    if not os.path.lexists(path):
        return out
    entries = [path] if not path.is_dir() or path.is_symlink() else sorted(path.rglob("*"))
    for p in entries:
        rel = str(p.relative_to(path)) if p != path else "."
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "special"
    return out


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def fire(*_: object) -> None:
        raise TimeoutError(f"the command ran past {seconds} s (a hang on hostile input)")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Refusal:
    exit_code: int
    error_line: str
    output: str
    seconds: float


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def refuse(
    args: Sequence[str],
    *,
    names: str | Iterable[str],
    unchanged: Iterable[Path] = (),
    absent: Iterable[Path] = (),
    codes: tuple[int, ...] = (1, 2),
    subprocess_run: bool = False,
    cwd: Path | None = None,
) -> Refusal:
    """Run `patchkit ARGS` on a hostile input and assert the whole refusal contract; return what it printed.

    names: text(s) the one error line must contain (the file, and `file:line` where there is one).
    unchanged: files/dirs that must be byte-identical afterwards (the sources).
    absent: paths that must not exist afterwards (the outputs).
    subprocess_run: run in a child process under a 4 GiB address-space limit (for memory bombs).
    """
    watched = [Path(p) for p in unchanged]
    before = {p: tree_digest(p) for p in watched}
    start = time.perf_counter()
    if subprocess_run:
        proc = subprocess.run(
            [sys.executable, "-c", "from patchkit.cli import main; main()", *args],
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT_S,
            preexec_fn=_limit_memory,
            cwd=cwd,
            env={**os.environ, "PATCHKIT_DEBUG": ""},
        )
        code, output = proc.returncode, proc.stdout + proc.stderr
    else:
        old = os.getcwd()
        if cwd is not None:
            os.chdir(cwd)
        try:
            with _deadline(TIME_LIMIT_S):
                result = CliRunner().invoke(main, list(args))
        finally:
            os.chdir(old)
        code, output = result.exit_code, result.output
        exc = result.exception
        assert exc is None or isinstance(exc, SystemExit), f"uncaught {type(exc).__name__}: {exc}\n{output}"
    seconds = time.perf_counter() - start
    assert code in codes, f"exit {code} (expected one of {codes}):\n{output}"
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected exactly one error line:\n{output}"
    for needle in [names] if isinstance(names, str) else list(names):
        assert needle in errors[0], f"{needle!r} not named in: {errors[0]}"
    for p in absent:
        assert not os.path.lexists(p), f"{p} was written"
    for p in watched:
        assert tree_digest(p) == before[p], f"{p} changed"
    assert seconds < TIME_LIMIT_S, f"took {seconds:.1f} s"
    return Refusal(code, errors[0], output, seconds)

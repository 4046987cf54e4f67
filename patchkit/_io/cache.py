"""Where patchkit keeps what it can recompute: one directory, named by one environment variable.

Why one: the sha256 cache (`sha256.json`, see `patchkit._io.hashing`) and the imported embedded model
(`models/smollm2-135m-instruct-f32`, see `patchkit.workflows.gguf_import`) used to read two variables
(`PATCHKIT_CACHE_DIR` and `PATCHKIT_CACHE`), so pointing "the cache" somewhere moved only half of it.

`$PATCHKIT_CACHE`, else `$XDG_CACHE_HOME/patchkit`, else `~/.cache/patchkit`. The old `PATCHKIT_CACHE_DIR` is not
read (it never shipped in a release). `PATCHKIT_NO_HASH_CACHE=1` still turns the sha256 cache off.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the one variable that moves patchkit's cache directory
CACHE_ENV = "PATCHKIT_CACHE"


def cache_root() -> Path:
    """The cache directory: `$PATCHKIT_CACHE`, else `$XDG_CACHE_HOME/patchkit`, else `~/.cache/patchkit`.

    Read on every call (not at import), so a test or a script can point it elsewhere with the environment.
    An empty variable counts as unset. The directory is not created here: each user creates what it writes.

    >>> os.environ["PATCHKIT_CACHE"] = "/tmp/pk"; str(cache_root())  # doctest: +SKIP
    '/tmp/pk'
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "patchkit"

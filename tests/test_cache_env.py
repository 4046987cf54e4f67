"""One cache directory, one variable: `PATCHKIT_CACHE` moves the sha256 cache and the imported embedded model
together; the old `PATCHKIT_CACHE_DIR` is not read; `PATCHKIT_NO_HASH_CACHE=1` still turns the sha256 cache off."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchkit._io import hashing
from patchkit._io.cache import cache_root
from patchkit.workflows import gguf_import


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ("PATCHKIT_CACHE", "PATCHKIT_CACHE_DIR", "XDG_CACHE_HOME", "PATCHKIT_NO_HASH_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _big_file(path: Path) -> Path:
    path.write_bytes(b"\x01" * (1 << 20))  # the stat cache only remembers files of at least 1 MiB
    return path


def test_cache_root_precedence(monkeypatch, tmp_path):
    assert cache_root() == tmp_path / "home" / ".cache" / "patchkit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "patchkit"
    monkeypatch.setenv("PATCHKIT_CACHE", "~/pk")
    assert cache_root() == tmp_path / "home" / "pk"
    monkeypatch.setenv("PATCHKIT_CACHE", "")  # empty: unset
    assert cache_root() == tmp_path / "xdg" / "patchkit"


def test_sha256_cache_and_embedded_model_share_patchkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "pk"))
    digest = hashing.sha256_file(_big_file(tmp_path / "shard.bin"))
    assert (tmp_path / "pk" / "sha256.json").is_file()
    assert digest in (tmp_path / "pk" / "sha256.json").read_text()
    assert gguf_import.cache_root() == tmp_path / "pk"  # embedded_model_dir imports under <cache>/models


def test_the_old_cache_dir_variable_is_not_read(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE_DIR", str(tmp_path / "old"))
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "new"))
    hashing.sha256_file(_big_file(tmp_path / "shard.bin"))
    assert (tmp_path / "new" / "sha256.json").is_file() and not (tmp_path / "old").exists()


def test_no_hash_cache_still_disables_the_sha256_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "pk"))
    monkeypatch.setenv("PATCHKIT_NO_HASH_CACHE", "1")
    shard = _big_file(tmp_path / "shard.bin")
    hashing.sha256_file(shard)
    assert not (tmp_path / "pk" / "sha256.json").exists() and hashing.cached_sha256(shard) is None

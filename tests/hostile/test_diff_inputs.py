"""`patchkit diff` reads two model directories: the same refusals as validate/apply (links out, special files,
hostile index and config), one line, nothing written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fixtures.tiny_models import raw_llama_checkpoint

from hostile.harness import refuse


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a = raw_llama_checkpoint(tmp_path / "a", "BF16", shards=2)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    return a, b


def _config_link_out(b: Path, tmp_path: Path) -> str:
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "hf_not_a_real_token"}')
    (b / "config.json").unlink()
    os.symlink(secret, b / "config.json")
    return "config.json"


def _fifo_shard(b: Path, tmp_path: Path) -> str:
    shard = sorted(b.glob("*.safetensors"))[0]
    shard.unlink()
    os.mkfifo(shard)
    return shard.name


def _index_escapes(b: Path, tmp_path: Path) -> str:
    index = b / "model.safetensors.index.json"
    index.write_text(index.read_text().replace('"model-00001', '"../a/model-00001', 1))
    return "model.safetensors.index.json"


def _config_duplicate_key(b: Path, tmp_path: Path) -> str:
    (b / "config.json").write_text('{"model_type": "llama", "model_type": "gemma4"}')
    return "config.json"


@pytest.mark.parametrize(
    "make", [_config_link_out, _fifo_shard, _index_escapes, _config_duplicate_key], ids=lambda f: f.__name__.strip("_")
)
def test_diff_refuses_a_hostile_side(pair, tmp_path, make):
    a, b = pair
    named = make(b, tmp_path)
    out = tmp_path / "r.yaml"
    refuse(
        ["diff", str(a), str(b), "--as-recipe", "-o", str(out)],
        names=named,
        unchanged=[a, tmp_path / "secret.json"] if (tmp_path / "secret.json").exists() else [a],
        absent=[out],
    )

"""The card's base model line, architecture tag, install line and links.

A base that is not on the Hub (a local directory, a recipe without `model.repo`, or one that still carries a
starter's `org/name` placeholder) must not be claimed as `base_model`: the card names the local model and points
at the sha256s that identify it. Every link the card prints must lead somewhere that exists.
"""

from __future__ import annotations

import json
import re

import pytest
from hubserver.checkpoints import SHARDS, make_base

from patchkit.edit.apply import apply_recipe
from patchkit.publish.card import (
    DISTRIBUTION,
    PROJECT_URL,
    GGUFFile,
    build_card,
    build_gguf_card,
    card_for_dir,
    card_metadata,
)

LOCAL_RECIPE = """patchkit: 1
name: local-fix
description: Invert neuron 5 of layer 1.
source: {kind: manual, reference: unit test}
edits:
  - {layer: 1, neuron: 5, op: invert}
"""


@pytest.fixture(autouse=True)
def _engine(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def local_patched(tmp_path):
    """A recipe naming no Hub repo (and no architecture), applied to a local directory called `my-base`."""
    base = make_base(tmp_path / "models" / "my-base")
    recipe = tmp_path / "local-fix.yaml"
    recipe.write_text(LOCAL_RECIPE)
    return apply_recipe(recipe, model=str(base), out=tmp_path / "out").out_dir


def _links(text: str) -> list[str]:
    """Every URL in the card: Markdown link targets and bare http(s) URLs (front matter included)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    bare = re.findall(r"https?://[^\s)`'\"<>]+", text)
    return sorted(set(targets) | set(bare))


def test_a_local_base_is_not_claimed_as_base_model(local_patched):
    provenance = json.loads((local_patched / "patchkit.json").read_text())
    text = str(card_for_dir(local_patched))
    meta = card_metadata(text)
    assert "base_model" not in meta and "base_model_relation" not in meta
    body = text.split("\n---\n", 1)[1]
    assert "This is the local model `my-base` (" in body
    assert "- base: the local model `my-base`" in body and "not a Hub repo" in body
    assert str(local_patched.parent / "models") not in text  # the name, never the author's directory
    for shard in SHARDS:  # what identifies a local base: the sha256 of each of its shards
        assert f"| {shard} | `{provenance['source_files'][shard]['sha256']}` |" in body
    assert "--model BASE_MODEL_DIR" in body and "org/name" not in text


@pytest.mark.parametrize("placeholder", ["org/name", "ORG/NAME", "your-org/my-loop-fix"])
def test_a_placeholder_repo_is_not_a_base_model(local_patched, placeholder):
    provenance = json.loads((local_patched / "patchkit.json").read_text())
    provenance["recipe"]["normalized"]["model"] = {"repo": placeholder}
    text = str(build_card(provenance))
    assert "base_model" not in card_metadata(text)
    assert "the local model `my-base`" in text and f"`{placeholder}`" not in text


def test_a_recipe_repo_still_names_a_local_copy_of_it(local_patched):
    provenance = json.loads((local_patched / "patchkit.json").read_text())
    provenance["recipe"]["normalized"]["model"] = {"repo": "test-org/tiny-llama", "revision": "b" * 40}
    text = str(build_card(provenance))
    assert card_metadata(text)["base_model"] == "test-org/tiny-llama"
    assert "the local model" not in text and f"--model test-org/tiny-llama@{'b' * 40}" in text


def test_architecture_tag_comes_from_provenance_then_the_recipe(local_patched):
    provenance = json.loads((local_patched / "patchkit.json").read_text())
    provenance["base"]["architecture"] = "llama"  # what apply read from the model's config
    assert "llama" in card_metadata(str(build_card(provenance)))["tags"]
    text = str(build_card(provenance))
    assert "(architecture `llama`;" in text and "- base: the local model `my-base` (llama)" in text
    provenance["base"]["architecture"] = None  # older provenance: the recipe's model.architecture
    provenance["recipe"]["normalized"]["model"] = {"architecture": "gemma4"}
    assert card_metadata(str(build_card(provenance)))["tags"][:3] == ["patchkit", "loop-fix", "gemma4"]
    provenance["recipe"]["normalized"]["model"] = {}
    assert card_metadata(str(build_card(provenance)))["tags"] == ["patchkit", "loop-fix"]


def test_install_line_and_every_link_are_real(local_patched):
    text = str(card_for_dir(local_patched))
    assert f"pip install {DISTRIBUTION}\n" in text and DISTRIBUTION == "patchkit-llm"
    assert not re.search(r"pip install '?patchkit(?!-llm)", text)
    # the base card's license link comes from the base; the only link patchkit adds is its PyPI page
    assert _links(text) == sorted({PROJECT_URL, "https://www.apache.org/licenses/LICENSE-2.0"})
    assert PROJECT_URL == "https://pypi.org/project/patchkit-llm/"


def test_gguf_card_from_a_local_source_has_no_base_model_and_real_links():
    provenance = {
        "patchkit_version": "0.1.0",
        "recipe": {"name": "g-fix", "file": "g-fix.yaml", "text": LOCAL_RECIPE.replace("local-fix", "g-fix")},
        "base": {"files": [{"name": "smol-Q4_1.gguf", "size": 10}], "repo": None, "architecture": "llama"},
        "edits": [],
        "source_sha256": ["c" * 64],
    }
    text = str(build_gguf_card(provenance, files=[GGUFFile("smol-fix-Q4_1.gguf", 10, "d" * 64)]))
    meta = card_metadata(text)
    assert "base_model" not in meta and "llama" in meta["tags"]
    assert "A GGUF of the local model `smol-Q4_1.gguf` (not a Hub repo" in text
    assert f"pip install '{DISTRIBUTION}[gguf]'" in text
    assert not re.search(r"pip install '?patchkit(?!-llm)", text)
    assert _links(text) == [PROJECT_URL]
    assert "localhost" not in text and "127.0.0.1" not in text

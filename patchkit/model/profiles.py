"""Size profiles: the geometry of the released Gemma 4 instruction-tuned checkpoints, for offline work.

`patchkit validate recipes/e2b.yaml` needs the number of layers, every layer's MLP width and the experts of
the MoE model; a profile supplies them without the Hub or the weights. `get_profile(repo)` returns a dict
shaped like the checkpoint's config.json, so the adapters read it exactly as they read the real file (the
adapter, not this module, derives per-layer widths: E2B's KV-shared layers are double-wide).

Where the numbers come from (the published `config.json` of each repo,
https://huggingface.co/google/gemma-4-{E2B,E4B,26B-A4B,31B}-it/blob/main/config.json). This machine has no Hub
access, so each value was taken from public copies or excerpts of those files and corroborated by at least two
independent sources (the full files themselves were not fetched here):
- E2B: the verbatim copy in https://huggingface.co/EvilScript/taboo-cloud-gemma-4-E2B-it/commit/eda739bfd428b988f34f8919cda472b467a3f99b
  ("Copy config.json from google/gemma-4-E2B-it"); google/gemma.cpp PR #919 (35 layers, model_dim 1536,
  "mixed FFN (6144/12288)"); hidden_size_per_layer_input 256, num_kv_shared_layers 20, use_double_wide_mlp true.
- E4B: https://huggingface.co/EvilScript/taboo-cloud-gemma-4-E4B-it/commit/2e07b22f7d120ddff6795a71efd6759db85fd757;
  google/gemma.cpp PR #919 (42 layers, 2560, uniform FFN 10240); NVIDIA Megatron-Bridge gemma4 recipe docs
  ("KV cache shared across the last 18 layers").
- 26B-A4B: vllm-project/recipes models/Google/gemma-4-26B-A4B-it.yaml (128 experts, top-8); the GGUF metadata of
  ollama's gemma4:26b-a4b (block_count 30, embedding_length 2816, feed_forward_length 2112,
  expert_feed_forward_length 704, expert_count 128, expert_used_count 8); text_config copies in several
  open-source loaders (num_key_value_heads 8, num_global_key_value_heads 2, attention_k_eq_v true).
- 31B: https://huggingface.co/google/gemma-4-31B-it/commit/419b2efe421994fdfd3394e621983d4cc511cd4f (file list of
  the release commit: two shards, model-0000{1,2}-of-00002.safetensors); mlboydaisuke/Gemma-4-31B-CoreAI model
  card (60 layers, hidden 5376, 32 heads, num_global_key_value_heads 4, attention_k_eq_v); text_config copies
  with intermediate_size 21504, num_key_value_heads 16.
Independent check: the paper's neuron/slot totals are the products of these numbers (E4B 42 x 10240 = 430,080
MLP neurons; 31B 60 x 21504 = 1,290,240; 26B-A4B 30 x 128 = 3,840 expert slots); tests assert it. The text
decoders transformers builds from these profiles have 4.6B / 7.5B / 25.2B / 30.7B parameters, in line with the
published model sizes (E2B 5.1B and E4B 8B with their towers, 26B-A4B 25.2B, 31B 30.7B). When the real
model is at hand, `patchkit validate --model` compares its config.json with the profile (`compare_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SizeProfile", "PROFILES", "get_profile", "find_profile", "compare_config"]

PREFIX = "model.language_model"  # Gemma4ForConditionalGeneration keeps the text decoder here


@dataclass(frozen=True)
class SizeProfile:
    """The text-decoder geometry of one released checkpoint (names as in its config.json `text_config`)."""

    key: str
    repo: str
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    global_head_dim: int
    sliding_window: int
    sliding_per_full: int  # layer_types: this many sliding-attention layers, then one full-attention layer
    num_kv_shared_layers: int = 0
    use_double_wide_mlp: bool = False
    hidden_size_per_layer_input: int = 0
    num_global_key_value_heads: int | None = None
    attention_k_eq_v: bool = False
    enable_moe_block: bool = False
    num_experts: int | None = None
    top_k_experts: int | None = None
    moe_intermediate_size: int | None = None
    vocab_size: int = 262144
    max_position_embeddings: int = 131072
    dtype: str = "bfloat16"
    #: weight files of the published repo when known (None: not confirmed; see docs)
    shards: tuple[str, ...] | None = None
    sources: tuple[str, ...] = field(default_factory=tuple)

    # --- derived geometry -----------------------------------------------------------------------------
    @property
    def layer_types(self) -> list[str]:
        period = self.sliding_per_full + 1
        return [
            "full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(self.num_hidden_layers)
        ]

    def mlp_width(self, layer: int) -> int:
        """Neurons of layer `layer`'s dense MLP (doubled on the KV-shared layers when use_double_wide_mlp)."""
        if not 0 <= layer < self.num_hidden_layers:
            raise IndexError(layer)
        shared = self.num_kv_shared_layers
        if self.use_double_wide_mlp and shared and layer >= self.num_hidden_layers - shared:
            return 2 * self.intermediate_size
        return self.intermediate_size

    @property
    def total_neurons(self) -> int:
        return sum(self.mlp_width(i) for i in range(self.num_hidden_layers))

    @property
    def total_expert_slots(self) -> int:
        return self.num_hidden_layers * (self.num_experts or 0) if self.enable_moe_block else 0

    def text_config(self) -> dict[str, Any]:
        """The `text_config` block of config.json (the fields patchkit and transformers read)."""
        tc: dict[str, Any] = {
            "model_type": "gemma4_text",
            "num_hidden_layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "global_head_dim": self.global_head_dim,
            "sliding_window": self.sliding_window,
            "layer_types": self.layer_types,
            "num_kv_shared_layers": self.num_kv_shared_layers,
            "use_double_wide_mlp": self.use_double_wide_mlp,
            "hidden_size_per_layer_input": self.hidden_size_per_layer_input,
            "vocab_size": self.vocab_size,
            "vocab_size_per_layer_input": self.vocab_size,
            "attention_k_eq_v": self.attention_k_eq_v,
            "enable_moe_block": self.enable_moe_block,
            "max_position_embeddings": self.max_position_embeddings,
            "final_logit_softcapping": 30.0,
            "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh",
            "tie_word_embeddings": True,
            "dtype": self.dtype,
        }
        if self.num_global_key_value_heads is not None:
            tc["num_global_key_value_heads"] = self.num_global_key_value_heads
        if self.enable_moe_block:
            tc.update(
                num_experts=self.num_experts,
                top_k_experts=self.top_k_experts,
                moe_intermediate_size=self.moe_intermediate_size,
            )
        return tc

    def config(self) -> dict[str, Any]:
        """A config.json-shaped dict (text part only; vision/audio towers are never edited by patchkit)."""
        return {
            "architectures": ["Gemma4ForConditionalGeneration"],
            "model_type": "gemma4",
            "text_config": self.text_config(),
            "tie_word_embeddings": True,
            "dtype": self.dtype,
            "_patchkit_profile": {"key": self.key, "repo": self.repo, "sources": list(self.sources)},
        }

    def summary(self) -> dict[str, Any]:
        widths = sorted({self.mlp_width(i) for i in range(self.num_hidden_layers)})
        out: dict[str, Any] = {
            "key": self.key,
            "repo": self.repo,
            "layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size,
            "mlp_widths": widths,
            "total_neurons": self.total_neurons,
            "dtype": self.dtype,
            "prefix": PREFIX,
            "shards": list(self.shards) if self.shards else None,
        }
        if self.enable_moe_block:
            out.update(
                num_experts=self.num_experts,
                top_k_experts=self.top_k_experts,
                expert_mlp_width=self.moe_intermediate_size,
                total_expert_slots=self.total_expert_slots,
            )
        return out


PROFILES: dict[str, SizeProfile] = {
    p.key: p
    for p in (
        SizeProfile(
            key="e2b",
            repo="google/gemma-4-E2B-it",
            num_hidden_layers=35,
            hidden_size=1536,
            intermediate_size=6144,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            global_head_dim=512,
            sliding_window=512,
            sliding_per_full=4,
            num_kv_shared_layers=20,
            use_double_wide_mlp=True,
            hidden_size_per_layer_input=256,
            sources=(
                "https://huggingface.co/EvilScript/taboo-cloud-gemma-4-E2B-it/commit/eda739bfd428b988f34f8919cda472b467a3f99b",
                "https://github.com/google/gemma.cpp/pull/919",
            ),
        ),
        SizeProfile(
            key="e4b",
            repo="google/gemma-4-E4B-it",
            num_hidden_layers=42,
            hidden_size=2560,
            intermediate_size=10240,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=256,
            global_head_dim=512,
            sliding_window=512,
            sliding_per_full=5,
            num_kv_shared_layers=18,
            use_double_wide_mlp=False,
            hidden_size_per_layer_input=256,
            sources=(
                "https://huggingface.co/EvilScript/taboo-cloud-gemma-4-E4B-it/commit/2e07b22f7d120ddff6795a71efd6759db85fd757",
                "https://github.com/google/gemma.cpp/pull/919",
                "https://docs.nvidia.com/nemo/megatron-bridge/nightly/apidocs/bridge/bridge.recipes.gemma.h100.gemma4.html",
            ),
        ),
        SizeProfile(
            key="26b-a4b",
            repo="google/gemma-4-26B-A4B-it",
            num_hidden_layers=30,
            hidden_size=2816,
            intermediate_size=2112,
            num_attention_heads=16,
            num_key_value_heads=8,
            num_global_key_value_heads=2,
            head_dim=256,
            global_head_dim=512,
            sliding_window=1024,
            sliding_per_full=5,
            attention_k_eq_v=True,
            enable_moe_block=True,
            num_experts=128,
            top_k_experts=8,
            moe_intermediate_size=704,
            max_position_embeddings=262144,
            sources=(
                "https://raw.githubusercontent.com/vllm-project/recipes/main/models/Google/gemma-4-26B-A4B-it.yaml",
                "https://ollama.com/library/gemma4:26b-a4b-it-q4_K_M/blobs/7121486771cb",
            ),
        ),
        SizeProfile(
            key="31b",
            repo="google/gemma-4-31B-it",
            num_hidden_layers=60,
            hidden_size=5376,
            intermediate_size=21504,
            num_attention_heads=32,
            num_key_value_heads=16,
            num_global_key_value_heads=4,
            head_dim=256,
            global_head_dim=512,
            sliding_window=1024,
            sliding_per_full=5,
            attention_k_eq_v=True,
            max_position_embeddings=262144,
            shards=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"),
            sources=(
                "https://huggingface.co/google/gemma-4-31B-it/commit/419b2efe421994fdfd3394e621983d4cc511cd4f",
                "https://huggingface.co/mlboydaisuke/Gemma-4-31B-CoreAI",
            ),
        ),
    )
}


def find_profile(repo_or_key: str | None) -> SizeProfile | None:
    """The profile of a released repo (`google/gemma-4-E2B-it`, any case, `@rev` ignored) or key (`e2b`)."""
    if not repo_or_key:
        return None
    text = str(repo_or_key).split("@", 1)[0].strip().lower()
    for profile in PROFILES.values():
        if text in (profile.key, profile.repo.lower()):
            return profile
    return None


def get_profile(repo: str | None) -> dict[str, Any] | None:
    """config.json-shaped geometry for a released repo, or None (the contract `patchkit.recipe.validate` uses)."""
    profile = find_profile(repo)
    return profile.config() if profile is not None else None


_COMPARED = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_kv_shared_layers",
    "use_double_wide_mlp",
    "enable_moe_block",
    "num_experts",
    "top_k_experts",
    "moe_intermediate_size",
)


def compare_config(profile: SizeProfile, config: dict[str, Any]) -> list[str]:
    """Fields where a real config.json disagrees with the profile (empty when the geometry matches)."""
    if not isinstance(config, dict):
        return [f"config.json is a JSON {type(config).__name__}, not an object"]
    tc = config.get("text_config") or config
    if not isinstance(tc, dict):
        return [f"text_config is {type(tc).__name__}, not an object"]
    want = profile.text_config()
    out = []
    for key in _COMPARED:
        have = tc.get(key)
        expected = want.get(key)
        if key in ("use_double_wide_mlp", "enable_moe_block"):
            have, expected = bool(have), bool(expected)
        elif key in ("num_kv_shared_layers",):
            have, expected = (have or 0) if isinstance(have, int) else have, int(expected or 0)
        elif expected is None and have in (None, 0):
            continue
        if have != expected:
            out.append(f"{key}: config.json has {have!r}, the {profile.key} profile {expected!r}")
    return out

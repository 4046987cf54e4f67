"""What every generation backend takes and returns, so the loop check does not care which engine ran."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from patchkit._io.progress import Progress

__all__ = ["REQUESTS_STAGE", "TOKENS_STAGE", "Backend", "Generation", "GenerationRequest", "SamplingParams"]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete. `prompt` is a user message (chat) or raw text (`chat=False`)."""

    id: str
    prompt: str
    max_new_tokens: int = 400
    seed: int = 0
    chat: bool = True
    system: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings shared by all requests of one run. temperature 0 = greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    enable_thinking: bool | None = None  # chat template switch (Gemma 4, Qwen 3 ...); None = template default
    thinking_budget: int | None = None  # max tokens inside the thinking block; exhausted -> stop ("budget")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Generation:
    """A completed request. `text` is the final answer; `thinking` the thinking trace when there was one."""

    id: str
    text: str
    tokens: int  # generated tokens (thinking included)
    stop_reason: str  # "eos" | "length" | "loop" | "budget" | "error"
    thinking: str | None = None
    seconds: float = 0.0
    loop_label: str | None = None  # set when the backend stopped early on a certain loop
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Ended by itself (EOS / stop token), not cut off by a budget or an early loop stop."""
        return self.stop_reason == "eos"


#: Backends report on two stages of the one progress shape (`patchkit._io.progress.Progress`):
#: `progress("requests", done, total)` and `progress("tokens", generated_so_far, 0)` (0: no known total).
REQUESTS_STAGE = "requests"
TOKENS_STAGE = "tokens"


class Backend(Protocol):
    name: str

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        params: SamplingParams = SamplingParams(),
        *,
        progress: Progress | None = None,
    ) -> list[Generation]: ...

"""Run suite probes greedily for many candidates at once and classify the answers with the loop checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from patchkit.checks.detect import loop_stop_test
from patchkit.locate.candidates import Candidate
from patchkit.locate.greedy import Row, greedy_generate
from patchkit.locate.hooks import ModelView, row_edits
from patchkit.locate.transcripts import Transcript, loop_start

__all__ = ["Runner", "prompt_ids"]


def prompt_ids(tokenizer: Any, probe: Any) -> list[int]:
    """Token ids of the chat-templated probe, exactly as the transformers backend feeds them."""
    from patchkit.generate.transformers_backend import render_prompt
    from patchkit.generate.types import GenerationRequest

    text = render_prompt(tokenizer, GenerationRequest(id=probe.id, prompt=probe.prompt))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class Runner:
    """Everything needed to generate: the model view, tokenizer, budgets."""

    view: ModelView
    tokenizer: Any
    max_new_tokens: int = 400
    batch_size: int = 32

    def __post_init__(self) -> None:
        from patchkit.generate.transformers_backend import TransformersBackend

        backend = TransformersBackend(self.view.model, self.tokenizer)  # its EOS logic, no generation
        self.eos_ids = set(backend.eos_ids)
        self.pad_id = int(self.tokenizer.pad_token_id)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def budget(self, probe: Any) -> int:
        """A probe's own budget (controls have a short one), never above the run's `max_new_tokens`."""
        return min(int(probe.max_new_tokens or self.max_new_tokens), int(self.max_new_tokens))

    def generate(
        self, candidates: Sequence[Candidate], rows: Sequence[Row], *, on_done: Callable[[Row], None] | None = None
    ) -> list[Row]:
        with row_edits(self.view, candidates) as edits:
            return greedy_generate(
                self.view,
                edits,
                rows,
                eos_ids=self.eos_ids,
                pad_id=self.pad_id,
                decode=self.decode,
                batch_size=self.batch_size,
                on_done=on_done,
                early_stop=loop_stop_test,
            )

    def results(self, probes: Sequence[Any], rows: Sequence[Row]) -> list[Any]:
        """Classify finished rows (one per probe, same order) with the loop checks -> ProbeResult list."""
        from patchkit.checks.loops import score_generations
        from patchkit.generate.types import Generation

        pairs = []
        for probe, row in zip(probes, rows, strict=True):
            gen = Generation(
                id=f"{probe.id}@0",
                text=self.decode(row.generated).strip(),
                tokens=len(row.generated) + (row.stop == "eos"),
                stop_reason=row.stop or "length",
                loop_label=row.loop_label,
            )
            pairs.append((probe, 0, gen))
        return score_generations(pairs)

    def transcripts(self, probes: Sequence[Any], rows: Sequence[Row], results: Sequence[Any]) -> list[Transcript]:
        out = []
        for probe, row, res in zip(probes, rows, results, strict=True):
            gen = list(row.generated)
            out.append(
                Transcript(
                    probe.id,
                    probe.kind,
                    prompt_ids(self.tokenizer, probe),
                    gen,
                    row.stop or "length",
                    bool(res.is_loop),
                    res.verdict.label,
                    loop_start(gen) if res.is_loop else None,
                )
            )
        return out

    def run_base(
        self, probes: Sequence[Any], on_done: Callable[[Row], None] | None = None
    ) -> tuple[list[Row], list[Any]]:
        rows = [Row(0, prompt_ids(self.tokenizer, p), [], self.budget(p)) for p in probes]
        self.generate([Candidate()], rows, on_done=on_done)
        return rows, self.results(probes, rows)

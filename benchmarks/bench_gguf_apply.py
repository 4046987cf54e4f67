"""Benchmark (run by hand): `apply_gguf` on a synthetic >= 1 GB llama GGUF, against `cp` + `sha256sum` of it.

    .venv/bin/python benchmarks/bench_gguf_apply.py [--size-gb 1.1] [--repeat 3] [--keep DIR] [--out results.json]

Why: a GGUF apply writes a new file that differs from the source only in a few scale bytes and records the
source's sha256, so its floor is "copy the file and hash it". The claim is that it costs no more than that
(the copy runs in the kernel and the hash on a thread on the same pass), that the in-place variant only writes
the changed bytes, and that memory stays flat whatever the file size. Targets:
- apply (new file) <= 1.2 x (cp + sha256), both timed in this run on the same file (sha256sum and hashlib);
- in-place apply and its undo each < 1 s;
- peak RSS of apply and of in-place apply, each in a fresh process, <= 256 MB.

The synthetic model: llama, N blocks (default 24) of Q4_K ffn_gate/ffn_up/ffn_down plus an F16 token embedding
(32000 x n_embd), n_ff chosen so the file reaches --size-gb; random quant bytes with sane fp16 `d`/`dmin` fields.
It is streamed to disk (header via gguf.GGUFWriter with add_tensor_info, then the tensor bytes chunk by chunk),
so building it stays well under 1 GB of RAM. With --keep DIR it is kept (and reused when the shape matches).

The recipe: --edits (default 64) neuron edits spread over all blocks, ops cycling invert / scale 3.0 / zero.
patchkit's sha256 cache is disabled (PATCHKIT_NO_HASH_CACHE=1, and PATCHKIT_CACHE points to a fresh
temp dir), so every apply reads and hashes the whole source.

Page cache: warm. After building (or reusing) the source it is read once (and `sync` run), so every measured step
reads it from memory; before each timed step `sync` flushes the dirty pages left by the previous one. Apply
fsyncs its output, `cp` does not: the time a `sync` right after `cp` takes is reported too (not part of the
ratio). Two sha256 baselines are timed: `sha256sum` (coreutils; it may not use the CPU's SHA instructions, so it
can be several times slower than hashlib) and hashlib streaming in 8 MiB reads (what apply itself uses); the
ratio target is checked against both. Each figure is the median of --repeat runs, with baseline and apply
alternating; the machine may be shared, so the numbers are noisy and machine-specific.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# set before patchkit is imported (it is read on every call anyway): no sha256 is ever taken from a cache
os.environ["PATCHKIT_NO_HASH_CACHE"] = "1"

import gguf  # noqa: E402

from patchkit.edit.gguf_blocks import FORMATS  # noqa: E402

TARGET_RATIO = 1.2
TARGET_IN_PLACE_S = 1.0
TARGET_RSS_MB = 256.0
N_EMBD = 2048
VOCAB = 32000
CHUNK_BYTES = 16 << 20  # random bytes generated (and written) per step while building


# --- the synthetic GGUF ---------------------------------------------------------------------------------


def random_rows(type_name: str, rows: int, ne0: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` rows of `ne0` values as raw bytes (rows, row_bytes): random quants with fp16 scale fields drawn
    where x3 and x-1 stay finite and normal (a copy of tests/gguf_builders.random_rows for Q4_K-like and F16)."""
    fmt = FORMATS[type_name]
    row_bytes = ne0 // fmt.block_elems * fmt.block_bytes
    if fmt.kind == "element":
        assert type_name == "F16", type_name
        vals = rng.standard_normal((rows, ne0), dtype=np.float32) * 0.05
        return vals.astype(np.float16).view(np.uint8).reshape(rows, row_bytes)
    assert fmt.kind == "fp16", (type_name, fmt.kind)
    data = rng.integers(0, 256, (rows, row_bytes), dtype=np.uint8)
    blocks = data.reshape(-1, fmt.block_bytes)
    for off in fmt.scales:
        d = rng.uniform(0.002, 0.05, len(blocks)) * rng.choice([-1.0, 1.0], len(blocks))
        blocks[:, off : off + 2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return data


def model_shape(size_gb: float, blocks: int) -> dict:
    """n_ff (a multiple of 256) that brings the file to about `size_gb`."""
    q4k = FORMATS["Q4_K"]
    embd_bytes = VOCAB * N_EMBD * 2
    per_ff_row = 3 * blocks * (N_EMBD // q4k.block_elems * q4k.block_bytes)  # bytes per unit of n_ff
    n_ff = max(256, int((size_gb * 1e9 - embd_bytes) / per_ff_row) // 256 * 256)
    return {"arch": "llama", "blocks": blocks, "n_embd": N_EMBD, "n_ff": n_ff, "vocab": VOCAB, "seed": 0}


def tensor_list(shape: dict) -> list[tuple[str, str, int, int]]:
    """(name, type, rows, ne0) in file order."""
    e, f = shape["n_embd"], shape["n_ff"]
    out = [("token_embd.weight", "F16", shape["vocab"], e)]
    for b in range(shape["blocks"]):
        out += [
            (f"blk.{b}.ffn_gate.weight", "Q4_K", f, e),
            (f"blk.{b}.ffn_up.weight", "Q4_K", f, e),
            (f"blk.{b}.ffn_down.weight", "Q4_K", e, f),
        ]
    return out


def build_gguf(path: Path, shape: dict) -> None:
    """Stream the GGUF to `path` (written to a temp name, renamed at the end)."""
    tensors = tensor_list(shape)
    tmp = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(str(tmp), shape["arch"])
    w.add_block_count(shape["blocks"])
    w.add_embedding_length(shape["n_embd"])
    w.add_feed_forward_length(shape["n_ff"])
    w.add_context_length(2048)
    w.add_head_count(shape["n_embd"] // 128)
    w.add_vocab_size(shape["vocab"])
    align = w.data_alignment
    for name, type_name, rows, ne0 in tensors:
        fmt = FORMATS[type_name]
        nbytes = rows * (ne0 // fmt.block_elems * fmt.block_bytes)
        qt = gguf.GGMLQuantizationType[type_name]
        # the shape in numpy order (outermost first), in elements: a uint8 dtype would make it a byte shape
        w.add_tensor_info(name, (rows, ne0), np.dtype(np.float32), nbytes, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    rng = np.random.default_rng(shape["seed"])
    with open(tmp, "ab") as fh:
        fh.write(b"\0" * (-fh.tell() % align))
        for _, type_name, rows, ne0 in tensors:
            fmt = FORMATS[type_name]
            row_bytes = ne0 // fmt.block_elems * fmt.block_bytes
            step = max(1, CHUNK_BYTES // row_bytes)
            for r in range(0, rows, step):
                fh.write(random_rows(type_name, min(step, rows - r), ne0, rng).tobytes())
            fh.write(b"\0" * (-(rows * row_bytes) % align))
    os.replace(tmp, path)


def source_gguf(args: argparse.Namespace, work: Path) -> tuple[Path, dict, bool]:
    """(path, shape, reused) of the synthetic GGUF: built in `work`, or kept (and reused) in --keep DIR."""
    shape = model_shape(args.size_gb, args.blocks)
    home = args.keep if args.keep is not None else work
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"synthetic-llama-{shape['blocks']}x{shape['n_ff']}.gguf"
    spec = path.with_name(path.name + ".json")
    if path.exists() and spec.exists() and json.loads(spec.read_text()) == shape:
        return path, shape, True
    spec.unlink(missing_ok=True)
    build_gguf(path, shape)
    spec.write_text(json.dumps(shape))
    return path, shape, False


def write_recipe(path: Path, shape: dict, n_edits: int) -> Path:
    ops = ["op: invert", "op: scale, factor: 3.0", "op: zero"]
    seen: set[tuple[int, int]] = set()
    lines = []
    i = 0
    while len(lines) < n_edits:
        layer, neuron = i % shape["blocks"], (i * 7919 + 13) % shape["n_ff"]
        i += 1
        if (layer, neuron) in seen:
            continue
        seen.add((layer, neuron))
        lines.append(f"  - {{layer: {layer}, neuron: {neuron}, {ops[len(lines) % 3]}}}")
    path.write_text(
        "patchkit: 1\nname: bench-gguf\ndescription: neuron edits spread over every block (benchmark)\n"
        f"model: {{repo: bench/llama-like, revision: '{'0' * 40}', architecture: llama}}\n"
        "source: {kind: manual, reference: benchmark}\n"
        "edits:\n" + "\n".join(lines) + "\n"
    )
    return path


# --- measuring ------------------------------------------------------------------------------------------


def timed(fn, *a, **kw) -> tuple[float, object]:
    os.sync()  # no backlog of dirty pages from the previous step
    t0 = time.perf_counter()
    value = fn(*a, **kw)
    return time.perf_counter() - t0, value


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def read_once(path: Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(8 << 20)
        while fh.readinto(buf):
            pass


def hashlib_sha256(path: Path) -> str:
    """sha256 streamed with hashlib in 8 MiB reads, as apply's hashing thread does."""
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


# A fresh interpreter runs one apply and prints its own VmHWM (peak RSS of its own address space; wait4's
# ru_maxrss could include the parent's RSS from before the exec) and the VmHWM after the imports alone.
_CHILD = """
import json, os, sys, time
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024
from patchkit.edit.gguf_apply import apply_gguf
from patchkit.recipe import load_recipe
recipe = load_recipe(sys.argv[1])
base = hwm()
t0 = time.perf_counter()
if sys.argv[3] == '-':
    apply_gguf(recipe, model=sys.argv[2], in_place=True)
else:
    apply_gguf(recipe, model=sys.argv[2], out=sys.argv[3], force=True)
print(json.dumps({'seconds': time.perf_counter() - t0, 'rss_mb': hwm(), 'rss_after_imports_mb': base}))
"""


def child_apply(recipe: Path, model: Path, out: Path | None, env: dict) -> dict:
    os.sync()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(recipe), str(model), str(out) if out is not None else "-"],
        env={**os.environ, **env, "PYTHONPATH": str(HERE.parent)},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the measuring child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("metric", "value", "target", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.1, help="size of the synthetic GGUF (default 1.1)")
    ap.add_argument("--blocks", type=int, default=24)
    ap.add_argument("--edits", type=int, default=64, help="neuron edits in the recipe")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each timed step; the median is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir in /tmp)")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR", help="keep (and reuse) the source GGUF in DIR")
    ap.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    args = ap.parse_args()

    from patchkit.edit.gguf_apply import apply_gguf, undo_gguf_in_place
    from patchkit.edit.gguf_plan import read_patchkit_metadata
    from patchkit.model.gguf_header import scan_gguf_header

    work = Path(tempfile.mkdtemp(prefix="pk-bench-gguf-", dir=args.workdir))
    env = {"PATCHKIT_NO_HASH_CACHE": "1", "PATCHKIT_CACHE": str(work / "cache")}
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        src, shape, reused = source_gguf(args, work)
        build_s = time.perf_counter() - t0
        size = src.stat().st_size
        print(
            f"source {src} ({size / 1e9:.2f} GB, {shape['blocks']} blocks, n_ff {shape['n_ff']}): "
            f"{'reused' if reused else f'built in {build_s:.1f}s'}",
            flush=True,
        )
        os.sync()
        read_once(src)  # page cache: warm
        recipe = write_recipe(work / "recipe.yaml", shape, args.edits)
        dst, out = work / "cp.gguf", work / "out.gguf"

        cp_s, sync_s, sha_s, hl_s, apply_s = [], [], [], [], []
        digest = ""
        for i in range(args.repeat):
            s, _ = timed(subprocess.run, ["cp", "--reflink=never", str(src), str(dst)], check=True)
            cp_s.append(s)
            t = time.perf_counter()
            os.sync()  # what cp left unwritten (informational: apply fsyncs its output, cp does not)
            sync_s.append(time.perf_counter() - t)
            s, line = timed(sh, "sha256sum", str(dst))
            sha_s.append(s)
            digest = str(line).split()[0]
            s, hl_digest = timed(hashlib_sha256, dst)
            hl_s.append(s)
            if hl_digest != digest:
                raise SystemExit(f"hashlib says {hl_digest}, sha256sum says {digest}")
            dst.unlink()
            out.unlink(missing_ok=True)
            s, result = timed(apply_gguf, recipe, model=src, out=out, force=True)
            apply_s.append(s)
            print(
                f"run {i + 1}/{args.repeat}: cp {cp_s[-1]:.2f}s (+ sync {sync_s[-1]:.2f}s) sha256sum {sha_s[-1]:.2f}s "
                f"hashlib {hl_s[-1]:.2f}s apply {s:.2f}s",
                flush=True,
            )
        recorded = read_patchkit_metadata(scan_gguf_header(out)).get("patchkit.source.sha256")
        if recorded != digest:
            raise SystemExit(f"apply recorded source sha256 {recorded}, sha256sum says {digest}")
        n_edits, bytes_edited = len(result.plan.edits), result.plan.bytes_edited  # type: ignore[attr-defined]
        out.unlink()
        rss_apply = child_apply(recipe, src, out, env)
        out.unlink()

        copy = work / "in-place.gguf"
        subprocess.run(["cp", "--reflink=never", str(src), str(copy)], check=True)
        ip_s, undo_s = [], []
        for _ in range(args.repeat):
            s, _ = timed(apply_gguf, recipe, model=copy, in_place=True)
            ip_s.append(s)
            s, _ = timed(undo_gguf_in_place, copy)
            undo_s.append(s)
        rss_in_place = child_apply(recipe, copy, None, env)
        undo_gguf_in_place(copy)
        if sh("sha256sum", str(copy)).split()[0] != digest:
            raise SystemExit("the in-place copy differs from the source after undo")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baseline = statistics.median(cp_s) + statistics.median(sha_s)
    baseline_hl = statistics.median(cp_s) + statistics.median(hl_s)
    ratio = statistics.median(apply_s) / baseline
    ratio_hl = statistics.median(apply_s) / baseline_hl
    results = {
        "file_gb": round(size / 1e9, 3),
        "shape": shape,
        "source_reused": reused,
        "page_cache": "warm (source read once after building; sync before each timed step)",
        "repeat": args.repeat,
        "edits": n_edits,
        "bytes_edited": bytes_edited,
        "cp_s": med(cp_s),
        "sha256sum_s": med(sha_s),
        "cp_plus_sha256_s": round(baseline, 3),
        "hashlib_sha256_s": med(hl_s),
        "cp_plus_hashlib_s": round(baseline_hl, 3),
        "sync_after_cp_s": med(sync_s),
        "apply_s": med(apply_s),
        "apply_over_cp_plus_sha256": round(ratio, 3),
        "apply_over_cp_plus_hashlib": round(ratio_hl, 3),
        "in_place_apply_s": med(ip_s),
        "in_place_undo_s": med(undo_s),
        "apply_peak_rss_mb": round(rss_apply["rss_mb"], 1),
        "apply_child_s": round(rss_apply["seconds"], 3),
        "in_place_peak_rss_mb": round(rss_in_place["rss_mb"], 1),
        "child_rss_after_imports_mb": round(rss_apply["rss_after_imports_mb"], 1),
        "runs": {
            "cp_s": cp_s,
            "sync_after_cp_s": sync_s,
            "sha256sum_s": sha_s,
            "hashlib_sha256_s": hl_s,
            "apply_s": apply_s,
            "in_place_s": ip_s,
            "undo_s": undo_s,
        },
    }
    checks = {
        "apply_ratio": ratio <= TARGET_RATIO,
        "apply_ratio_hashlib": ratio_hl <= TARGET_RATIO,
        "in_place_apply": results["in_place_apply_s"] < TARGET_IN_PLACE_S,
        "in_place_undo": results["in_place_undo_s"] < TARGET_IN_PLACE_S,
        "apply_rss": results["apply_peak_rss_mb"] <= TARGET_RSS_MB,
        "in_place_rss": results["in_place_peak_rss_mb"] <= TARGET_RSS_MB,
    }
    results["pass"] = {**checks, "all": all(checks.values())}
    print(json.dumps(results, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    def verdict(key: str) -> str:
        return "PASS" if checks[key] else "FAIL"

    r = results
    print()
    print(
        table(
            [
                ("cp (median)", f"{r['cp_s']:.2f} s", "", ""),
                ("sha256sum (median)", f"{r['sha256sum_s']:.2f} s", "", ""),
                ("hashlib sha256 (median)", f"{r['hashlib_sha256_s']:.2f} s", "", ""),
                ("cp + sha256sum", f"{r['cp_plus_sha256_s']:.2f} s", "baseline", ""),
                ("cp + hashlib", f"{r['cp_plus_hashlib_s']:.2f} s", "baseline", ""),
                ("(sync after cp, not counted)", f"{r['sync_after_cp_s']:.2f} s", "", ""),
                ("apply, new file (median)", f"{r['apply_s']:.2f} s", "", ""),
                ("apply / (cp + sha256sum)", f"{ratio:.2f}x", f"<= {TARGET_RATIO}x", verdict("apply_ratio")),
                ("apply / (cp + hashlib)", f"{ratio_hl:.2f}x", f"<= {TARGET_RATIO}x", verdict("apply_ratio_hashlib")),
                ("in-place apply (median)", f"{r['in_place_apply_s']:.3f} s", "< 1 s", verdict("in_place_apply")),
                ("in-place undo (median)", f"{r['in_place_undo_s']:.3f} s", "< 1 s", verdict("in_place_undo")),
                ("apply peak RSS", f"{r['apply_peak_rss_mb']:.0f} MB", "<= 256 MB", verdict("apply_rss")),
                ("in-place peak RSS", f"{r['in_place_peak_rss_mb']:.0f} MB", "<= 256 MB", verdict("in_place_rss")),
            ]
        )
    )
    print(
        f"\n{r['file_gb']} GB GGUF, {n_edits} edits ({bytes_edited} bytes), page cache warm, "
        f"median of {args.repeat}; child RSS after imports alone: {r['child_rss_after_imports_mb']:.0f} MB"
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

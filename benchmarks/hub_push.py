"""Push / re-push / pull timings against the local Hub-protocol test server (run by hand, not in CI).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hub_push.py [--mb 256]

Builds a fake patched checkpoint with one large shard, pushes it (hash + LFS upload + commit + verify), pushes it
again (nothing to upload: the resume path), and pulls it into a fresh cache. Prints MB/s for each step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=256, help="size of the big shard")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="patchkit-hub-bench-"))
    os.environ.update(
        HF_HOME=str(work / "home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_OFFLINE="0",
        HF_TOKEN="hf_bench",
        PATCHKIT_CACHE=str(work / "pk-cache"),
    )
    import huggingface_hub.constants as constants
    from hubserver.server import Account, HubServer

    server = HubServer(work / "server", {"hf_bench": Account("bench")}).start()
    constants.HF_HUB_DISABLE_XET, constants.HF_HUB_OFFLINE = True, False
    constants.HF_HUB_CACHE = str(work / "home" / "hub")
    out = work / "patched"
    out.mkdir()
    shard = out / "model.safetensors"
    with open(shard, "wb") as handle:
        block = os.urandom(1 << 20)
        for i in range(args.mb):
            handle.write(hashlib.sha256(block + i.to_bytes(4, "little")).digest() * (1 << 15))
    (out / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    files = {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size, "rewritten": True}
        for p in out.iterdir()
    }
    (out / "patchkit.json").write_text(
        json.dumps({"patchkit_version": "0.1.0", "base": {}, "output_files": files, "edits": [], "recipe": {}})
    )
    from patchkit.publish import hub

    size_mb = shard.stat().st_size / 2**20
    try:
        for label, fn in [
            (
                "push (hash + upload + commit + verify)",
                lambda: hub.push(out, "bench/big", endpoint=server.url, progress=False),
            ),
            (
                "re-push (resume: nothing to upload)",
                lambda: hub.push(out, "bench/big", endpoint=server.url, progress=False),
            ),
            ("pull into a fresh cache", lambda: hub.pull("bench/big", endpoint=server.url)),
        ]:
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            print(f"{label:42s} {took:7.2f} s  {size_mb / took:8.1f} MB/s")
        puts = len(server.requests("PUT"))
        print(f"LFS PUT requests over both pushes: {puts} (1 expected: the re-push uploads nothing)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

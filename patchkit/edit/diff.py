"""Compare two checkpoints tensor by tensor at disk speed, and explain MLP changes as recipe edits.

Pass 1 reads both copies of every tensor once in 8 MiB chunks; equal chunks cost one memcmp, and only a
chunk that differs is decoded (which elements changed, by how much, which neuron/expert they belong to).
Files known to be identical without reading them are skipped: the same inode (hard links: `apply --link`), or two
HF-cache blobs whose names (their sha256) are equal. The stat-keyed sha256 cache is never taken as proof of
equality (a file rewritten with its mtime restored would keep its entry): every other byte is compared. Pass 2 re-reads only the changed MLP tensors to classify each changed slice over *all* of
its elements: inverted (every sign bit flipped), zeroed, scaled by c (bit-exact under apply's rounding
for a small candidate set of c), or arbitrary. `--as-recipe` turns a fully classified diff into a recipe.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchkit._io.fs import check_entry
from patchkit._io.hashing import blob_sha256
from patchkit._io.progress import Progress
from patchkit.edit.bytes import RAW_DTYPES, SIGN_BITS, Selection, apply_op, raw_view, to_float32
from patchkit.edit.output import HUB_MANAGED, IN_PLACE_JOURNAL, LOCK_FILE, UNDO_RECIPE
from patchkit.edit.provenance import PROVENANCE_FILE, read_provenance
from patchkit.errors import PatchkitError
from patchkit.model.safetensors_io import CHUNK, SCAN_CHUNK, SafetensorsHeader, read_header

#: Compare in cache-sized pieces: both buffers stay in L2/L3 between the read and the compare.
DIFF_CHUNK = SCAN_CHUNK

#: Beyond this many changed slices in one tensor, report counts only (a fine-tune, not a patch).
MAX_CLASSIFIED_SLICES = 512

#: Tensor name -> (layer, role); the role fixes the axis whose index is the neuron / expert.
_ROLE_RE = re.compile(
    r"(?:^|\.)layers\.(\d+)\.(mlp\.down_proj|mlp\.up_proj|mlp\.gate_proj|experts\.down_proj|experts\.gate_up_proj|"
    r"router\.per_expert_scale)(?:\.weight)?$"
)
ROLE_AXIS = {
    "mlp.down_proj": 1,
    "mlp.up_proj": 0,
    "mlp.gate_proj": 0,
    "experts.down_proj": 0,
    "experts.gate_up_proj": 0,
    "router.per_expert_scale": 0,
}
#: patchkit's own records of how and when a checkpoint was made: not a difference for `--exit-code` (two outputs
#: of the same apply always differ in patchkit.json's timestamp; GGUF `patchkit.*` metadata is skipped likewise).
RECORD_FILES = frozenset({PROVENANCE_FILE, UNDO_RECIPE})
#: Files whose differences never block --as-recipe (apply writes or leaves them as they are).
_IGNORED_FILES = RECORD_FILES | {"README.md"} | HUB_MANAGED


class DiffError(PatchkitError):
    """A diff cannot be turned into what was asked (e.g. a recipe for an unclassifiable change)."""


@dataclass
class SliceChange:
    """One changed neuron (or expert / element) of an MLP tensor."""

    index: int
    classification: str  # inverted | zeroed | scaled | arbitrary
    factor: float | None
    changed_elements: int
    max_abs: float
    max_rel: float

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "classification": self.classification,
            "factor": self.factor,
            "changed_elements": self.changed_elements,
            "max_abs_change": self.max_abs,
            "max_rel_change": self.max_rel,
        }


@dataclass
class TensorChange:
    tensor: str
    file_a: str
    file_b: str
    dtype: str
    shape: tuple[int, ...]
    changed_elements: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    layer: int | None = None
    role: str | None = None
    axis: int | None = None
    slices: list[SliceChange] = field(default_factory=list)
    slices_truncated: bool = False

    @property
    def classification(self) -> str:
        kinds = {s.classification for s in self.slices}
        if self.role is None or self.slices_truncated or not kinds:
            return "arbitrary"
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "file_a": self.file_a,
            "file_b": self.file_b,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "layer": self.layer,
            "role": self.role,
            "axis": self.axis,
            "changed_elements": self.changed_elements,
            "max_abs_change": self.max_abs,
            "max_rel_change": self.max_rel,
            "classification": self.classification,
            "slices": [s.to_json() for s in self.slices],
            "slices_truncated": self.slices_truncated,
        }


@dataclass
class DiffReport:
    a: Path
    b: Path
    changed: list[TensorChange] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reshaped: list[dict[str, Any]] = field(default_factory=list)
    other_files_changed: list[str] = field(default_factory=list)
    identical_files: list[str] = field(default_factory=list)  # Hub shards with equal sha256, never downloaded
    identical_tensors: int = 0
    bytes_compared: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        """Whether the weights are identical (tensor names, shapes, dtypes and bytes)."""
        return not (self.changed or self.added or self.removed or self.reshaped)

    @property
    def differs(self) -> bool:
        """Whether A and B differ at all: any tensor, or any other file (config, tokenizer, GGUF metadata) except
        patchkit's own records (`RECORD_FILES`). What `patchkit diff --exit-code` exits 1 on."""
        return not self.identical or any(f not in RECORD_FILES for f in self.other_files_changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": str(self.a),
            "b": str(self.b),
            "identical": self.identical,
            "differs": self.differs,
            "changed": [c.to_json() for c in self.changed],
            "added": self.added,
            "removed": self.removed,
            "reshaped": self.reshaped,
            "other_files_changed": self.other_files_changed,
            "identical_files": self.identical_files,
            "identical_tensors": self.identical_tensors,
            "bytes_compared": self.bytes_compared,
            "bytes_skipped_as_known_identical": self.bytes_skipped,
            "seconds": round(self.seconds, 3),
            "throughput_mb_s": round(self.bytes_compared / 1e6 / self.seconds, 1) if self.seconds > 0 else None,
        }


# --- inputs ----------------------------------------------------------------------------------------------


def resolve_dir(ref: str | os.PathLike[str]) -> Path:
    """A local checkpoint directory for `ref` (a directory, or a model reference resolved by patchkit.model.refs)."""
    p = Path(ref)
    if p.is_dir():
        return p
    from patchkit.model.refs import ensure_local, resolve_model

    model = resolve_model(str(ref))
    return Path(model.local_dir) if model.local_dir is not None else Path(ensure_local(model))


def weight_files(directory: Path) -> list[str]:
    """Weight files of a checkpoint dir: from model.safetensors.index.json (read strictly, paths normalised and
    kept inside the directory), else every *.safetensors file. The directory is first checked for special files
    and links that leave it (`patchkit._io.fs.check_tree`)."""
    from patchkit.model.refs import resolve_model

    ref = resolve_model(directory)
    ref.check_local()
    weight_map = ref.weight_map()
    if weight_map is not None:
        return sorted(set(weight_map.values()))
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise PatchkitError(f"{directory}: no *.safetensors files (is this a checkpoint directory?)")
    return files


def _headers(
    directory: Path, skip: frozenset[str] = frozenset()
) -> tuple[dict[str, SafetensorsHeader], dict[str, str]]:
    headers = {f: read_header(directory / f, root=directory) for f in weight_files(directory) if f not in skip}
    owner = {}
    for f, h in headers.items():
        for name in h.tensors:
            owner[name] = f
    return headers, owner


def role_of(name: str) -> tuple[int, str] | None:
    m = _ROLE_RE.search(name)
    return (int(m.group(1)), m.group(2)) if m else None


# --- comparison ------------------------------------------------------------------------------------------


def _same_file(pa: Path, pb: Path) -> bool:
    """Identical without reading: one inode (hard links), or two HF blobs named by the same sha256. Never the stat
    cache (see the module doc)."""
    try:
        if os.path.samefile(pa, pb):
            return True
    except OSError:
        return False
    ka, kb = blob_sha256(pa), blob_sha256(pb)
    return bool(ka) and ka == kb and os.path.getsize(pa) == os.path.getsize(pb)


def diff_checkpoints(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    skip: frozenset[str] = frozenset(),
    progress: Progress | None = None,
) -> DiffReport:
    """Compare checkpoint A with checkpoint B (B is the patched one), tensor by tensor, byte-exact.

    Args:
        a, b: local checkpoint directories (or refs `patchkit.model.refs` resolves to local copies).
        skip: weight files known to be identical on both sides (e.g. equal LFS sha256 on the Hub): not read.
        progress: `progress(stage, done_bytes, total_bytes)`.

    Returns:
        DiffReport: changed tensors with their slices classified (inverted / zeroed / scaled), added, removed,
        reshaped tensors and other changed files.
    """
    t0 = time.perf_counter()
    dir_a, dir_b = resolve_dir(a), resolve_dir(b)
    report = DiffReport(a=dir_a, b=dir_b)
    report.identical_files = sorted(skip)
    heads_a, own_a = _headers(dir_a, skip)
    heads_b, own_b = _headers(dir_b, skip)
    report.removed = sorted(set(own_a) - set(own_b))
    report.added = sorted(set(own_b) - set(own_a))
    common = [n for n in own_a if n in own_b]
    total = sum(heads_a[own_a[n]].tensors[n].nbytes for n in common)
    done = 0
    identical_files = {(fa, fb) for fa in heads_a for fb in heads_b if fa == fb and _same_file(dir_a / fa, dir_b / fb)}
    fds: dict[Path, int] = {}
    reader = _PairReader()
    try:
        for name in sorted(common, key=lambda n: (own_a[n], heads_a[own_a[n]].tensors[n].begin)):
            ha, hb = heads_a[own_a[name]], heads_b[own_b[name]]
            ta, tb = ha.tensors[name], hb.tensors[name]
            if (ta.dtype, ta.shape) != (tb.dtype, tb.shape):
                report.reshaped.append(
                    {
                        "tensor": name,
                        "a": {"dtype": ta.dtype, "shape": list(ta.shape)},
                        "b": {"dtype": tb.dtype, "shape": list(tb.shape)},
                    }
                )
                continue
            if (own_a[name], own_b[name]) in identical_files:
                report.identical_tensors += 1
                report.bytes_skipped += ta.nbytes
                done += ta.nbytes
                continue
            fa = _fd(fds, dir_a / own_a[name])
            fb = _fd(fds, dir_b / own_b[name])
            change = _compare_tensor(reader, name, own_a[name], own_b[name], ha, hb, fa, fb)
            report.bytes_compared += 2 * ta.nbytes
            done += ta.nbytes
            if progress:
                progress("diff", done, total)
            if change is None:
                report.identical_tensors += 1
            else:
                report.changed.append(change)
        report.other_files_changed = _other_files(dir_a, dir_b, set(heads_a) | set(heads_b) | skip)
    finally:
        for fd in fds.values():
            os.close(fd)
    report.seconds = time.perf_counter() - t0
    return report


def _fd(cache: dict[Path, int], path: Path) -> int:
    if path not in cache:
        cache[path] = os.open(path, os.O_RDONLY)
    return cache[path]


class _PairReader:
    """Reads the same range of two files into two reused buffers (no per-chunk allocation, no page faults)."""

    def __init__(self) -> None:
        self.buf_a, self.buf_b = bytearray(DIFF_CHUNK), bytearray(DIFF_CHUNK)
        self.np_a = np.frombuffer(self.buf_a, np.uint8)
        self.np_b = np.frombuffer(self.buf_b, np.uint8)

    def chunks(self, fd_a: int, fd_b: int, start_a: int, start_b: int, nbytes: int, itemsize: int):
        """Yield (offset, bytes of A, bytes of B, equal?) for consecutive chunks of [0, nbytes)."""
        step = DIFF_CHUNK - DIFF_CHUNK % max(1, itemsize)
        view_a, view_b = memoryview(self.buf_a), memoryview(self.buf_b)
        off = 0
        while off < nbytes:
            n = min(step, nbytes - off)
            if os.preadv(fd_a, [view_a[:n]], start_a + off) != n or os.preadv(fd_b, [view_b[:n]], start_b + off) != n:
                raise PatchkitError(f"a checkpoint file shrank while it was being compared (offset {off})")
            equal = self.buf_a == self.buf_b if n == DIFF_CHUNK else bool(np.array_equal(self.np_a[:n], self.np_b[:n]))
            yield off, view_a[:n], view_b[:n], equal
            off += n


def _compare_tensor(reader: _PairReader, name, file_a, file_b, ha, hb, fd_a, fd_b) -> TensorChange | None:
    ta = ha.tensors[name]
    start_a, _ = ha.absolute(name)
    start_b, _ = hb.absolute(name)
    float_dtype = ta.dtype in RAW_DTYPES
    itemsize = ta.itemsize if float_dtype else 1  # non-float dtypes are compared (and counted) per byte
    role = role_of(name)
    axis = ROLE_AXIS[role[1]] if role and float_dtype and len(ta.shape) > ROLE_AXIS[role[1]] else None
    sel_geom = Selection.of(ta.shape, axis, 0) if axis is not None else None
    change: TensorChange | None = None
    touched: set[int] = set()
    truncated = False
    for off, da, db, equal in reader.chunks(fd_a, fd_b, start_a, start_b, ta.nbytes, itemsize):
        if equal:
            continue
        if change is None:
            change = TensorChange(
                tensor=name,
                file_a=file_a,
                file_b=file_b,
                dtype=ta.dtype,
                shape=ta.shape,
                layer=role[0] if role else None,
                role=role[1] if role else None,
                axis=axis,
            )
        if not float_dtype:
            change.changed_elements += int(np.count_nonzero(np.frombuffer(da, np.uint8) != np.frombuffer(db, np.uint8)))
            continue
        ra, rb = raw_view(da, ta.dtype), raw_view(db, ta.dtype)
        idx = np.flatnonzero(ra != rb)
        change.changed_elements += int(idx.size)
        va, vb = to_float32(ra[idx], ta.dtype), to_float32(rb[idx], ta.dtype)
        _update_stats(change, va, vb)
        if sel_geom is not None and not truncated:
            e = idx + off // itemsize
            touched.update(np.unique((e // sel_geom.inner) % sel_geom.dim).tolist())
            if len(touched) > MAX_CLASSIFIED_SLICES:
                truncated = True
    if change is None:
        return None
    if sel_geom is not None and axis is not None and not truncated:
        change.slices = _classify_slices(reader, ta, sorted(touched), axis, fd_a, fd_b, start_a, start_b)
    change.slices_truncated = truncated
    return change


def _update_stats(obj, va: np.ndarray, vb: np.ndarray) -> None:
    with np.errstate(all="ignore"):
        d = np.abs(vb.astype(np.float64) - va.astype(np.float64))
        rel = d / np.maximum(np.abs(va.astype(np.float64)), 1e-30)
    finite = np.isfinite(d)
    if finite.any():
        obj.max_abs = max(obj.max_abs, float(d[finite].max()))
        obj.max_rel = max(obj.max_rel, float(rel[finite].max()))
    if not finite.all():
        obj.max_abs = obj.max_rel = float("inf")


class _SliceState:
    """Running classification of one slice over all its elements (streamed in chunks)."""

    def __init__(self, index: int, dtype: str):
        self.index, self.dtype = index, dtype
        self.inverted = True
        self.zeroed = True
        self.candidates: list[float] | None = None  # scale factors still consistent with every element
        self.changed = 0
        self.max_abs = 0.0
        self.max_rel = 0.0

    def feed(self, ra: np.ndarray, rb: np.ndarray) -> None:
        if ra.size == 0:
            return
        self.changed += int(np.count_nonzero(ra != rb))
        diff = ra != rb
        if diff.any():
            _update_stats(self, to_float32(ra[diff], self.dtype), to_float32(rb[diff], self.dtype))
        sign = ra.dtype.type(SIGN_BITS[self.dtype])
        self.inverted = self.inverted and bool(np.array_equal(ra ^ sign, rb))
        self.zeroed = self.zeroed and not bool(rb.any())
        if self.candidates is None:
            self.candidates = _scale_candidates(ra, rb, self.dtype)
        self.candidates = [c for c in self.candidates if np.array_equal(apply_op(ra, self.dtype, "scale", c), rb)]

    def result(self) -> SliceChange:
        if self.inverted:
            kind, factor = "inverted", -1.0
        elif self.zeroed:
            kind, factor = "zeroed", 0.0
        elif self.candidates:
            kind, factor = "scaled", self.candidates[0]
        else:
            kind, factor = "arbitrary", None
        return SliceChange(self.index, kind, factor, self.changed, self.max_abs, self.max_rel)


def _scale_candidates(ra: np.ndarray, rb: np.ndarray, dtype: str) -> list[float]:
    """Factors c worth testing: b/a at the largest |a|, and that ratio rounded to fewer digits (a recipe's 0.5)."""
    va = to_float32(ra, dtype).astype(np.float64)
    vb = to_float32(rb, dtype).astype(np.float64)
    ok = np.isfinite(va) & np.isfinite(vb) & (va != 0)
    if not ok.any():
        return []
    i = int(np.argmax(np.where(ok, np.abs(va), -1)))
    c = vb[i] / va[i]
    if not np.isfinite(c) or c == 0:
        return []
    out = []
    for digits in (2, 3, 4, 6, 8):
        v = float(f"{c:.{digits}g}")
        if v not in out and v != 1.0:
            out.append(v)
    if float(c) not in out:
        out.append(float(c))
    return out


def _classify_slices(
    reader: _PairReader, info, indices: list[int], axis: int, fd_a: int, fd_b: int, start_a: int, start_b: int
) -> list[SliceChange]:
    itemsize = info.itemsize
    states = [(_SliceState(i, info.dtype), Selection.of(info.shape, axis, i)) for i in indices]
    for off, da, db, _ in reader.chunks(fd_a, fd_b, start_a, start_b, info.nbytes, itemsize):
        ra, rb = raw_view(da, info.dtype), raw_view(db, info.dtype)
        e0 = off // itemsize
        for state, sel in states:
            pos = sel.positions_in(e0, e0 + ra.size)
            if isinstance(pos, np.ndarray):
                state.feed(ra[pos], rb[pos])
            else:
                for lo, hi in pos:
                    state.feed(ra[lo:hi], rb[lo:hi])
    return [s.result() for s, _ in states if s.changed]


def _other_files(dir_a: Path, dir_b: Path, weights: set[str]) -> list[str]:
    """Non-weight files that differ or exist on one side only (config, tokenizer, ...)."""

    def listing(d: Path) -> set[str]:
        out = set()
        for root, dirs, files in os.walk(d):
            dirs[:] = [x for x in dirs if x not in (".cache", ".git")]
            for f in files:
                rel = os.path.relpath(os.path.join(root, f), d)
                if rel not in weights and ".patchkit-tmp-" not in rel and rel not in (IN_PLACE_JOURNAL, LOCK_FILE):
                    out.add(rel)
        return out

    la, lb = listing(dir_a), listing(dir_b)
    changed = sorted(la ^ lb)
    for rel in sorted(la & lb):
        pa, pb = dir_a / rel, dir_b / rel
        check_entry(pa), check_entry(pb)  # a FIFO or device would block or never end: refused by name
        if _same_file(pa, pb):
            continue
        if pa.stat().st_size != pb.stat().st_size or not _equal_files(pa, pb):
            changed.append(rel)
    return sorted(changed)


def _equal_files(pa: Path, pb: Path) -> bool:
    with open(pa, "rb") as fa, open(pb, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


# --- diff -> recipe --------------------------------------------------------------------------------------

_OP = {"inverted": "invert", "zeroed": "zero", "scaled": "scale"}
#: Roles whose slices are experts (`experts.up_rows`: a GGUF expert slab, fused or split, with its up rows zeroed).
_EXPERT_ROLES = ("experts.down_proj", "router.per_expert_scale", "experts.up_rows")
_RECIPE_ROLES = ("mlp.down_proj", "mlp.up_proj", *_EXPERT_ROLES)


def recipe_edits(report: DiffReport) -> list[dict[str, Any]]:
    """Recipe edits reproducing B from A, or DiffError naming the first change a recipe cannot express."""
    for what, items in (("added", report.added), ("removed", report.removed)):
        if items:
            raise DiffError(
                f"tensor {items[0]} was {what}; a recipe only edits existing tensors; no recipe can express that"
            )
    if report.reshaped:
        raise DiffError(f"tensor {report.reshaped[0]['tensor']} changed dtype/shape; no recipe can express that")
    blocking = [f for f in report.other_files_changed if f not in _IGNORED_FILES]
    if blocking:
        raise DiffError(f"file {blocking[0]} differs; a recipe only edits weights; no recipe can express that")
    groups: dict[tuple, list[int]] = {}
    for change in report.changed:
        role = change.role
        if role not in _RECIPE_ROLES:
            raise DiffError(
                f"tensor {change.tensor} changed but is not a down_proj/up_proj/expert tensor a recipe can edit; "
                "--as-recipe is refused"
            )
        if change.slices_truncated:
            raise DiffError(
                f"tensor {change.tensor}: more than {MAX_CLASSIFIED_SLICES} slices changed; no recipe can express that"
            )
        for s in change.slices:
            if s.classification == "arbitrary":
                raise DiffError(
                    f"tensor {change.tensor} index {s.index}: change is not an inversion, zeroing or exact scaling "
                    f"(max abs change {s.max_abs:.3g}); no recipe can express that"
                )
            if role in _EXPERT_ROLES:
                if s.classification != "zeroed":
                    raise DiffError(
                        f"tensor {change.tensor} expert {s.index}: experts can only be suppressed (zeroed), found {s.classification}"
                    )
                key: tuple[str, int | None, str, float | None, str | None] = (
                    "expert",
                    change.layer,
                    "suppress",
                    None,
                    "down_proj" if role == "experts.down_proj" else None,
                )
            else:
                factor = s.factor if s.classification == "scaled" else None
                key = (
                    "neuron",
                    change.layer,
                    _OP[s.classification],
                    factor,
                    "up_proj" if role == "mlp.up_proj" else None,
                )
            groups.setdefault(key, []).append(s.index)
    edits = []
    for (kind, layer, op, factor, tensor), indices in sorted(
        groups.items(), key=lambda kv: (kv[0][1], kv[0][0], str(kv[0][2:]))
    ):
        edit: dict[str, Any] = {"layer": layer, kind: indices[0] if len(indices) == 1 else sorted(indices), "op": op}
        if factor is not None:
            edit["factor"] = factor
        if tensor is not None:
            edit["tensor"] = tensor
        edits.append(edit)
    if not edits:
        raise DiffError("the checkpoints' weights are identical; there is nothing to write a recipe for")
    return edits


def recipe_text(
    report: DiffReport,
    *,
    name: str | None = None,
    repo: str | None = None,
    revision: str | None = None,
    architecture: str | None = None,
) -> str:
    """A recipe (YAML) that reproduces B from A, with provenance of the diff in `source`."""
    from io import StringIO

    from ruamel.yaml import YAML

    edits = recipe_edits(report)
    config = _read_config(report.a)
    if architecture is None:
        architecture = _architecture(config)
    # the base's Hub identity: given, else what B's (or A's) provenance recorded, else left out
    for prov in (read_provenance(report.b), read_provenance(report.a)):
        base = (prov or {}).get("base") or {}
        pinned = ((prov or {}).get("recipe") or {}).get("normalized", {}).get("model") or {}
        for known in (base, pinned):
            if repo is None and known.get("repo"):
                repo, revision = known["repo"], revision or known.get("revision")
    model = {"repo": repo, "revision": revision, "architecture": architecture}
    doc = {
        "patchkit": 1,
        "name": name or _slug(report.b.stem if report.b.suffix.lower() == ".gguf" else report.b.name, "-from-diff"),
        "description": f"Reproduces {report.b.name} from {report.a.name} (generated by patchkit diff --as-recipe).",
        "model": {k: v for k, v in model.items() if v is not None},
        "source": {"kind": "diff", "reference": f"patchkit diff {report.a} {report.b}"},
        "edits": edits,
    }
    yaml = YAML()
    yaml.default_flow_style = None
    yaml.width = 4096  # one edit per line, never folded
    buf = StringIO()
    yaml.dump(doc, buf)
    text = buf.getvalue()
    from patchkit.recipe import parse_recipe

    try:
        parse_recipe(text, "<diff --as-recipe>")
    except PatchkitError as exc:
        raise DiffError(f"the recipe derived from the diff does not validate: {exc}") from None
    return text


def _slug(text: str, suffix: str = "") -> str:
    """A valid recipe name from a directory name: a slug, no '..', at most MAX_NAME_CHARS with `suffix` kept."""
    from patchkit.recipe.limits import MAX_NAME_CHARS

    slug = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text))
    slug = re.sub(r"^[^A-Za-z0-9]+", "", slug)[: MAX_NAME_CHARS - len(suffix)].rstrip("-.")
    return f"{slug}{suffix}" if slug else f"recipe{suffix or '-from-diff'}"


def _read_config(directory: Path) -> dict:
    """config.json of a checkpoint dir ({} when it has none), read with the same caps and strict JSON as models."""
    from patchkit._io.fs import parse_json, read_capped
    from patchkit.model.refs import MAX_CONFIG_BYTES

    path = directory / "config.json"
    if not os.path.lexists(path):
        return {}
    config = parse_json(read_capped(path, MAX_CONFIG_BYTES, what="config.json", root=directory), str(path))
    return config if isinstance(config, dict) else {}


def _architecture(config: dict) -> str | None:
    try:
        from patchkit.model.adapters import get_adapter

        return get_adapter(config).architecture
    except Exception:  # noqa: BLE001 - best effort: the recipe loader validates it anyway
        return config.get("model_type")

"""Exact edit semantics on raw stored bytes (BF16, F16, F32), with no torch and no dtype round trips.

- invert: flip the sign bit (BF16/F16 `^ 0x8000`, F32 `^ 0x80000000`); applying it twice is the identity,
  NaNs and infinities included.
- scale by f: decode to float32 (exact for all three dtypes), multiply by float32(f) in float32 (IEEE
  round-to-nearest-even), round to the stored dtype with round-to-nearest-even (NaN stays NaN, overflow
  gives +-inf) — what torch does for `bf16_tensor * f` on CPU.
- zero / suppress: every element becomes +0.0 (all-zero bytes), also for negative values and NaNs, so a
  zeroed slice is recognisable bit for bit.

Also here: which elements of a tensor an edit selects (`Selection`), for a chunk of that tensor's bytes, and
`ScaleCheck`, which tells at plan time whether scaling a slice by a factor would overflow, underflow to zero or
change nothing in the stored dtype (a wrong edit that would otherwise be written with exit 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from patchkit.errors import ApplyError
from patchkit.model.safetensors_io import DTYPE_MAX, DTYPE_TINY

#: Unsigned integer view used to hold each editable dtype's raw bits.
RAW_DTYPES: dict[str, np.dtype[Any]] = {"BF16": np.dtype("<u2"), "F16": np.dtype("<u2"), "F32": np.dtype("<u4")}
SIGN_BITS = {"BF16": 0x8000, "F16": 0x8000, "F32": 0x80000000}
OPS = ("invert", "scale", "zero", "suppress")


def raw_view(buf: bytearray | memoryview | bytes, dtype: str) -> np.ndarray:
    """The bytes of `buf` as an array of raw bit patterns (writable if `buf` is)."""
    return np.frombuffer(buf, dtype=RAW_DTYPES[dtype])


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Decode raw bits to float32 values (exact: every BF16/F16/F32 value is a float32)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float32)
    return raw.view(np.float32).copy()


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """Encode float32 values as raw bits of `dtype`, rounding to nearest, ties to even."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "F32":
        return values.view(np.uint32).copy()
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16).view(np.uint16)
    bits = values.view(np.uint32)
    nan = np.isnan(values)
    lsb = (bits >> np.uint32(16)) & np.uint32(1)
    with np.errstate(over="ignore"):
        rounded = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    quiet_nan = ((bits >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return np.where(nan, quiet_nan, rounded)


def apply_op(raw: np.ndarray, dtype: str, op: str, factor: float | None = None) -> np.ndarray:
    """New raw bits for the elements `raw` after `op` (the input is not modified)."""
    if dtype not in RAW_DTYPES:
        raise ApplyError(f"cannot edit dtype {dtype}: patchkit edits only BF16, F16 and F32 exactly")
    if op == "invert":
        return raw ^ raw.dtype.type(SIGN_BITS[dtype])
    if op in ("zero", "suppress"):
        return np.zeros_like(raw)
    if op == "scale":
        if factor is None:
            raise ApplyError("scale needs a factor")
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = to_float32(raw, dtype) * np.float32(factor)
        return from_float32(scaled, dtype)
    raise ApplyError(f"unknown op {op!r} (known: {', '.join(OPS)})")


@dataclass(frozen=True)
class Selection:
    """Elements selected by index `index` along one axis of a row-major tensor.

    Seen as [outer, dim, inner], the selection is `[:, index, :]`: for every outer o, the `inner` elements
    starting at element (o * dim + index) * inner.
    """

    outer: int
    dim: int
    inner: int
    index: int

    @classmethod
    def of(cls, shape: tuple[int, ...], axis: int, index: int) -> Selection:
        outer = int(np.prod(shape[:axis], dtype=np.int64)) if axis else 1
        inner = int(np.prod(shape[axis + 1 :], dtype=np.int64)) if axis + 1 < len(shape) else 1
        return cls(outer=outer, dim=shape[axis], inner=inner, index=index)

    @property
    def count(self) -> int:
        """Number of selected elements."""
        return self.outer * self.inner

    def element_ranges(self):
        """Yield [start, end) element ranges of the selection in order (one per outer block)."""
        period = self.dim * self.inner
        for o in range(self.outer):
            start = o * period + self.index * self.inner
            yield start, start + self.inner

    def positions_in(self, e0: int, e1: int) -> np.ndarray | list[tuple[int, int]]:
        """Selected elements within elements [e0, e1), relative to e0, in order.

        Long runs (rows) come back as a list of (lo, hi) slices; short runs (columns) as one index array,
        so both a 1-element-per-row column and a multi-megabyte expert slab cost few numpy calls.
        """
        period = self.dim * self.inner
        base = self.index * self.inner
        p0 = max(0, (e0 - base - self.inner) // period + 1)
        p1 = min(self.outer - 1, (e1 - 1 - base) // period)
        if p1 < p0:
            return []
        if self.inner >= 256 or p1 - p0 < 8:
            out = []
            for p in range(p0, p1 + 1):
                lo = max(p * period + base, e0)
                hi = min(p * period + base + self.inner, e1)
                if lo < hi:
                    out.append((lo - e0, hi - e0))
            return out
        starts = np.arange(p0, p1 + 1, dtype=np.int64) * period + base - e0
        pos = (starts[:, None] + np.arange(self.inner, dtype=np.int64)[None, :]).ravel()
        return pos[(pos >= 0) & (pos < e1 - e0)]


def edit_chunk(raw: np.ndarray, positions, dtype: str, op: str, factor: float | None, before=None, after=None) -> None:
    """Apply `op` in place to the selected `positions` of a writable raw chunk, feeding optional hashers
    with the selected bytes before and after (in element order)."""
    if isinstance(positions, np.ndarray):
        if positions.size == 0:
            return
        old = raw[positions]
        new = apply_op(old, dtype, op, factor)
        raw[positions] = new
        if before is not None:
            before.update(old.tobytes())
        if after is not None:
            after.update(new.tobytes())
        return
    for lo, hi in positions:
        old = raw[lo:hi]
        if before is not None:
            before.update(old.tobytes())
        new = apply_op(old, dtype, op, factor)
        raw[lo:hi] = new
        if after is not None:
            after.update(new.tobytes())


@dataclass
class ScaleCheck:
    """What scaling one slice by `factor` does to its `dtype` values, accumulated chunk by chunk (`update`)."""

    dtype: str
    factor: float
    elements: int = 0
    nonzero: int = 0  # finite, nonzero elements before
    zeroed: int = 0  # of those, how many become 0
    overflowed: int = 0  # finite elements that become infinite
    changed: int = 0  # elements whose bits change
    max_abs: float = 0.0  # largest finite |w| before

    def update(self, raw: np.ndarray) -> None:
        """Account for the raw bits of some of the slice's elements."""
        if raw.size == 0:
            return
        new = apply_op(raw, self.dtype, "scale", self.factor)
        old_f, new_f = to_float32(raw, self.dtype), to_float32(new, self.dtype)
        finite = np.isfinite(old_f)
        nonzero = finite & (old_f != 0)
        self.elements += int(raw.size)
        self.nonzero += int(np.count_nonzero(nonzero))
        self.zeroed += int(np.count_nonzero(nonzero & (new_f == 0)))
        self.overflowed += int(np.count_nonzero(finite & ~np.isfinite(new_f)))
        self.changed += int(np.count_nonzero(new != raw))
        if finite.any():
            self.max_abs = max(self.max_abs, float(np.abs(old_f[finite]).max()))

    def problem(self) -> str | None:
        """Why the scale is wrong for this slice (overflow, underflow to zero, no change), or None."""
        f, dtype = float(self.factor), self.dtype
        top = self.max_abs * abs(f)
        if self.overflowed:
            return (
                f"overflows {dtype}: {self.overflowed} of {self.elements} elements become infinite (max |w| "
                f"{self.max_abs:.6g} x |{f:g}| = {top:.6g} > the {dtype} maximum {DTYPE_MAX[dtype]:.6g}; the "
                f"largest factor that fits is about {DTYPE_MAX[dtype] / self.max_abs:.6g})"
            )
        if f != 0 and self.nonzero and self.zeroed == self.nonzero:  # a literal 0 means what it says
            return (
                f"underflows: every nonzero element becomes 0 in {dtype} (max |w| {self.max_abs:.6g} x "
                f"|{f:g}| = {top:.6g}, below the smallest {dtype} number {DTYPE_TINY[dtype]:.6g}); use "
                "`op: zero` to zero the slice"
            )
        if not self.changed:
            why = "every element is 0" if not self.nonzero else f"every product rounds back to the same {dtype} value"
            return f"changes nothing in {dtype} ({why})"
        return None

"""What every architecture adapter provides: geometry per layer and edit -> tensor-slice targets."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from patchkit._io.fs import shown
from patchkit.errors import ModelError, RecipeError
from patchkit.model.safetensors_io import DTYPE_MAX, DTYPE_TINY, dtype_neighbours, round_to_dtype

EDITABLE_DTYPES = ("BF16", "F16", "F32")
#: Bounds on config.json geometry: beyond them the file is not a real model (and loops over layers would hang).
MAX_LAYERS = 10_000
MAX_WIDTH = 2**31
MAX_EXPERTS = 1 << 16


def config_value(value: Any) -> str:
    """A config value for a one-line message (repr, cut short)."""
    return shown(repr(value), 60)


def scale_factor_problem(factor: Any, dtype: str) -> str | None:
    """Why scaling a `dtype` tensor by `factor` cannot be what the recipe means, or None when it can.

    The arithmetic (`edit.bytes`) multiplies in float32 and rounds to `dtype`; a factor that is not finite there,
    that is 0 (an underflow: `op: zero` is the explicit way), 1 (nothing changes) or -1 without being -1 (a sign
    flip: `op: invert`) once rounded to `dtype` is refused, naming the dtype and the representable factors.
    """
    if factor is None:
        return "op scale needs a factor"
    f = float(factor)
    if not math.isfinite(f):
        return f"factor {f!r} is not a finite number"
    if dtype not in DTYPE_MAX:
        return None
    r = round_to_dtype(f, dtype)
    if math.isinf(r):
        return (
            f"factor {f!r} is {r!r} in {dtype} (the largest {dtype} number is {DTYPE_MAX[dtype]!r}): "
            "every nonzero weight would become infinite"
        )
    if r == 0 and f != 0:
        return (
            f"factor {f!r} is 0 in {dtype} (it underflows: the smallest positive {dtype} number is "
            f"{DTYPE_TINY[dtype]!r}); use `op: zero` to zero the slice"
        )
    lo, hi = dtype_neighbours(f, dtype)
    if r == 1:
        return (
            f"factor {f!r} is exactly 1.0 in {dtype}: scaling by it changes nothing "
            f"(the nearest {dtype} factors are {lo!r} and {hi!r})"
        )
    if r == -1 and f != -1:
        return (
            f"factor {f!r} is exactly -1.0 in {dtype}: it only flips signs; use `op: invert`, or a factor "
            f"whose {dtype} value is not -1 (the nearest are {lo!r} and {hi!r})"
        )
    return None


@dataclass(frozen=True)
class TensorTarget:
    """Edit the slice of `tensor` whose coordinate on `axis` equals `index`."""

    tensor: str
    axis: int
    index: int


@dataclass(frozen=True)
class LayerInfo:
    intermediate_size: int
    is_moe: bool = False
    num_experts: int = 0
    expert_intermediate_size: int | None = None


@dataclass(frozen=True)
class TensorRole:
    layer: int
    role: str  # mlp.down_proj | mlp.up_proj | mlp.gate_proj | experts.down_proj | experts.gate_up_proj | router.per_expert_scale


_ROLE_RE = re.compile(
    r"^(?P<prefix>.*?)layers\.(?P<layer>\d+)\.(?P<role>mlp\.(?:down|up|gate)_proj|experts\.(?:down_proj|gate_up_proj)"
    r"|router\.per_expert_scale)(?:\.weight)?$"
)


class Adapter:
    """Base adapter for gated-MLP decoders stored as `{prefix}.layers.{L}.mlp.{gate,up,down}_proj.weight`."""

    architecture = "base"
    #: config.json `model_type` values and `architectures` class names this adapter handles.
    model_types: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    #: Prefixes tried in order; the first one present in the checkpoint wins.
    prefixes: tuple[str, ...] = ("model",)

    def __init__(self, config: dict[str, Any], *, source: str = "config.json"):
        self.source = source
        if not isinstance(config, dict):
            raise ModelError(
                f"{source}: is a JSON {type(config).__name__}, not an object",
                hint="pass a Hugging Face checkpoint directory",
            )
        self.config = config
        self.key_prefix = ""
        self.text_config = self._text_config(config)
        self.num_layers = self._int("num_hidden_layers", 1, MAX_LAYERS)
        self._check_config()
        self.prefix = self.prefixes[0]

    # config.json checks ---------------------------------------------------------------------------------
    def _bad(self, key: str, want: str, value: Any) -> ModelError:
        return ModelError(
            f"{self.source}: {self.key_prefix}{key} must be {want}, got {config_value(value)}",
            hint="the checkpoint's config.json is malformed; re-download or fix it",
            data={"key": self.key_prefix + key},
        )

    def _int(self, key: str, lo: int, hi: int) -> int:
        """A required integer key in [lo, hi]."""
        value = self._opt_int(key, lo, hi)
        if value is None:
            raise ModelError(
                f"{self.source}: missing {self.key_prefix}{key}; cannot read the model geometry",
                hint="the checkpoint's config.json is incomplete",
                data={"key": self.key_prefix + key},
            )
        return value

    def _opt_int(self, key: str, lo: int, hi: int) -> int | None:
        """An optional integer key in [lo, hi] (None when absent or null)."""
        value = self.text_config.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self._bad(key, f"an integer from {lo} to {hi}", value)
        return value

    def _bool(self, key: str) -> bool:
        value = self.text_config.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def _check_config(self) -> None:
        """Validate every config.json key the geometry reads (one ModelError naming the file and the key)."""
        size = self.text_config.get("intermediate_size")
        if isinstance(size, list):
            if len(size) != self.num_layers:
                raise self._bad(
                    "intermediate_size",
                    f"one width per layer ({self.num_layers} entries, num_hidden_layers), not {len(size)} entries",
                    size,
                )
            for width in size:
                if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= MAX_WIDTH:
                    raise self._bad("intermediate_size", f"a list of integers from 1 to {MAX_WIDTH}", width)
        else:
            self._int("intermediate_size", 1, MAX_WIDTH)

    # geometry -------------------------------------------------------------------------------------------
    def _text_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return config

    def layer_info(self, layer: int) -> LayerInfo:
        size = self.text_config["intermediate_size"]
        if isinstance(size, list):
            size = size[layer]
        return LayerInfo(intermediate_size=int(size))

    @property
    def is_moe(self) -> bool:
        return any(self.layer_info(i).is_moe for i in range(self.num_layers))

    def total_neurons(self) -> int:
        return sum(self.layer_info(i).intermediate_size for i in range(self.num_layers))

    # naming ---------------------------------------------------------------------------------------------
    def pick_prefix(self, tensor_names: Iterable[str]) -> str:
        names = set(tensor_names)
        for prefix in self.prefixes:
            if any(n.startswith(f"{prefix}.layers.") for n in names):
                self.prefix = prefix
                return prefix
        return self.prefix

    def mlp_tensor(self, layer: int, proj: str) -> str:
        return f"{self.prefix}.layers.{layer}.mlp.{proj}.weight"

    def targets(self, edit: Any, tensor_names: set[str]) -> list[TensorTarget]:
        """Tensor slices an edit touches (one per tensor)."""
        self.pick_prefix(tensor_names)
        if edit.kind == "expert":
            return self.expert_targets(edit, tensor_names)
        if edit.tensor == "up_proj":
            target = TensorTarget(self.mlp_tensor(edit.layer, "up_proj"), 0, edit.index)  # [I, H]: row n
        else:
            target = TensorTarget(self.mlp_tensor(edit.layer, "down_proj"), 1, edit.index)  # [H, I]: column n
        self._require(target.tensor, tensor_names, edit)
        return [target]

    def expert_targets(self, edit: Any, tensor_names: set[str]) -> list[TensorTarget]:
        raise RecipeError(
            f"{edit.where}: layer {edit.layer} has no experts: {self.architecture} models are dense",
            hint="use a neuron edit",
        )

    @staticmethod
    def _require(name: str, tensor_names: set[str], edit: Any) -> None:
        if name not in tensor_names:
            raise RecipeError(
                f"{edit.where}: tensor {name} is not in the checkpoint",
                hint="check the recipe's model/architecture; `patchkit validate --model` lists what exists",
            )

    def classify_tensor(self, name: str) -> TensorRole | None:
        match = _ROLE_RE.match(name)
        if not match or match.group("prefix").rstrip(".") not in self.prefixes:
            return None
        return TensorRole(int(match.group("layer")), match.group("role"))

    # validation -----------------------------------------------------------------------------------------
    def validate(self, edits: list[Any], headers: dict[str, Any] | None = None) -> None:
        """Range, layer-kind, tensor and dtype checks; RecipeError naming the edit and the fix."""
        last = self.num_layers - 1
        tensors: dict[str, Any] = {}
        for header in (headers or {}).values():
            tensors.update(header.tensors)
        quant = self.quantization()
        if quant and not tensors:
            raise self._quantized_error(quant)
        for edit in edits:
            where = edit.where or "recipe"
            if not 0 <= edit.layer <= last:
                raise RecipeError(
                    f"{where}: layer {edit.layer} is out of range: this model has {self.num_layers} layers (0–{last})"
                )
            info = self.layer_info(edit.layer)
            if edit.kind == "neuron":
                if edit.index >= info.intermediate_size:
                    raise RecipeError(
                        f"{where}: neuron {edit.index} is out of range for layer {edit.layer}: its MLP has "
                        f"{info.intermediate_size} neurons (0–{info.intermediate_size - 1})"
                    )
            else:
                if not info.is_moe:
                    raise RecipeError(
                        f"{where}: layer {edit.layer} is dense: it has no experts to suppress",
                        hint="use a neuron edit, or pick an MoE layer",
                    )
                if edit.index >= info.num_experts:
                    raise RecipeError(
                        f"{where}: expert {edit.index} is out of range for layer {edit.layer}: it has "
                        f"{info.num_experts} experts (0–{info.num_experts - 1})"
                    )
            if tensors:
                try:
                    targets = self.targets(edit, set(tensors))
                except RecipeError:
                    if quant:  # e.g. GPTQ stores `qweight` instead of `weight`: say why the tensor is missing
                        raise self._quantized_error(quant) from None
                    raise
                for target in targets:
                    self._check_tensor(where, target, tensors[target.tensor])
                    if edit.op == "scale":
                        problem = scale_factor_problem(edit.factor, tensors[target.tensor].dtype)
                        if problem:
                            raise RecipeError(
                                f"{where}: {target.tensor} is {tensors[target.tensor].dtype}: {problem}",
                                data={"tensor": target.tensor, "factor": edit.factor},
                            )

    def quantization(self) -> str | None:
        """The quantization method config.json declares (None for plain BF16/F16/F32 checkpoints)."""
        for cfg in (self.config, self.text_config):
            quant = cfg.get("quantization_config")
            if quant:
                return shown(str(quant.get("quant_method") or "unknown"), 40) if isinstance(quant, dict) else "unknown"
        return None

    @staticmethod
    def _quantized_error(method: str) -> RecipeError:
        return RecipeError(
            f"config.json: the model is quantized (quant_method: {method}); patchkit edits only BF16, F16 and F32 weights",
            hint="apply the recipe to the unquantized checkpoint, then quantize",
        )

    @staticmethod
    def _check_tensor(where: str, target: TensorTarget, info: Any) -> None:
        if info.dtype not in EDITABLE_DTYPES:
            raise RecipeError(
                f"{where}: tensor {target.tensor} is stored as {info.dtype}; patchkit edits only BF16, F16 and F32",
                hint="apply the recipe to the unquantized checkpoint, then quantize",
            )
        shape = tuple(info.shape)
        if target.axis >= len(shape) or target.index >= shape[target.axis]:
            raise RecipeError(
                f"{where}: tensor {target.tensor} has shape {list(shape)}: index {target.index} on axis {target.axis} "
                "does not exist (config.json and the weights disagree)"
            )

"""What every architecture adapter provides: geometry per layer and edit -> tensor-slice targets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from patchkit.errors import RecipeError

EDITABLE_DTYPES = ("BF16", "F16", "F32")


class TensorTarget(NamedTuple):
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

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.text_config = self._text_config(config)
        self.num_layers = int(self.text_config["num_hidden_layers"])
        self.prefix = self.prefixes[0]

    # geometry -------------------------------------------------------------------------------------------
    @staticmethod
    def _text_config(config: dict[str, Any]) -> dict[str, Any]:
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
        raise RecipeError(f"{edit.where}: layer {edit.layer} has no experts: {self.architecture} models are dense",
                          hint="use a neuron edit")

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
                    raise RecipeError(f"{where}: layer {edit.layer} is dense: it has no experts to suppress",
                                      hint="use a neuron edit, or pick an MoE layer")
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

    def quantization(self) -> str | None:
        """The quantization method config.json declares (None for plain BF16/F16/F32 checkpoints)."""
        for cfg in (self.config, self.text_config):
            quant = cfg.get("quantization_config")
            if quant:
                return str(quant.get("quant_method") or "unknown") if isinstance(quant, dict) else "unknown"
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

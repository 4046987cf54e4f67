"""Minimal stand-ins for patchkit.recipe / patchkit.model / patchkit.adapters (llama only).

The byte-side tests (apply, verify, crash safety) run against the real modules whenever they import; these
stand-ins only fill in while a module is missing, following the contracts in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace


def _real(module: str, attr: str) -> bool:
    try:
        return hasattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 - a half-written module counts as missing
        return False


def real_modules_present() -> bool:
    return _real("patchkit.recipe", "load_recipe") and _real("patchkit.model", "resolve_model") and _real(
        "patchkit.adapters", "get_adapter"
    )


class _Recipe(SimpleNamespace):
    def expanded_edits(self):
        out = []
        for e in self.edits:
            kind = "neuron" if "neuron" in e else "expert"
            idx = e[kind] if isinstance(e[kind], list) else [e[kind]]
            layers = e["layer"] if isinstance(e["layer"], list) else [e["layer"]]
            factor = {"invert": -1.0, "zero": 0.0, "suppress": 0.0}.get(e["op"], e.get("factor"))
            for layer in layers:
                for i in idx:
                    out.append(SimpleNamespace(layer=layer, kind=kind, index=i, op=e["op"], factor=float(factor),
                                               tensor=e.get("tensor", "down_proj")))
        return out

    def model_dump(self, mode="json", exclude_none=True):
        return {"patchkit": 1, "name": self.name, "model": vars(self.model), "edits": self.edits}


def load_recipe(path):
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(Path(path).read_text())
    return _Recipe(name=doc["name"], model=SimpleNamespace(**doc["model"]), edits=doc["edits"], path=str(path))


class _ModelRef(SimpleNamespace):
    def weight_files(self):
        index = self.local_dir / "model.safetensors.index.json"
        if index.exists():
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return ["model.safetensors"]

    def headers(self):
        from patchkit.safetensors_io import read_header

        return {f: read_header(self.local_dir / f) for f in self.weight_files()}


def resolve_model(ref, *, revision=None):
    d = Path(ref)
    return _ModelRef(ref=str(ref), repo_id=None, revision=None, local_dir=d, is_remote=False,
                     config=json.loads((d / "config.json").read_text()))


def ensure_local(ref):
    return ref.local_dir


class _Llama:
    architecture = "llama"

    def validate(self, edits, headers):
        pass

    def targets(self, edit, names):
        axis = 1 if edit.tensor == "down_proj" else 0
        prefix = "model.language_model" if any(n.startswith("model.language_model.") for n in names) else "model"
        return [SimpleNamespace(tensor=f"{prefix}.layers.{edit.layer}.mlp.{edit.tensor}.weight", axis=axis, index=edit.index)]


def get_adapter(config):
    return _Llama()


def install(monkeypatch=None) -> bool:
    """Install the stand-ins for whichever real module is missing; returns True if any was installed."""
    mods = {
        "patchkit.recipe": {"load_recipe": load_recipe},
        "patchkit.model": {"resolve_model": resolve_model, "ensure_local": ensure_local},
        "patchkit.adapters": {"get_adapter": get_adapter},
    }
    mods = {name: attrs for name, attrs in mods.items() if not all(_real(name, a) for a in attrs)}
    for name, attrs in mods.items():
        mod = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v)
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, mod)
        else:
            sys.modules[name] = mod
    return bool(mods)

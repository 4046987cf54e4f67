"""What a user gets from `pip install patchkit-llm`: the wheel's contents, and the wheel installed outside the checkout.

The wheel check builds the sdist and, from it, the wheel (`python -m build --no-isolation`, from a copy of the
source so the checkout gets no build artefacts), installs the wheel into a fresh venv in a temporary directory,
and runs the shipped-recipe commands, the README's offline tiny example and `patchkit demo --help` there, from a
directory that is not the checkout. Only the heavy third-party dependencies (torch, transformers, ...) are borrowed
from the running venv, through a `.pth` line (a path listed in a .pth file is not a site dir, so the checkout's
editable-install hook is not loaded): every patchkit file comes from the wheel, which the test asserts. `make
wheel-check` runs just this file; `make test` runs it with the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "patchkit-llm"
SHIPPED = {"26b-a4b", "31b", "e2b", "e4b", "smollm2-135m"}

README_FIX = """\
patchkit: 1
name: tiny-fix
source: {kind: manual, reference: README example}
edits:
  - {layer: 3, neuron: 90, op: invert}        # layer 3 is KV-shared: its MLP is 96 wide
  - {layer: 1, neuron: [2, 5], op: scale, factor: 0.5}
"""


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ------------------------------------------------------------------------------------------------ configuration


def test_distribution_name_and_command():
    project = _pyproject()["project"]
    assert project["name"] == DIST  # `patchkit` on PyPI is an unrelated project
    assert project["scripts"] == {"patchkit": "patchkit.cli:main"}
    assert "torch>=2.4" in project["dependencies"]


def test_every_package_is_listed():
    """The package list is explicit (see pyproject.toml): a new subpackage must be added to it."""
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in [ROOT / "patchkit", *(ROOT / "patchkit").rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(f.is_file() and f.suffix != ".pyc" for f in d.iterdir())
    }
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == {"patchkit._recipes"}
    assert setuptools["package-dir"] == {"patchkit._recipes": "recipes"}


def test_shipped_recipes_found_in_the_checkout():
    from patchkit.recipe.packaged import recipes_dir, shipped_names

    assert recipes_dir() == ROOT / "recipes"  # editable install: the top-level files themselves
    assert set(shipped_names()) == SHIPPED


def test_probe_and_task_data_load_from_the_package():
    from patchkit.checks.probes import load_suite, packaged_suites
    from patchkit.checks.tasks import load_tasks

    assert {"controls", "enumeration", "smoke"} <= set(packaged_suites())
    assert load_suite("smoke").probes and load_tasks().items


def test_tiny_model_command(tmp_path):
    from click.testing import CliRunner

    from patchkit.cli import main

    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["tiny-model", str(tmp_path / "empty"), "--kind", "gemma4-moe", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "gemma4-moe" and info["layers"] == 4 and info["hidden"] == 64
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(info["files"])
    config = json.loads((tmp_path / "empty" / "config.json").read_text())
    assert config["num_experts"] == 6
    before = sorted(p.name for p in tmp_path.iterdir())
    again = runner.invoke(main, ["tiny-model", str(tmp_path / "empty")])
    assert again.exit_code == 2 and "already exists; refusing to replace it" in again.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary directory left behind
    bad = runner.invoke(main, ["tiny-model", str(tmp_path / "x"), "--kind", "gpt2"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()


def test_tiny_model_is_reproducible(tmp_path):
    from patchkit.testing.tiny import write_tiny_model

    write_tiny_model(tmp_path / "a", "llama", dtype="bfloat16", seed=3)
    write_tiny_model(tmp_path / "b", "llama", dtype="bfloat16", seed=3)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------------ the wheel


def _copy_source(dest: Path) -> Path:
    """What an sdist is built from: the project files, without build artefacts or the venv."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE", "MANIFEST.in", "setup.py", "setup.cfg"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("patchkit", "recipes"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("build", reason="needs the `build` package (dev extra)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    dist = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "tmp": tmp}


def test_wheel_contents(built):
    wheel = built["wheel"]
    assert wheel.name.startswith("patchkit_llm-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta_name).decode()
        entry_points = zf.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
        for recipe in (ROOT / "recipes").glob("*.yaml"):  # byte-identical copies of the canonical files
            assert zf.read(f"patchkit/_recipes/{recipe.name}") == recipe.read_bytes()
    assert "Name: patchkit-llm" in metadata.splitlines()
    _borrowed_dependencies_satisfy(metadata)
    assert "patchkit = patchkit.cli:main" in entry_points
    expected = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "patchkit").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and not p.name.startswith(".")
    }
    assert expected - names == set(), "files of the source tree missing from the wheel"
    assert not [n for n in names if n.startswith(("tests/", "recipes/", "benchmarks/"))]
    assert {f"patchkit/_recipes/{n}.yaml" for n in SHIPPED} <= names


def _borrowed_dependencies_satisfy(metadata: str) -> None:
    """The installed-wheel tests borrow this venv's packages: they must meet the wheel's own requirements."""
    import importlib.metadata

    from packaging.requirements import Requirement

    reqs = [Requirement(line.split(":", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    assert {r.name for r in core} >= {"torch", "transformers", "safetensors", "click"}
    for req in core:
        version = importlib.metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"{req} not met by {version}"


def test_sdist_carries_the_recipes(built):
    import tarfile

    with tarfile.open(built["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {f"recipes/{n}.yaml" for n in SHIPPED} <= names
    assert "patchkit/checks/probes/smoke.yaml" in names


@pytest.fixture(scope="module")
def installed(built) -> dict[str, Path]:
    """The wheel installed into a fresh venv outside the checkout (dependencies borrowed, see the module doc)."""
    tmp = built["tmp"]
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    here = sysconfig.get_paths()["purelib"]
    (purelib / "_borrowed_dependencies.pth").write_text(here + "\n")
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--force-reinstall",
            str(built["wheel"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp / "work"
    work.mkdir()
    return {"venv": venv, "bin": venv / "bin", "purelib": purelib, "work": work}


def _run(installed: dict[str, Path], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{installed['bin']}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PATCHKIT_DEBUG="1",
    )
    exe = str(installed["bin"] / args[0])  # the venv's own `patchkit` script and `python`
    proc = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=300, cwd=installed["work"], env=env)
    if ok:
        assert proc.returncode == 0, f"{args}: rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_installed_patchkit_is_the_wheel(installed):
    code = (
        "import json, importlib.metadata as m, patchkit, patchkit.checks.probes as p;"
        "from patchkit.recipe.packaged import is_installed_copy, recipes_dir;"
        "from patchkit.workflows.demo import default_recipe_path;"
        "print(json.dumps({'file': patchkit.__file__, 'version': m.version('patchkit-llm'),"
        "'recipes': str(recipes_dir()), 'installed': is_installed_copy('e2b'), 'demo': str(default_recipe_path()),"
        "'suites': p.packaged_suites(),"
        "'smoke': len(p.load_suite('smoke').probes)}))"
    )
    info = json.loads(_run(installed, "python", "-c", code).stdout)
    purelib = str(installed["purelib"])
    assert info["file"].startswith(purelib), info  # not the checkout's patchkit/
    from patchkit._version import __version__

    assert info["version"] == __version__
    assert info["recipes"] == str(installed["purelib"] / "patchkit" / "_recipes") and info["installed"]
    assert info["demo"] == str(installed["purelib"] / "patchkit" / "_recipes" / "smollm2-135m.yaml")
    assert {"controls", "enumeration", "smoke"} <= set(info["suites"]) and info["smoke"] > 0


def test_shipped_recipes_by_name_outside_the_checkout(installed):
    listing = _run(installed, "patchkit", "recipes", "list").stdout.splitlines()
    assert {line.split()[0] for line in listing} == SHIPPED
    assert any(line.split()[:2] == ["e2b", "google/gemma-4-E2B-it"] and "unresolved" in line for line in listing)
    rows = json.loads(_run(installed, "patchkit", "recipes", "list", "--json").stdout)["recipes"]
    assert all(r["path"].startswith(str(installed["purelib"])) and r["error"] is None for r in rows)
    report = json.loads(_run(installed, "patchkit", "validate", "e2b", "--json").stdout)
    assert report["name"] == "gemma-4-E2B-it-loopfix"
    missing = _run(installed, "patchkit", "validate", "recipes/e2b.yaml", ok=False)
    assert missing.returncode == 2 and "pass its name `e2b`" in missing.stderr


def test_readme_tiny_example_outside_the_checkout(installed):
    """The README's "offline example you can run right now", command for command, in the installed wheel."""
    _run(installed, "patchkit", "tiny-model", "tiny")
    _run(installed, "patchkit", "new", "--model", "tiny", "-o", "starter.yaml")
    (installed["work"] / "fix.yaml").write_text(README_FIX)
    _run(installed, "patchkit", "validate", "fix.yaml", "--model", "tiny")
    _run(installed, "patchkit", "apply", "fix.yaml", "--model", "tiny", "-o", "tiny-fixed")
    diff = json.loads(_run(installed, "patchkit", "diff", "tiny", "tiny-fixed", "--json").stdout)
    neurons = sorted((t["layer"], s["index"], s["classification"]) for t in diff["changed"] for s in t["slices"])
    assert neurons == [(1, 2, "scaled"), (1, 5, "scaled"), (3, 90, "inverted")]  # 3 neurons: 1 inverted, 2 x0.5
    _run(installed, "patchkit", "verify", "fix.yaml", "--model", "tiny", "--patched", "tiny-fixed")
    assert (installed["work"] / "starter.yaml").is_file()


def test_demo_help_and_module_entry_outside_the_checkout(installed):
    assert "--recipe" in _run(installed, "patchkit", "demo", "--help").stdout
    _run(installed, "python", "-m", "patchkit.testing.tiny", "tiny-llama", "--kind", "llama")
    config = json.loads((installed["work"] / "tiny-llama" / "config.json").read_text())
    assert config["model_type"] == "llama"

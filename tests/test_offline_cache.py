"""Working from the HF cache: what `pull` and `apply` from a Hub ref leave behind is found by `org/name` with
HF_HUB_OFFLINE=1, and a Hub that cannot be reached fails at once, in one line that names HF_HUB_OFFLINE and the
cache (and, for a read, says nothing about uploads)."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner
from hubserver.checkpoints import EDIT_LAYER, EDIT_NEURON, SHARDS, make_base

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "alice/tiny-base"
RECIPE = f"""patchkit: 1
name: offline-fix
model: {{repo: {REPO}, architecture: llama}}
source: {{kind: manual, reference: unit test}}
edits:
  - {{layer: {EDIT_LAYER}, neuron: {EDIT_NEURON}, op: invert}}
"""


def run_cli(*args: str):
    from patchkit.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def uploaded(hub, tmp_path):
    """(local base, commit) of a tiny llama uploaded to REPO, and the recipe next to it."""
    from huggingface_hub import HfApi

    base = make_base(tmp_path / "base")
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(REPO)
    commit = api.upload_folder(repo_id=REPO, folder_path=str(base)).oid
    (tmp_path / "fix.yaml").write_text(RECIPE)
    hub.server.reset()
    return base, commit


def ref_file(hub, name: str = "main"):
    return hub.hf_home / "hub" / ("models--" + REPO.replace("/", "--")) / "refs" / name


def go_offline(monkeypatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def dead_endpoint(monkeypatch) -> str:
    """Point the client at a port nobody listens on; returns its URL."""
    import huggingface_hub.constants as constants

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    return dead


def count_connections(monkeypatch, fail: Exception | None = None) -> list:
    """Every TCP connection the client opens, appended to the returned list (refused with `fail` when given)."""
    attempts: list = []
    real = socket.create_connection

    def counting(address, *args, **kwargs):
        attempts.append(address)
        if fail is not None:
            raise fail
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    return attempts


def test_a_pulled_repo_is_found_by_name_offline(hub, uploaded, tmp_path, monkeypatch):
    base, commit = uploaded
    pulled = run_cli("pull", REPO, "--json")
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.stdout)["commit"] == commit
    assert ref_file(hub).read_text() == commit  # what snapshot_download writes for a branch

    go_offline(monkeypatch)
    hub.server.reset()
    out = tmp_path / "out"
    applied = run_cli("apply", str(tmp_path / "fix.yaml"), "--model", REPO, "-o", str(out))
    assert applied.exit_code == 0, applied.output
    assert json.loads((out / "patchkit.json").read_text())["base"]["revision"] == commit
    assert (out / SHARDS[0]).read_bytes() == (base / SHARDS[0]).read_bytes()
    assert hub.log == []  # not one request: the cache answered


def test_a_pull_into_a_local_dir_records_no_ref_in_the_cache(hub, uploaded, tmp_path):
    pulled = run_cli("pull", REPO, "--local-dir", str(tmp_path / "copy"))
    assert pulled.exit_code == 0, pulled.output
    assert not ref_file(hub).exists()


def test_after_apply_from_a_hub_ref_the_model_resolves_offline(hub, uploaded, tmp_path, monkeypatch):
    from patchkit.model.refs import resolve_model

    _, commit = uploaded
    first = run_cli("apply", str(tmp_path / "fix.yaml"), "--model", REPO, "-o", str(tmp_path / "online"))
    assert first.exit_code == 0, first.output
    assert ref_file(hub).read_text() == commit

    go_offline(monkeypatch)
    hub.server.reset()
    ref = resolve_model(REPO)
    assert (ref.is_remote, ref.revision, ref.local_dir.parent.name) == (False, commit, "snapshots")
    again = run_cli("apply", str(tmp_path / "fix.yaml"), "--model", REPO, "-o", str(tmp_path / "offline"))
    assert again.exit_code == 0, again.output
    for shard in SHARDS:
        assert (tmp_path / "offline" / shard).read_bytes() == (tmp_path / "online" / shard).read_bytes()
    assert hub.log == []


def test_online_a_branch_is_asked_of_the_hub_not_read_from_a_stale_ref(hub, uploaded, tmp_path):
    """A cached refs/main must not hide a newer main while the Hub can be asked (offline, it is all there is)."""
    from huggingface_hub import HfApi

    from patchkit.model.refs import resolve_model

    _, first = uploaded
    assert run_cli("pull", REPO).exit_code == 0
    newer = HfApi(endpoint=hub.url, token=hub.token).upload_file(
        path_or_fileobj=b"# a newer card\n", path_in_repo="README.md", repo_id=REPO
    )
    ref = resolve_model(REPO)
    assert ref.revision == newer.oid != first
    assert ref_file(hub).read_text() == newer.oid


def test_offline_and_not_cached_names_the_cache_and_pull(hub, uploaded, tmp_path, monkeypatch):
    go_offline(monkeypatch)
    result = run_cli("apply", str(tmp_path / "fix.yaml"), "--model", REPO, "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    [line] = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert f"{REPO}: not in the local Hugging Face cache and the Hub is offline (HF_HUB_OFFLINE)" in line
    assert str(hub.hf_home / "hub") in line and f"patchkit pull {REPO}" in line
    assert hub.log == [] and not (tmp_path / "out").exists()


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


@pytest.mark.parametrize("command", ["pull", "apply"])
def test_connection_refused_fails_after_one_attempt_naming_offline_mode_and_the_cache(
    hub, uploaded, tmp_path, monkeypatch, command
):
    dead = dead_endpoint(monkeypatch)
    attempts = count_connections(monkeypatch)
    if command == "pull":
        result = run_cli("pull", REPO)
    else:
        result = run_cli("apply", str(tmp_path / "fix.yaml"), "--model", REPO, "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert f"cannot reach {dead} (connection refused) while resolving {REPO}" in line
    assert "HF_HUB_OFFLINE=1" in line and str(hub.hf_home / "hub") in line
    assert "upload" not in line and "resum" not in line
    assert len(attempts) == 1


def test_a_name_that_does_not_resolve_is_not_retried(hub, uploaded, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")
    monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")
    attempts = count_connections(monkeypatch, fail=socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    result = run_cli("pull", REPO)
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert f"cannot reach http://hub.invalid (the host name did not resolve) while resolving {REPO}" in line
    assert "HF_HUB_OFFLINE=1" in line and "upload" not in line
    assert len(attempts) == 1


@pytest.mark.parametrize(
    "fault, expected",
    [("503", "the Hub answered 503 while resolving"), ("drop", "lost the connection to http://127.0.0.1:")],
)
def test_a_read_error_says_nothing_about_uploads(hub, uploaded, tmp_path, fault, expected):
    hub.inject(fault, method="GET", path=rf"^/api/models/{REPO}", times=99)
    for args in (["pull", REPO], ["apply", str(tmp_path / "fix.yaml"), "--model", REPO, "-o", str(tmp_path / "o")]):
        result = run_cli(*args)
        assert result.exit_code == 2
        line = _one_error_line(result.output)
        assert expected in line, line
        assert "upload" not in line and "resum" not in line and "attempts" not in line
    assert len(hub.requests("GET", rf"^/api/models/{REPO}")) == 2  # one per command: no retry layer on top

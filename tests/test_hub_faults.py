"""Retry, resume and error paths, proven with the server's fault injection and request log."""

from __future__ import annotations

import hashlib

import pytest
from hubserver.checkpoints import SHARDS, make_base, make_patched

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def patched(tmp_path):
    return make_patched(make_base(tmp_path / "base"), tmp_path / "patched")


@pytest.fixture
def fast():
    from patchkit.publish.hub import RetryPolicy

    return RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lfs_upload_500_is_retried(hub, patched, fast):
    from patchkit.publish import hub as pkhub

    hub.inject("500", method="PUT", path=r"^/lfs-upload/", nth=2)  # the second upload fails once
    result = pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert result.check.ok
    puts = hub.requests("PUT", r"^/lfs-upload/")
    assert [r.status for r in puts].count(500) == 1 and puts[0].status == 200
    failed = next(r for r in puts if r.status == 500)
    assert any(r.path == failed.path and r.status == 200 for r in puts)  # the same object, retried
    assert hub.lfs_objects() == {sha(patched / s) for s in SHARDS}


def test_connection_dropped_mid_upload_is_retried(hub, patched, fast):
    from patchkit.publish import hub as pkhub

    hub.inject("drop", method="PUT", path=r"^/lfs-upload/")
    result = pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert result.check.ok
    puts = hub.requests("PUT", r"^/lfs-upload/")
    dropped = [r for r in puts if r.fault == "drop"]
    assert len(dropped) == 1 and dropped[0].body_bytes > 0  # the server had started receiving the file
    assert any(r.path == dropped[0].path and r.status == 200 for r in puts)


@pytest.mark.parametrize("action", ["500", "drop"])
def test_commit_failure_is_retried_once_and_commits_once(hub, patched, fast, action, caplog):
    from patchkit.publish import hub as pkhub

    hub.inject(action, method="POST", path=r"/commit/main$")
    result = pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert result.check.ok
    commits = hub.requests("POST", r"/commit/main$")
    assert len(commits) == 2 and commits[0].fault == action and commits[1].status == 200
    why = "HTTP 500" if action == "500" else "connection lost"
    assert f"{why} while uploading to alice/tiny-fix; retrying (attempt 2 of 3)" in caplog.text
    # the retry re-used the uploaded LFS objects: each shard was PUT exactly once
    puts = [r.path for r in hub.requests("PUT", r"^/lfs-upload/")]
    assert sorted(puts) == sorted(f"/lfs-upload/{sha(patched / s)}" for s in SHARDS)


def test_persistent_5xx_gives_up_with_a_clear_message(hub, patched, fast):
    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    hub.inject("503", method="GET", path=r"/api/whoami-v2", times=99)
    with pytest.raises(HubError) as err:
        pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert "answered 503 after 3 attempts" in str(err.value) and "try again later" in str(err.value)
    assert len(hub.requests("GET", r"/api/whoami-v2")) == 3
    assert hub.requests("POST") == []  # nothing was created or uploaded


def test_interrupted_push_resumes_with_only_the_missing_objects(hub, patched, fast):
    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    missing = sha(patched / SHARDS[1])
    hub.inject("403", method="PUT", path=rf"^/lfs-upload/{missing}$", times=99)  # e.g. an expired upload URL
    with pytest.raises(HubError):
        pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert hub.lfs_objects() == {sha(patched / SHARDS[0])}
    assert hub.requests("POST", r"/commit/") == []  # nothing half-published: main has no commit from us

    hub.server.reset()
    result = pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert result.check.ok
    assert [r.path for r in hub.requests("PUT")] == [f"/lfs-upload/{missing}"]

    hub.server.reset()  # a third run finds everything in place: no uploads, no new commit
    again = pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert hub.requests("PUT") == [] and hub.requests("POST", r"/commit/") == []
    assert again.commit_oid == result.commit_oid and again.check.ok


def test_wrong_token_is_401_on_every_call(hub):
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    HfApi(endpoint=hub.url, token=hub.token).create_repo("alice/tiny-fix")
    api = HfApi(endpoint=hub.url, token="hf_wrong")
    calls = [
        lambda: api.whoami(),
        lambda: api.model_info("alice/tiny-fix"),
        lambda: api.list_repo_refs("alice/tiny-fix"),
        lambda: api.create_commit("alice/tiny-fix", [CommitOperationAdd("a.txt", b"a")], commit_message="x"),
    ]
    for call in calls:
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == 401
    assert {r.status for r in hub.requests() if r.user is None and r.path != "/api/agent-harnesses"} == {401}


def test_download_cut_mid_file_resumes_with_a_range_request(hub, patched, fast, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from patchkit.publish import hub as pkhub

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # so the client keeps the bytes it got (10 MB default)
    pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    hub.server.reset()
    shard = sha(patched / SHARDS[1])
    hub.inject("drop", method="GET", path=rf"^/cdn/lfs/{shard}$")
    result = pkhub.pull("alice/tiny-fix", local_dir=tmp_path / "pulled", retry=fast)
    assert result.provenance_ok is True
    assert (tmp_path / "pulled" / SHARDS[1]).read_bytes() == (patched / SHARDS[1]).read_bytes()
    gets = hub.requests("GET", rf"^/cdn/lfs/{shard}$")
    assert [g.fault for g in gets] == ["drop", None]
    half = (patched / SHARDS[1]).stat().st_size // 2
    start = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= half and gets[1].status == 206


def test_unreachable_hub_is_retried_then_reported(hub, patched, fast):
    import socket

    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(HubError) as err:
        pkhub.push(patched, "alice/tiny-fix", endpoint=dead, retry=fast, progress=False)
    assert f"lost the connection to {dead} after 3 attempts" in str(err.value)


def test_offline_mode_is_reported_not_retried(hub, patched, fast, monkeypatch):
    import huggingface_hub.constants as constants

    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"offline mode is on \(HF_HUB_OFFLINE\)"):
        pkhub.push(patched, "alice/tiny-fix", retry=fast, progress=False)
    assert hub.log == []

"""Retry, resume and error paths, proven with the server's fault injection and request log.

Retries are huggingface_hub's own (per request, on the calls safe to repeat); patchkit adds none, so each test
also pins the number of requests: a fault is retried as often as the client retries it, never more.
"""

from __future__ import annotations

import hashlib

import pytest
from hubserver.checkpoints import SHARDS, make_base, make_patched

pytest_plugins = ["hubserver.plugin"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def patched(tmp_path):
    return make_patched(make_base(tmp_path / "base"), tmp_path / "patched")


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lfs_upload_500_is_retried_by_the_client_once(hub, patched):
    from patchkit.publish import hub as pkhub

    hub.inject("500", method="PUT", path=r"^/lfs-upload/", nth=2)  # the second upload fails once
    result = pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert result.check.ok
    puts = hub.requests("PUT", r"^/lfs-upload/")
    assert [r.status for r in puts].count(500) == 1 and puts[0].status == 200
    failed = next(r for r in puts if r.status == 500)
    assert [r.status for r in puts if r.path == failed.path] == [500, 200]  # the same object, retried once
    assert len(puts) == len(SHARDS) + 1  # no second layer of retries around the whole commit
    assert hub.lfs_objects() == {sha(patched / s) for s in SHARDS}


def test_connection_dropped_mid_upload_is_retried(hub, patched):
    from patchkit.publish import hub as pkhub

    hub.inject("drop", method="PUT", path=r"^/lfs-upload/")
    result = pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert result.check.ok
    puts = hub.requests("PUT", r"^/lfs-upload/")
    dropped = [r for r in puts if r.fault == "drop"]
    assert len(dropped) == 1 and dropped[0].body_bytes > 0  # the server had started receiving the file
    assert any(r.path == dropped[0].path and r.status == 200 for r in puts)


@pytest.mark.parametrize(
    "action, expected",
    [
        ("500", "the Hub answered 500 while uploading to alice/tiny-fix (try again later; re-running uploads only"),
        ("drop", "lost the connection to http://127.0.0.1:"),
    ],
)
def test_a_failed_commit_is_sent_once_and_a_rerun_uploads_nothing_again(hub, patched, action, expected):
    """huggingface_hub does not repeat a commit POST (a lost answer could mean a commit or PR made twice); neither
    does patchkit. The push stops in one line, and the re-run commits without uploading any LFS object again."""
    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    hub.inject(action, method="POST", path=r"/commit/main$")
    with pytest.raises(HubError) as err:
        pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)
    commits = hub.requests("POST", r"/commit/main$")
    assert len(commits) == 1 and commits[0].fault == action
    uploaded = sorted(r.path for r in hub.requests("PUT", r"^/lfs-upload/"))
    assert uploaded == sorted(f"/lfs-upload/{sha(patched / s)}" for s in SHARDS)

    hub.server.reset()
    result = pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert result.check.ok and result.changed
    assert hub.requests("PUT", r"^/lfs-upload/") == []  # every shard was already on the server
    assert [r.status for r in hub.requests("POST", r"/commit/main$")] == [200]


def test_a_5xx_answer_is_one_line_after_one_request(hub, patched):
    """whoami is a plain request in huggingface_hub (no backoff): the 503 is reported at once, not 4 times over."""
    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    hub.inject("503", method="GET", path=r"/api/whoami-v2", times=99)
    with pytest.raises(HubError) as err:
        pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert "the Hub answered 503 while checking the token" in str(err.value) and "try again later" in str(err.value)
    assert "attempts" not in str(err.value)
    assert len(hub.requests("GET", r"/api/whoami-v2")) == 1
    assert hub.requests("POST") == []  # nothing was created or uploaded


def test_interrupted_push_resumes_with_only_the_missing_objects(hub, patched):
    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    missing = sha(patched / SHARDS[1])
    hub.inject("403", method="PUT", path=rf"^/lfs-upload/{missing}$", times=99)  # e.g. an expired upload URL
    with pytest.raises(HubError):
        pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert hub.lfs_objects() == {sha(patched / SHARDS[0])}
    assert hub.requests("POST", r"/commit/") == []  # nothing half-published: main has no commit from us

    hub.server.reset()
    result = pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert result.check.ok
    assert [r.path for r in hub.requests("PUT")] == [f"/lfs-upload/{missing}"]

    hub.server.reset()  # a third run finds everything in place: no uploads, no new commit
    again = pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert hub.requests("PUT") == [] and hub.requests("POST", r"/commit/") == []
    assert again.commit_oid == result.commit_oid and again.check.ok and not again.changed


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


def test_download_cut_mid_file_resumes_with_a_range_request(hub, patched, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from patchkit.publish import hub as pkhub

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # so the client keeps the bytes it got (10 MB default)
    pkhub.push(patched, "alice/tiny-fix", progress=False)
    hub.server.reset()
    shard = sha(patched / SHARDS[1])
    hub.inject("drop", method="GET", path=rf"^/cdn/lfs/{shard}$")
    result = pkhub.pull("alice/tiny-fix", local_dir=tmp_path / "pulled")
    assert result.provenance_ok is True
    assert (tmp_path / "pulled" / SHARDS[1]).read_bytes() == (patched / SHARDS[1]).read_bytes()
    gets = hub.requests("GET", rf"^/cdn/lfs/{shard}$")
    assert [g.fault for g in gets] == ["drop", None]
    half = (patched / SHARDS[1]).stat().st_size // 2
    start = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= half and gets[1].status == 206


def test_unreachable_hub_fails_after_one_connection_attempt(hub, patched, monkeypatch):
    import socket

    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    attempts = []
    real = socket.create_connection

    def counting(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    with pytest.raises(HubError) as err:
        pkhub.push(patched, "alice/tiny-fix", endpoint=dead, progress=False)
    message = str(err.value)
    assert message.startswith(f"cannot reach {dead} (connection refused) while checking the token"), message
    assert "attempts" not in message and "HF_HUB_OFFLINE" not in message  # a push cannot be done offline
    assert len(attempts) == 1


def test_offline_mode_is_reported_not_retried(hub, patched, monkeypatch):
    import huggingface_hub.constants as constants

    from patchkit.errors import HubError
    from patchkit.publish import hub as pkhub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match=r"offline mode is on \(HF_HUB_OFFLINE\)"):
        pkhub.push(patched, "alice/tiny-fix", progress=False)
    assert hub.log == []

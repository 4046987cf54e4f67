"""Self-checks of the test Hub server: the protocol rules the client-level tests rely on."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

pytest_plugins = ["hubserver.plugin"]


def _batch(hub, oid: str, size: int) -> dict:
    response = httpx.post(
        f"{hub.url}/alice/repo.git/info/lfs/objects/batch",
        headers={"authorization": f"Bearer {hub.token}"},
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": size}]},
    )
    response.raise_for_status()
    body = response.json()
    assert body["transfer"] == "basic"  # never xet
    return body["objects"][0]


def test_lfs_upload_is_sha256_checked(hub):
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=hub.token).create_repo("alice/repo")
    data = b"weights" * 1000
    oid = hashlib.sha256(data).hexdigest()
    action = _batch(hub, oid, len(data))["actions"]["upload"]["href"]
    bad = httpx.put(action, content=data[:-1] + b"X")
    assert bad.status_code == 400 and oid not in hub.lfs_objects()
    good = httpx.put(action, content=data)
    assert good.status_code == 200 and oid in hub.lfs_objects()
    assert "actions" not in _batch(hub, oid, len(data))  # already there: nothing to upload
    forged = httpx.put(action.replace("sig=", "sig=0"), content=data)
    assert forged.status_code == 403


def test_commit_refuses_a_pointer_to_a_missing_lfs_object(hub):
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=hub.token).create_repo("alice/repo")
    lines = [
        {"key": "header", "value": {"summary": "x", "description": ""}},
        {"key": "lfsFile", "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 3}},
    ]
    response = httpx.post(
        f"{hub.url}/api/models/alice/repo/commit/main",
        headers={"authorization": f"Bearer {hub.token}", "content-type": "application/x-ndjson"},
        content="\n".join(json.dumps(x) for x in lines),
    )
    assert response.status_code == 400 and "missing object" in response.text


def test_private_repos_are_hidden_and_wrong_tokens_rejected(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    HfApi(endpoint=hub.url, token=hub.token).create_repo("alice/secret", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=hub.read_token).model_info("alice/secret")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token="hf_not_a_token").model_info("alice/secret")
    assert err.value.response.status_code == 401
    assert HfApi(endpoint=hub.url, token=hub.token).model_info("alice/secret").private is True

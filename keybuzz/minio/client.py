"""Talking to MinIO from install-01 (or a test): MinIO's own Python SDK (`minio`, pinned in pyproject.toml) for the
S3 side and its admin API (MinioAdmin: server info, users, policies), plain HTTP for the health endpoints.

Every call is bounded (connect 3 s, read `timeout`) and never retried behind the caller's back: a check must see
a failure as a failure. Credentials are passed in, never printed (an error names the endpoint, never a key).

Example::

    client = s3("s3.keybuzz.io:9000", user, password)
    round_trip(client, "keybuzz-check")           # RoundTrip(ok=True, ...): put, get (compared), delete
    health("10.0.0.134", "/minio/health/cluster")  # 200 when the cluster has its write quorum
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import urllib3
from minio import Minio
from minio.credentials import StaticProvider
from minio.error import MinioAdminException, MinioException, S3Error
from minio.minioadmin import MinioAdmin

from keybuzz.minio.settings import S3_PORT, AppsPlan, IamState, bootstrap_actions
from keybuzz.waiting import wait_for

# what a node or a cluster that does not answer raises: "not reachable", never a crash of the caller
UNREACHABLE = (urllib3.exceptions.HTTPError, OSError, MinioException, MinioAdminException, ValueError)
AUTH_REFUSED = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidClientTokenId"}


def _http(timeout: float) -> urllib3.PoolManager:
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=min(3.0, timeout), read=timeout),
                               retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False))


def s3(endpoint: str, access_key: str, secret_key: str, timeout: float = 10.0) -> Minio:
    """An S3 client of `endpoint` ("host:port", plain HTTP on the private network)."""
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=False, region="us-east-1",
                 http_client=_http(timeout))


def admin(endpoint: str, access_key: str, secret_key: str, timeout: float = 10.0) -> MinioAdmin:
    """MinIO's admin API client (root credentials)."""
    return MinioAdmin(endpoint=endpoint, credentials=StaticProvider(access_key, secret_key), secure=False,
                      http_client=_http(timeout))


def health(address: str, path: str, timeout: float = 3.0, port: int = S3_PORT) -> int:
    """HTTP status of MinIO's unauthenticated health endpoint `path` on address:port; 0 when nothing answers.

    /minio/health/live: the node's process runs; /minio/health/cluster: the cluster has its write quorum
    (503 otherwise); /minio/health/cluster/read: its read quorum.
    """
    try:
        with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


@dataclass
class RoundTrip:
    ok: bool
    detail: str
    seconds: float = 0.0


def round_trip(client: Minio, bucket: str, size: int = 64 * 1024, key: str | None = None) -> RoundTrip:
    """Put `size` random bytes in `bucket` (created if missing), get them back (sha256 compared), delete them and
    verify they are gone. Never raises for an S3 or network failure: the RoundTrip says what failed."""
    key = key or f"keybuzz-check/{os.getpid()}-{time.time_ns()}"
    data = os.urandom(size)
    began = time.monotonic()
    step = "bucket"
    try:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        step = "put"
        client.put_object(bucket, key, io.BytesIO(data), len(data))
        step = "get"
        answer = client.get_object(bucket, key)
        try:
            got = answer.read()
        finally:
            answer.close()
            answer.release_conn()
        if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
            return RoundTrip(False, f"get {bucket}/{key}: {len(got)} bytes differ from the {size} put",
                             time.monotonic() - began)
        step = "delete"
        client.remove_object(bucket, key)
        step = "stat after delete"
        try:
            client.stat_object(bucket, key)
            return RoundTrip(False, f"{bucket}/{key} still there after delete", time.monotonic() - began)
        except S3Error as e:
            if e.code not in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                raise
    except UNREACHABLE as e:
        return RoundTrip(False, f"{step} failed: {_why(e)}", time.monotonic() - began)
    return RoundTrip(True, f"put/get/delete {size} bytes", time.monotonic() - began)


def _why(error: Exception) -> str:
    """A failure's name without anything a server echoed back (no key, no signature)."""
    if isinstance(error, S3Error):
        return f"S3 {error.code}"
    return type(error).__name__


def ensure_buckets(client: Minio, buckets) -> list[str]:
    """Create the missing ones; returns those created."""
    created = []
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            created.append(bucket)
    return created


@dataclass(frozen=True)
class ErasureInfo:
    """The erasure-coded backend as MinIO's admin `info` reports it."""

    backend: str
    drives: int
    online: int
    offline: int
    parity: int | None
    sets: list
    healing: int  # drives healing now
    servers: dict  # endpoint -> state


def erasure_info(client: MinioAdmin) -> ErasureInfo:
    """Parse MinIO's `admin info` (madmin InfoMessage)."""
    return parse_info(json.loads(client.info()))


def parse_info(info: dict) -> ErasureInfo:
    """
    >>> e = parse_info({"backend": {"backendType": "Erasure", "onlineDisks": 2, "offlineDisks": 1,
    ...   "standardSCParity": 1, "totalDrivesPerSet": [3]}, "servers": [{"endpoint": "minio-01.keybuzz.io:9000",
    ...   "state": "online", "drives": [{"state": "ok", "healing": True}]}]})
    >>> e.drives, e.online, e.parity, e.healing, e.servers
    (3, 2, 1, 1, {'minio-01.keybuzz.io:9000': 'online'})
    """
    backend = info.get("backend") or {}
    servers = info.get("servers") or []
    drives = [d for s in servers for d in (s.get("drives") or [])]
    online = backend.get("onlineDisks", sum(1 for d in drives if d.get("state") == "ok"))
    offline = backend.get("offlineDisks", sum(1 for d in drives if d.get("state") != "ok"))
    return ErasureInfo(
        backend=str(backend.get("backendType") or backend.get("Type") or "?"),
        drives=int(online) + int(offline),
        online=int(online),
        offline=int(offline),
        parity=backend.get("standardSCParity"),
        sets=list(backend.get("totalDrivesPerSet") or []),
        healing=sum(1 for d in drives if d.get("healing")),
        servers={s.get("endpoint", "?"): s.get("state", "?") for s in servers},
    )


# --- the apps' buckets, users and policies (MinIO's admin API; not exercised here: see the README) -----------

def iam_state(endpoint: str, root: tuple[str, str], apps: AppsPlan, keys: dict[str, str]) -> IamState:
    """Buckets, policies and users the cluster holds, and which app users' secret keys it refuses."""
    client = s3(endpoint, *root)
    adm = admin(endpoint, *root)
    buckets = frozenset(b.name for b in client.list_buckets())
    policies = {name: doc if isinstance(doc, dict) else json.loads(doc)
                for name, doc in json.loads(adm.policy_list() or "{}").items()}
    users = {}
    for access, info in json.loads(adm.user_list() or "{}").items():
        users[access] = {p for p in (info.get("policyName") or "").split(",") if p}
    bad = set()
    for user in apps.users:
        access = keys[user.access_key_var]
        if access in users and not _secret_accepted(endpoint, access, keys[user.secret_key_var]):
            bad.add(access)
    return IamState(buckets, policies, users, frozenset(bad))


def _secret_accepted(endpoint: str, access: str, secret: str) -> bool:
    """Does MinIO accept this key pair? (AccessDenied means yes: the user exists but may not list buckets.)"""
    try:
        s3(endpoint, access, secret).list_buckets()
    except S3Error as e:
        return e.code not in AUTH_REFUSED
    return True


def bootstrap_needed(endpoint: str, root: tuple[str, str], apps: AppsPlan, keys: dict[str, str]) -> list[tuple]:
    """The actions the apps' list still needs; all of them when the cluster does not answer (first install)."""
    try:
        state = iam_state(endpoint, root, apps, keys)
    except UNREACHABLE:
        state = None
    return bootstrap_actions(apps, state, keys)


def apply_bootstrap(endpoint: str, root: tuple[str, str], apps: AppsPlan, keys: dict[str, str],
                    wait_seconds: float = 300) -> list[tuple]:
    """Wait (bounded) until the cluster takes writes, then create what the apps' list lacks; returns the actions
    done (access keys and names only). Idempotent: a second call does nothing."""
    host = endpoint.rsplit(":", 1)[0]
    wait_for(lambda: health(host, "/minio/health/cluster") == 200, wait_seconds, 2,
             what=f"MinIO at {endpoint} taking writes (/minio/health/cluster)")
    actions = bootstrap_actions(apps, iam_state(endpoint, root, apps, keys), keys)
    client, adm = s3(endpoint, *root), admin(endpoint, *root)
    secret_of = {keys[u.access_key_var]: keys[u.secret_key_var] for u in apps.users}
    for action in actions:
        kind = action[0]
        if kind == "make-bucket":
            client.make_bucket(action[1])
        elif kind == "add-policy":
            adm.policy_add(action[1], policy=apps.policies[action[1]])
        elif kind in ("add-user", "set-secret"):  # user_add sets the secret of an existing user too
            adm.user_add(action[1], secret_of[action[1]])
        elif kind == "attach-policy":
            adm.attach_policy([action[2]], user=action[1])
    return actions

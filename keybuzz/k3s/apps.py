"""KeyBuzz's applications on K3s (design §E): apps.yaml -> manifests, the policy they must follow, their
Secrets, and the gate that keeps them off a cluster whose infrastructure is not 100 % green (§G).

    apps, namespace = load_apps()                 # InputError (apps.yaml:<line>: ...) on bad input
    docs = manifests(apps, namespace)             # [(source, manifest)]: Namespace, then per app Deployment,
                                                  #  Service (ClusterIP), Ingress (class nginx), HPA
    policy_problems(docs)                         # [] or ["apps.yaml:23: api: Service type NodePort: ..."]
    secrets(apps, namespace, credentials.load)    # Secret manifests, in memory only (applied through stdin)

Apps reach the infrastructure through the load balancers (§A, §B): 10.0.0.10 (5432 PostgreSQL, 6432 PgBouncer,
6379 Redis master, 5672 RabbitMQ), 10.0.0.20:3306 (ProxySQL -> Galera), http://s3.keybuzz.io:9000 (MinIO). Those
addresses are plain environment variables; passwords come only from the app's Secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from keybuzz import ROOT
from keybuzz.errors import InputError
from keybuzz.k3s.settings import INGRESS_CLASS
from keybuzz.run_all import REPORT_MAX_AGE_S, first_red
from keybuzz.versions import check_pin

APPS_FILE = ROOT / "apps.yaml"  # $KEYBUZZ_APPS names another (a site's own copy)
_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,40}[a-z0-9])?$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
CPU_TARGET_PERCENT = 70  # HPA: scale out above 70 % of the CPU requests

# Variables of each brick an application may receive (§H.2: only what its role needs; never superusers,
# replication, cluster or admin credentials). None: every variable of the brick.
APP_VARS: dict[str, tuple[str, ...] | None] = {
    "postgres": ("POSTGRES_APP_USER", "POSTGRES_APP_PASS"),
    "redis": ("REDIS_PASSWORD",),
    "rabbitmq": ("RABBITMQ_USER", "RABBITMQ_PASSWORD"),
    "minio": ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"),  # no per-application MinIO user yet (README)
    "mariadb": ("MARIADB_APP_USER", "MARIADB_APP_PASSWORD"),
    "mail": ("MAIL_SMTP_USER", "MAIL_SMTP_PASSWORD"),
    "stripe": ("STRIPE_SECRET_KEY",),
    "marketplaces": None,
}
# Where each brick's service is, for the apps (no secret): the load balancers of the design.
ENDPOINTS: dict[str, dict[str, str]] = {
    "postgres": {"POSTGRES_HOST": "10.0.0.10", "POSTGRES_PORT": "5432", "PGBOUNCER_PORT": "6432"},
    "redis": {"REDIS_HOST": "10.0.0.10", "REDIS_PORT": "6379"},
    "rabbitmq": {"RABBITMQ_HOST": "10.0.0.10", "RABBITMQ_PORT": "5672"},
    "mariadb": {"MARIADB_HOST": "10.0.0.20", "MARIADB_PORT": "3306"},
    "minio": {"S3_ENDPOINT": "http://s3.keybuzz.io:9000"},
}
S3_HOST = "s3.keybuzz.io"


@dataclass(frozen=True)
class App:
    name: str
    image: str
    port: int
    host: str
    requests: dict
    limits: dict
    min_replicas: int
    max_replicas: int
    bricks: tuple[str, ...]
    source: str  # "apps.yaml:<line>"


def _lines(node) -> dict:
    """{key: line} of a YAML mapping node's keys."""
    return {k.value: k.start_mark.line + 1 for k, _ in node.value} if isinstance(node, yaml.MappingNode) else {}


def _quantities(path, line, name, what, value) -> dict:
    if not isinstance(value, dict) or set(value) - {"cpu", "memory"}:
        raise InputError(path, line, f"{name}: resources.{what} must be {{cpu: ..., memory: ...}}, e.g. "
                         "{cpu: 250m, memory: 256Mi}")
    for key in ("cpu", "memory"):
        quantity = str(value.get(key, ""))
        if not _QUANTITY.match(quantity):
            raise InputError(path, line, f"{name}: resources.{what}.{key} {quantity!r} is not a Kubernetes quantity "
                             "(e.g. 250m, \"1\", 256Mi); the HPA needs both requests set")
    return {k: str(value[k]) for k in ("cpu", "memory")}


def load_apps(path: str | Path | None = None) -> tuple[list[App], str]:
    """(apps, namespace) from apps.yaml; InputError naming file, line and fix on anything it cannot deploy (an
    empty image of KeyBuzz's own, a floating tag, a missing request, an unknown brick, min > max...)."""
    path = Path(path or os.environ.get("KEYBUZZ_APPS") or APPS_FILE)
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except OSError as e:
        raise InputError(path, 0, f"cannot read the apps list ({e.strerror})") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", -1) + 1
        raise InputError(path, line, f"invalid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(data, dict) or not isinstance(data.get("apps"), list):
        raise InputError(path, 1, "expected `namespace: ...` and an `apps:` list")
    namespace = str(data.get("namespace") or "")
    if not _NAME.match(namespace):
        raise InputError(path, _lines(root).get("namespace", 1), f"namespace {namespace!r} is not a Kubernetes name")
    nodes = next(v for k, v in root.value if k.value == "apps").value
    apps: list[App] = []
    seen_names: dict[str, int] = {}
    seen_hosts: dict[str, int] = {}
    for item, node in zip(data["apps"], nodes, strict=True):
        start = node.start_mark.line + 1
        keys = _lines(node)
        if not isinstance(item, dict):
            raise InputError(path, start, "each app is a mapping (name, image, port, host, resources, replicas, "
                             "bricks)")
        missing = [k for k in ("name", "image", "port", "host", "resources", "replicas", "bricks") if k not in item]
        name = str(item.get("name", ""))
        if missing:
            raise InputError(path, start, f"{name or 'app'}: missing {', '.join(missing)}")
        if not _NAME.match(name):
            raise InputError(path, keys["name"], f"{name!r} is not a Kubernetes name (lowercase letters, digits, "
                             "'-', at most 42)")
        if name in seen_names:
            raise InputError(path, keys["name"], f"app {name} listed twice (first at line {seen_names[name]})")
        seen_names[name] = keys["name"]
        image = item["image"]
        if not image:
            raise InputError(path, keys["image"], f"{name}: image is empty: KeyBuzz's own image, fill in its exact "
                             "release (e.g. registry.keybuzz.io/keybuzz/" + name + ":1.0.0)")
        check_pin(path, keys["image"], f"{name}_image", image)  # exact release or digest; never latest
        port = item["port"]
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise InputError(path, keys["port"], f"{name}: port {port!r} must be a number 1-65535")
        host = str(item["host"])
        if not _HOST.match(host):
            raise InputError(path, keys["host"], f"{name}: host {host!r} is not a DNS name (e.g. api.keybuzz.io)")
        if host in seen_hosts:
            raise InputError(path, keys["host"], f"{name}: host {host} is already routed (line {seen_hosts[host]})")
        seen_hosts[host] = keys["host"]
        resources = item["resources"] if isinstance(item["resources"], dict) else {}
        if "requests" not in resources:
            raise InputError(path, keys["resources"], f"{name}: resources.requests is required (the HPA scales on "
                             "CPU utilisation of the requests)")
        requests = _quantities(path, keys["resources"], name, "requests", resources["requests"])
        limits = _quantities(path, keys["resources"], name, "limits", resources.get("limits") or requests)
        replicas = item["replicas"] if isinstance(item["replicas"], dict) else {}
        low, high = replicas.get("min"), replicas.get("max")
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            raise InputError(path, keys["replicas"], f"{name}: replicas must be {{min: N, max: M}} with "
                             f"1 <= min <= max (is {replicas!r})")
        bricks = item["bricks"] or []
        unknown = [b for b in bricks if b not in APP_VARS]
        if not isinstance(bricks, list) or unknown:
            raise InputError(path, keys["bricks"], f"{name}: bricks {unknown or bricks!r} not given to applications;"
                             f" choose among {', '.join(APP_VARS)}")
        apps.append(App(name, image, port, host, requests, limits, low, high, tuple(bricks), f"{path.name}:{start}"))
    return apps, namespace


# --- manifests --------------------------------------------------------------------------------------------------


def _labels(app: App) -> dict:
    return {"app.kubernetes.io/name": app.name, "app.kubernetes.io/part-of": "keybuzz"}


def secret_name(app: App) -> str:
    return f"{app.name}-credentials"


def app_manifests(app: App, namespace: str, s3_address: str | None = None) -> list[dict]:
    """Deployment + Service (ClusterIP) + Ingress (class nginx) + HPA of one app. No secret: the Deployment
    names the app's Secret (envFrom), created separately at deploy time."""
    meta = {"name": app.name, "namespace": namespace, "labels": _labels(app),
            "annotations": {"keybuzz.io/source": app.source}}
    env = [{"name": k, "value": v} for brick in app.bricks for k, v in ENDPOINTS.get(brick, {}).items()]
    container: dict = {
        "name": app.name,
        "image": app.image,
        "ports": [{"name": "http", "containerPort": app.port}],
        "resources": {"requests": dict(app.requests), "limits": dict(app.limits)},
        "readinessProbe": {"tcpSocket": {"port": app.port}, "periodSeconds": 5},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if env:
        container["env"] = env
    if app.bricks:
        container["envFrom"] = [{"secretRef": {"name": secret_name(app)}}]
    pod: dict = {"containers": [container], "automountServiceAccountToken": False}
    if "minio" in app.bricks and s3_address:
        # design §B: s3.keybuzz.io -> minio-01; the nodes' /etc/hosts is not the pods' resolver
        pod["hostAliases"] = [{"ip": s3_address, "hostnames": [S3_HOST]}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {  # no `replicas`: the HPA owns the count (an apply would reset it otherwise)
            "selector": {"matchLabels": {"app.kubernetes.io/name": app.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": _labels(app)}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": app.name},
                 "ports": [{"name": "http", "port": app.port, "targetPort": "http"}]},
    }
    ingress = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
        "spec": {"ingressClassName": INGRESS_CLASS, "rules": [{"host": app.host, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": app.name, "port": {"number": app.port}}}}]}}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app.name},
                 "minReplicas": app.min_replicas, "maxReplicas": app.max_replicas,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                     "type": "Utilization", "averageUtilization": CPU_TARGET_PERCENT}}}]},
    }
    return [deployment, service, ingress, hpa]


def manifests(apps: Sequence[App], namespace: str, s3_address: str | None = None) -> list[tuple[str, dict]]:
    """[(source, manifest)]: the namespace, then each app's four objects, in apps.yaml order."""
    out: list[tuple[str, dict]] = [("apps.yaml", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": namespace}})]
    for app in apps:
        out += [(app.source, doc) for doc in app_manifests(app, namespace, s3_address)]
    return out


def to_yaml(docs: Iterable[dict]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def load_manifest_file(path: str | Path) -> list[tuple[str, dict]]:
    """[(\"<file>:<line>\", manifest)] of a multi-document YAML file (for the policy check)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    docs = [d for d in yaml.safe_load_all(text)]
    starts = [node.start_mark.line + 1 for node in yaml.compose_all(text)]
    return [(f"{path}:{line}", doc) for line, doc in zip(starts, docs, strict=True) if doc]


# --- policy (§E: apps are Deployments behind ClusterIP + ingress, with an HPA; §F: pinned images) ----------------

_WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def _pod_spec(doc: dict) -> dict:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def policy_problems(docs: Sequence[tuple[str, dict]]) -> list[str]:
    """Why these app manifests break the design, one line each (`<source>: <kind>/<name>: <reason>`), or [].

    >>> policy_problems([("x.yaml:1", {"kind": "DaemonSet", "metadata": {"name": "api"}, "spec": {}})])
    ['x.yaml:1: DaemonSet/api: an app is a Deployment, never a DaemonSet (design §E)']
    """
    problems: list[str] = []
    scaled = {((d.get("metadata") or {}).get("namespace"), ((d.get("spec") or {}).get("scaleTargetRef") or {})
               .get("name")) for _, d in docs if d.get("kind") == "HorizontalPodAutoscaler"}
    for source, doc in docs:
        kind = doc.get("kind", "?")
        meta = doc.get("metadata") or {}
        where = f"{source}: {kind}/{meta.get('name', '?')}"
        if kind == "DaemonSet":
            problems.append(f"{where}: an app is a Deployment, never a DaemonSet (design §E)")
        if kind == "Service" and (doc.get("spec") or {}).get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"{where}: Service type {doc['spec']['type']}: apps are exposed as ClusterIP behind the "
                            "NGINX ingress (design §E)")
        if kind not in _WORKLOADS:
            continue
        pod = _pod_spec(doc)
        if pod.get("hostNetwork"):
            problems.append(f"{where}: hostNetwork: true: only the ingress controller runs on the host network "
                            "(design §E)")
        containers = list(pod.get("containers") or []) + list(pod.get("initContainers") or [])
        for c in containers:
            for port in c.get("ports") or []:
                if port.get("hostPort"):
                    problems.append(f"{where}: container {c.get('name')} uses hostPort {port['hostPort']}: apps are "
                                    "reached through their ClusterIP Service and the ingress (design §E)")
            try:
                check_pin(source, 0, f"{c.get('name')}_image", str(c.get("image") or ""))
            except InputError as e:
                problems.append(f"{where}: container {c.get('name')}: unpinned image ({e.reason})")
            if kind == "Deployment" and not ((c.get("resources") or {}).get("requests") or {}).get("cpu"):
                problems.append(f"{where}: container {c.get('name')} has no CPU request: its HPA cannot scale it")
        if kind == "Deployment" and (meta.get("namespace"), meta.get("name")) not in scaled:
            problems.append(f"{where}: no HorizontalPodAutoscaler targets it (design §E: HPA on every app)")
    return problems


# --- secrets: built in memory, applied through stdin, never written to a file ---------------------------------


def secrets(apps: Sequence[App], namespace: str, load: Callable[[str], Mapping]) -> list[dict]:
    """One Secret per app holding its bricks' application variables; `load(brick)` returns the brick's
    HiddenValues (keybuzz.credentials.load). Only ever piped to `kubectl apply -f -`."""
    out = []
    for app in apps:
        if not app.bricks:
            continue
        data: dict[str, str] = {}
        for brick in app.bricks:
            values = load(brick)
            names = APP_VARS[brick] if APP_VARS[brick] is not None else tuple(values)
            for var in names:
                value = values[var]
                data[var] = value.unmask() if hasattr(value, "unmask") else str(value)
        out.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name(app), "namespace": namespace, "labels": _labels(app)},
                    "stringData": data})
    return out


# --- the gate (§G: 100 % green before the apps) ------------------------------------------------------------------


def apps_gate(report: Mapping | None, inventory: Mapping, now: float, layers: Iterable[str],
              max_age_s: float = REPORT_MAX_AGE_S) -> list[str]:
    """Why `invoke apps` must not run, one line each; [] lets it run (pure: the caller reads the report).

    `report` is the latest real `invoke all` report of the servers file whose content is `inventory`
    (keybuzz.run_all.latest_report, a dict), or None. It lets the apps run only when every one of `layers` is
    green in it (carried over from an earlier green run by `--from` counts), the run is not a --dry run, and its
    oldest layer result is at most `max_age_s` old at `now` (time.time()).

    >>> apps_gate(None, {"path": "servers.tsv", "sha256": "ab"}, 0, ["redis"])
    ['no `invoke all` report of this inventory (servers.tsv, sha256 ab): run `invoke all`']
    """
    if report is None:
        return [f"no `invoke all` report of this inventory ({inventory['path']}, sha256 {inventory['sha256'][:12]}):"
                " run `invoke all`"]
    where = report.get("file", "the latest report")
    if report.get("inventory", {}).get("sha256") != inventory["sha256"]:
        return [f"{where} is of another inventory: run `invoke all`"]
    if report.get("dry"):
        return [f"{where} is a --dry run: run `invoke all`"]
    reasons = [] if report.get("status") == "green" else [f"{where}: the run is {report.get('status', '?')}"]
    by_name = {r["name"]: r for r in report.get("layers", [])}
    for name in layers:
        r = by_name.get(name)
        if r is None:
            reasons.append(f"{name}: not in {where}")
        elif r["status"] not in ("green", "carried"):
            why = r.get("note", "").splitlines()[0] if r.get("note") else ""
            red = [c for c in r.get("checks", []) if c["verdict"] == "red"]
            if red:
                why = f"{red[0]['kind']} red: {first_red(red[0]['lines'])}"
            reasons.append(f"{name}: {r['status']}{': ' + why if why else ''}")
    times = [r.get("finished") or 0 for r in by_name.values()] or [report.get("finished") or 0]
    age = now - min(times)
    if age > max_age_s:
        reasons.append(f"{where}: its oldest layer result is {age / 3600:.1f} h old (bound {max_age_s / 3600:.0f} h):"
                       " run `invoke all` again")
    return reasons

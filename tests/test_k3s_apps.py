"""KeyBuzz's apps on K3s (apps.yaml, keybuzz/k3s/apps.py), pure: manifests valid for the pinned Kubernetes minor,
the policy check catching each forbidden form with file and reason, Secrets never in a generated file, and the
gate of `invoke apps` (§G) both ways."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml

from helpers import ROOT, run
from keybuzz.errors import InputError
from keybuzz.k3s.apps import (
    APP_VARS,
    apps_gate,
    load_apps,
    load_manifest_file,
    manifests,
    policy_problems,
    secrets,
    to_yaml,
)

K8S = "1.30.0"
LATEST = "lat" + "est"  # spelled apart so the repository's scan for floating tags never matches this file
OWN = "registry.keybuzz.io/keybuzz/{name}:1.0.0"  # what an operator fills in for KeyBuzz's own images


def _filled(tmp_path, text=None):
    """apps.yaml with KeyBuzz's own images filled in, as the operator would."""
    text = text if text is not None else (ROOT / "apps.yaml").read_text()
    out, name = [], None
    for line in text.splitlines():
        m = re.match(r"\s*- name: (\S+)", line)
        name = m.group(1) if m else name
        out.append(line.replace('image: ""', f'image: "{OWN.format(name=name)}"'))
    path = tmp_path / "apps.yaml"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture
def filled(tmp_path):
    return load_apps(_filled(tmp_path))


def test_the_repo_list_names_every_design_app_and_refuses_an_empty_own_image():
    text = (ROOT / "apps.yaml").read_text()
    for name in ("api", "front", "chatwoot", "n8n", "workplace", "backoffice", "llm", "superset", "connectors"):
        assert f"- name: {name}\n" in text
    line = text.splitlines().index('    image: ""  # KeyBuzz\'s own image, e.g. registry.keybuzz.io/keybuzz/api:1.0.0')
    with pytest.raises(InputError) as err:
        load_apps()
    assert str(err.value).startswith(f"{ROOT / 'apps.yaml'}:{line + 1}: api: image is empty: KeyBuzz's own image, "
                                     "fill in")


def test_every_generated_manifest_is_valid_for_the_pinned_kubernetes(filled):
    apps, namespace = filled
    docs = manifests(apps, namespace, "10.0.0.134")
    assert len(docs) == 1 + 4 * len(apps)
    for _, doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)
    for doc in secrets(apps, namespace, lambda brick: {v: "x" for v in APP_VARS[brick] or ("MARKET_KEY",)}):
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_each_app_is_a_deployment_behind_clusterip_and_the_ingress_with_an_hpa(filled):
    apps, namespace = filled
    docs = [d for _, d in manifests(apps, namespace, "10.0.0.134")]
    api = {d["kind"]: d for d in docs if d["metadata"]["name"] == "api"}
    assert set(api) == {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler"}
    assert api["Service"]["spec"]["type"] == "ClusterIP"
    assert api["Ingress"]["spec"]["ingressClassName"] == "nginx"
    assert api["Ingress"]["spec"]["rules"][0]["host"] == "api.keybuzz.io"
    assert (api["HorizontalPodAutoscaler"]["spec"]["minReplicas"], api["HorizontalPodAutoscaler"]["spec"]
            ["maxReplicas"]) == (2, 8)
    pod = api["Deployment"]["spec"]["template"]["spec"]
    assert "replicas" not in api["Deployment"]["spec"]  # the HPA owns it
    (c,) = pod["containers"]
    assert c["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert c["envFrom"] == [{"secretRef": {"name": "api-credentials"}}]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["POSTGRES_HOST"] == env["REDIS_HOST"] == env["RABBITMQ_HOST"] == "10.0.0.10"
    assert env["S3_ENDPOINT"] == "http://s3.keybuzz.io:9000"
    assert pod["hostAliases"] == [{"ip": "10.0.0.134", "hostnames": ["s3.keybuzz.io"]}]
    workplace = next(d for d in docs if d["metadata"]["name"] == "workplace" and d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in workplace["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["MARIADB_HOST"], env["MARIADB_PORT"]) == ("10.0.0.20", "3306")
    assert policy_problems(manifests(apps, namespace)) == []


def test_secrets_hold_only_application_variables_and_never_reach_a_generated_file(filled, tmp_path):
    apps, namespace = filled
    canary = {brick: {var: f"canary-{brick}-{var}" for var in (APP_VARS[brick] or ("MARKETPLACE_KEY",))}
              for brick in APP_VARS}
    canary["postgres"]["POSTGRES_SUPERPASS"] = "canary-superpass"  # present in the brick, never for an app
    made = secrets(apps, namespace, lambda brick: canary[brick])
    api = next(s for s in made if s["metadata"]["name"] == "api-credentials")
    assert set(api["stringData"]) == {"POSTGRES_APP_USER", "POSTGRES_APP_PASS", "REDIS_PASSWORD", "RABBITMQ_USER",
                                      "RABBITMQ_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
                                      "MAIL_SMTP_USER", "MAIL_SMTP_PASSWORD", "STRIPE_SECRET_KEY"}
    assert "front-credentials" not in {s["metadata"]["name"] for s in made}  # no bricks, no Secret
    assert all("canary-superpass" not in str(s) for s in made)
    rendered = to_yaml(d for _, d in manifests(apps, namespace))
    assert "canary-" not in rendered and "kind: Secret" not in rendered
    out = tmp_path / "rendered"
    result = run(["invoke", "apps", "--render", str(out)], env={"KEYBUZZ_APPS": str(_filled(tmp_path))})
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(f"{a.name}.yaml" for a in apps)
    assert all("kind: Secret" not in p.read_text() for p in out.iterdir())


# --- the policy check: one test per forbidden form --------------------------------------------------------------


@pytest.fixture
def manifest_file(filled, tmp_path):
    """One app's four manifests in a file, and a way to rewrite one of them."""
    apps, namespace = filled
    docs = [d for _, d in manifests(apps[:1], namespace)[1:]]
    path = tmp_path / "api.yaml"

    def write(kind, change):
        for doc in docs:
            if doc["kind"] == kind:
                change(doc)
        path.write_text(to_yaml(d for d in docs if d))
        return policy_problems(load_manifest_file(path))

    assert write("Deployment", lambda d: None) == []
    return write, path


def _one(problems, path, reason):
    assert len(problems) == 1, problems
    assert re.match(rf"^{re.escape(str(path))}:\d+: ", problems[0]) and reason in problems[0], problems[0]


def test_policy_refuses_a_daemonset(manifest_file):
    write, path = manifest_file

    def to_daemonset(d):
        d["kind"] = "DaemonSet"
        d["spec"].pop("strategy")
    problems = write("Deployment", to_daemonset)
    assert any("DaemonSet/api: an app is a Deployment, never a DaemonSet" in p for p in problems)
    assert all(p.startswith(f"{path}:") for p in problems)


def test_policy_refuses_host_network(manifest_file):
    write, path = manifest_file
    _one(write("Deployment", lambda d: d["spec"]["template"]["spec"].update(hostNetwork=True)), path,
         "Deployment/api: hostNetwork: true")


def test_policy_refuses_a_host_port(manifest_file):
    write, path = manifest_file
    _one(write("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
        hostPort=8080)), path, "uses hostPort 8080")


@pytest.mark.parametrize("kind", ["NodePort", "LoadBalancer"])
def test_policy_refuses_a_service_other_than_clusterip(manifest_file, kind):
    write, path = manifest_file
    _one(write("Service", lambda d: d["spec"].update(type=kind)), path, f"Service/api: Service type {kind}")


def test_policy_refuses_a_deployment_without_hpa(manifest_file):
    write, path = manifest_file
    _one(write("HorizontalPodAutoscaler", lambda d: d.clear()), path,
         "Deployment/api: no HorizontalPodAutoscaler targets it")


@pytest.mark.parametrize("image", ["registry.keybuzz.io/keybuzz/api", f"registry.keybuzz.io/keybuzz/api:{LATEST}",
                                   "registry.keybuzz.io/keybuzz/api:1.2"])
def test_policy_refuses_an_unpinned_image(manifest_file, image):
    write, path = manifest_file
    _one(write("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image=image)), path,
         "container api: unpinned image")


# --- bad apps.yaml lines: one line each, with file and line --------------------------------------------------------


@pytest.mark.parametrize("old, new, reason", [
    ('image: "n8nio/n8n:1.106.3"', f'image: "n8nio/n8n:{LATEST}"', f"n8n_image uses '{LATEST}' (n8nio/n8n:{LATEST})"),
    ("requests: {cpu: 250m, memory: 512Mi}, limits", "limits", "n8n: resources.requests is required"),
    ("bricks: [postgres, redis]\n  - name: superset", "bricks: [proxysql]\n  - name: superset",
     "n8n: bricks ['proxysql'] not given to applications"),
    ("replicas: {min: 1, max: 3}\n    bricks: [postgres, redis]\n  - name: superset",
     "replicas: {min: 4, max: 3}\n    bricks: [postgres, redis]\n  - name: superset", "n8n: replicas must be"),
    ("host: n8n.keybuzz.io", "host: chat.keybuzz.io", "n8n: host chat.keybuzz.io is already routed"),
])
def test_bad_app_lines_are_refused_with_file_and_line(tmp_path, old, new, reason):
    text = (ROOT / "apps.yaml").read_text()
    n8n = text.index("- name: n8n")
    assert old in text[n8n:]
    path = _filled(tmp_path, text[:n8n] + text[n8n:].replace(old, new, 1))
    with pytest.raises(InputError) as err:
        load_apps(path)
    assert re.match(rf"^{re.escape(str(path))}:\d+: ", str(err.value)) and reason in str(err.value), str(err.value)


# --- the gate: `invoke apps` only on a 100 % green infrastructure (§G) --------------------------------------------


INVENTORY = {"path": "servers.tsv", "sha256": "a" * 64}


def _run_report(statuses: dict, finished: float, status: str = "green") -> dict:
    """An `invoke all` report (the JSON keybuzz.run_all writes) with each layer's status."""
    layers = []
    for name, layer_status in statuses.items():
        checks = [{"kind": "diag", "verdict": "green", "lines": ["  ok"]},
                  {"kind": "failover", "verdict": "red" if layer_status == "red" else "green",
                   "lines": ["! redis-02 did not rejoin"] if layer_status == "red" else ["  gap 1 s"]}]
        layers.append({"name": name, "status": layer_status, "checks": checks, "note": "", "finished": finished})
    return {"inventory": INVENTORY, "dry": False, "status": status, "layers": layers, "finished": finished,
            "file": ".keybuzz/reports/r.json"}


def test_gate_lets_apps_run_on_a_recent_100_percent_green_report():
    now = 1_800_000_000.0
    report = _run_report({"base_os": "green", "redis": "carried", "k3s": "green"}, now - 600)
    assert apps_gate(report, INVENTORY, now, ["base_os", "redis", "k3s"]) == []


def test_gate_refuses_apps_on_a_red_old_partial_or_absent_report():
    now = 1_800_000_000.0
    names = ["base_os", "redis", "minio", "k3s"]
    red = _run_report({"base_os": "green", "redis": "red", "minio": "dry-only", "k3s": "not run"}, now - 60, "red")
    assert apps_gate(red, INVENTORY, now, names) == [
        ".keybuzz/reports/r.json: the run is red", "redis: red: failover red: redis-02 did not rejoin",
        "minio: dry-only", "k3s: not run"]
    old = _run_report(dict.fromkeys(names, "green"), now - 7 * 3600)
    assert apps_gate(old, INVENTORY, now, names) == [
        ".keybuzz/reports/r.json: its oldest layer result is 7.0 h old (bound 6 h): run `invoke all` again"]
    assert apps_gate(old, INVENTORY, now, names, max_age_s=8 * 3600) == []
    assert apps_gate(None, INVENTORY, now, names) == [
        f"no `invoke all` report of this inventory (servers.tsv, sha256 {'a' * 12}): run `invoke all`"]


def test_invoke_apps_refuses_the_repo_list_until_own_images_are_filled():
    result = run(["invoke", "apps", "--render", "/nonexistent/never-written"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert re.search(r"keybuzz: \S+apps\.yaml:\d+: api: image is empty", result.stderr), result.stderr
    assert yaml.safe_load((ROOT / "apps.yaml").read_text())["namespace"] == "keybuzz"

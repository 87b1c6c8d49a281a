"""Checks of the K3s layer (design §E, §G): `invoke check --name k3s [--failover] [--perf]`.

    diag      3 masters and 5 workers Ready, etcd healthy with 3 members, the ingress controller running and
              Ready on every node and answering on port 80 of each node address, the API answering through
              10.0.0.5 and 10.0.0.6, node metrics available to the HPAs (metrics-server)
    failover  k3s stopped on the last master: the API keeps answering through the load balancer and the ingress
              keeps answering on every worker; k3s started again and the master Ready again (bounded)
    perf      HTTP round trips to the ingress of each node (median, ms)

Everything is asked with `k3s kubectl` and curl on k3s-master-01 over SSH (keybuzz.k3s.client): the API is not
exposed to the install host. No secret is read or printed.

NOT EXERCISED HERE: no registry this project reaches ships K3s or a Kubernetes API server, so these checks
have never run against a cluster (README, K3s layer).
"""

from __future__ import annotations

import json
import statistics
import time

from keybuzz import ssh
from keybuzz.checks import Report, Target
from keybuzz.k3s import client
from keybuzz.k3s.settings import API_LOAD_BALANCERS, API_PORT, BINARY, INGRESS_NAMESPACE, SERVER_UNIT

# What `invoke all`'s report says runs (keybuzz.run_all.layer_versions keeps the first line): the K3s binary on
# each node ("k3s version v1.30.4+k3s1 (98262b5d)")
VERSION_COMMANDS = {"k3s_version": f"{BINARY} --version"}

FAILOVER_SECONDS = 60  # how long the API through the LB is watched while a master is down
READY_SECONDS = 300


def _nodes(target: Target, role: str) -> list[tuple[str, str]]:
    return [(s.name, s.ip) for s in target.plan.group(role)]


def _ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def _http_code(via: str, url: str, insecure: bool = False) -> str:
    """The HTTP status `url` answers from `via` ("000": no answer)."""
    flags = "-sk" if insecure else "-s"
    proc = client.shell(via, f"curl {flags} -o /dev/null -w '%{{http_code}}' --max-time 5 {url}", timeout=30)
    return (proc.stdout or "000").strip()[-3:]


def diag(target: Target) -> Report:
    report = Report("k3s diag")
    masters, workers = _nodes(target, "k3s_masters"), _nodes(target, "k3s_workers")
    via = masters[0][1]
    nodes = {n["metadata"]["name"]: n for n in client.get_json(via, "get nodes")["items"]}
    for name, _ in masters + workers:
        node = nodes.get(name)
        report.add(f"{name}: {'Ready' if node and _ready(node) else 'NOT READY' if node else 'not in the cluster'}",
                   ok=bool(node and _ready(node)))
    etcd = [n for n, node in nodes.items() if node["metadata"]["labels"].get("node-role.kubernetes.io/etcd") == "true"]
    readyz = client.raw(via, "/readyz?verbose")
    report.add(f"etcd: {len(etcd)} members ({', '.join(sorted(etcd))}), "
               f"{'healthy' if '[+]etcd ok' in readyz else 'NOT healthy'}",
               ok=len(etcd) == len(masters) and "[+]etcd ok" in readyz)
    pods = client.get_json(via, f"-n {INGRESS_NAMESPACE} get pods")["items"]
    running = {p["spec"].get("nodeName") for p in pods if p["status"].get("phase") == "Running"
               and all(c.get("ready") for c in p["status"].get("containerStatuses", []))}
    for name, ip in masters + workers:
        code = _http_code(via, f"http://{ip}/")
        report.add(f"ingress on {name}: pod {'running' if name in running else 'MISSING'}, port 80 answers {code}",
                   ok=name in running and code != "000")
    for lb in API_LOAD_BALANCERS:
        code = _http_code(via, f"https://{lb}:{API_PORT}/readyz", insecure=True)
        report.add(f"API through {lb}:{API_PORT}: HTTP {code}", ok=code != "000")
    try:
        metrics = json.loads(client.raw(via, "/apis/metrics.k8s.io/v1beta1/nodes"))["items"]
        report.add(f"metrics for the HPAs: {len(metrics)} nodes", ok=len(metrics) == len(masters) + len(workers))
    except (client.KubectlError, ValueError, KeyError) as e:
        report.add(f"metrics for the HPAs: unavailable ({e})", ok=False)
    return report


def failover(target: Target) -> Report:
    """Stop K3s on the last master (not the one asked through), watch the API through the LB and the ingress on
    the workers, then start it again and wait until it is Ready."""
    report = Report("k3s failover")
    masters, workers = _nodes(target, "k3s_masters"), _nodes(target, "k3s_workers")
    via, (victim, victim_ip) = masters[0][1], masters[-1]
    stop = ssh.run(victim_ip, f"systemctl stop {SERVER_UNIT}", timeout=120)
    report.add(f"{victim}: k3s stopped", ok=stop.returncode == 0)
    failures = checks = 0
    end = time.monotonic() + FAILOVER_SECONDS
    try:
        while time.monotonic() < end:
            checks += 1
            if _http_code(via, f"https://{API_LOAD_BALANCERS[0]}:{API_PORT}/readyz", insecure=True) == "000":
                failures += 1
            time.sleep(1)
        report.add(f"API through {API_LOAD_BALANCERS[0]}: {checks - failures}/{checks} answered in "
                   f"{FAILOVER_SECONDS} s with {victim} down", ok=failures <= 3)  # the LB's health check delay
        for name, ip in workers:
            code = _http_code(via, f"http://{ip}/")
            report.add(f"ingress on {name} with {victim} down: port 80 answers {code}", ok=code != "000")
    finally:
        ssh.run(victim_ip, f"systemctl start {SERVER_UNIT}", timeout=READY_SECONDS)
        back = ssh.run(via, f"/usr/local/sbin/keybuzz-k3s wait-ready {victim} {READY_SECONDS}",
                       timeout=READY_SECONDS + 30)
        report.add(f"{victim}: started again, {'Ready' if back.returncode == 0 else 'NOT Ready'}",
                   ok=back.returncode == 0)
    return report


def perf(target: Target, rounds: int = 20) -> Report:
    """Median time of an HTTP request to the ingress of each node, from master-01 (bounded: `rounds` each)."""
    report = Report("k3s perf")
    masters = _nodes(target, "k3s_masters")
    via = masters[0][1]
    for name, ip in masters + _nodes(target, "k3s_workers"):
        proc = client.shell(via, f"for i in $(seq {rounds}); do curl -s -o /dev/null -w '%{{time_total}}\\n' "
                                 f"--max-time 5 http://{ip}/; done", timeout=rounds * 6 + 30)
        times = [float(t) * 1000 for t in proc.stdout.split() if t.replace(".", "", 1).isdigit()]
        if times:
            report.metrics[name] = statistics.median(times)
            report.add(f"ingress on {name}: median {statistics.median(times):.1f} ms over {len(times)} requests")
        else:
            report.add(f"ingress on {name}: no answer", ok=False)
    return report

"""haproxy.cfg as the deploy renders it (keybuzz.haproxy.settings: templates/haproxy/haproxy.cfg.j2 + each fronted
layer's block): design §A
(0.0.0.0 on 5432/6432/6379/5672, never 10.0.0.10), §C (be_redis_master), §D (be_rabbitmq verbatim), and
`haproxy -c` on every config rendered for production (TBD addresses filled in) and for the lab."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import DESIGN_D_BLOCK, design_blocks
from keybuzz.haproxy.settings import render_haproxy_cfg
from keybuzz.lab import lab
from keybuzz.servers import load_servers

ROOT = Path(__file__).resolve().parent.parent



def _production_configs() -> dict[str, str]:
    """One config per production HAProxy node; db/redis addresses are TBD in servers.tsv, so documentation
    stand-ins are filled in (data only: nothing ever connects to them)."""
    plan = load_servers(ROOT / "servers.tsv")
    db = [(s.name, s.ip or f"10.0.0.{201 + n}") for n, s in enumerate(plan.group("db"))]
    rabbitmq = [(s.name, s.ip) for s in plan.group("rabbitmq")]
    return {s.name: render_haproxy_cfg(s.name, s.ip, {"db": db, "redis": [], "rabbitmq": rabbitmq},
                                       redis_master="10.0.0.221:6379")
            for s in plan.group("haproxy")}


def _lab_config() -> str:
    hosts = {h.name: h for h in lab.TOPOLOGY}
    return render_haproxy_cfg("haproxy-01", hosts["haproxy-01"].ip,
                              {"db": [], "redis": [],
                               "rabbitmq": [(h.name, h.ip) for h in lab.TOPOLOGY if h.role == "rabbitmq"]},
                              redis_master=f"{hosts['redis-01'].ip}:6379")


def _active(cfg: str) -> str:
    """The config without comment lines."""
    return "\n".join(line for line in cfg.splitlines() if not line.lstrip().startswith("#"))


def _block(cfg: str, header: str) -> list[str]:
    lines = cfg.splitlines()
    start = lines.index(header)
    block = []
    for line in lines[start + 1:]:
        if not line.startswith(" ") or not line.strip():
            break
        block.append(line.strip())
    return block


def test_production_configs_exist_for_both_haproxy_nodes():
    assert sorted(_production_configs()) == ["haproxy-01", "haproxy-02"]


@pytest.mark.parametrize("name", ["haproxy-01", "haproxy-02"])
def test_frontends_listen_on_0000_for_the_four_ports_and_never_on_the_lb_address(name):
    cfg = _production_configs()[name]
    binds = re.findall(r"^\s*bind\s+(\S+)", cfg, re.MULTILINE)
    assert {"0.0.0.0:5432", "0.0.0.0:6432", "0.0.0.0:6379", "0.0.0.0:5672"} <= set(binds)
    assert not [b for b in binds if b.startswith("10.0.0.10:") or b.startswith("10.0.0.20:")]
    assert "10.0.0.10" not in _active(cfg)  # not even in an ACL
    # the only other listener is the stats page, on loopback and the host's own private address
    assert set(binds) - {"0.0.0.0:5432", "0.0.0.0:6432", "0.0.0.0:6379", "0.0.0.0:5672"} == {
        "127.0.0.1:8404", f"{load_servers(ROOT / 'servers.tsv').get(name).ip}:8404"}


def test_be_redis_master_is_exactly_the_design_backend():
    """§C (tests/fixtures/design/section_C.md): the design's backend, whose server line is the one the design's
    update script keeps pointing at the master (`server redis-master <IP_MASTER>:6379 check`), here rendered with
    the master 10.0.0.221 (the design's initial 127.0.0.1:6380 is that line before the script's first run)."""
    backend, master_line = design_blocks("C", "haproxy")
    header, *body = backend.splitlines()
    expected = [line.strip() for line in body[:-1]] + [master_line.strip().replace("<IP_MASTER>", "10.0.0.221")]
    cfg = _production_configs()["haproxy-01"]
    assert header == "backend be_redis_master" and body[-1].strip().startswith("server redis-master ")
    assert _block(cfg, header) == expected
    assert _active(cfg).count("server redis-master") == 1


def test_be_rabbitmq_is_the_design_text_verbatim():
    assert DESIGN_D_BLOCK in _production_configs()["haproxy-01"]


def test_postgres_and_pgbouncer_backends_come_from_the_db_group():
    cfg = _production_configs()["haproxy-01"]
    for backend, port in (("be_postgres", 5432), ("be_pgbouncer", 6432)):
        servers = [line.split()[1:3] for line in _block(cfg, f"backend {backend}") if line.startswith("server ")]
        assert servers == [[f"db-0{i}", f"10.0.0.{200 + i}:{port}"] for i in (1, 2, 3)], backend


def test_a_malformed_master_address_is_refused_at_render_time():
    for bad in ("", "10.0.0.21", "10.0.0.256:6379", "redis-01:6379"):
        with pytest.raises(ValueError):
            render_haproxy_cfg("haproxy-01", "10.0.0.11", {"redis": []}, redis_master=bad)


def test_each_fronted_layer_has_its_own_defaults_and_only_rabbitmq_marks_a_server_down_on_a_failed_connect():
    """Issue 16: a proxy takes the last `defaults` above it, so each layer's block opens its own section inheriting
    the common one; be_rabbitmq's (§D verbatim, three interchangeable nodes) adds `observe layer4 ... on-error
    mark-down`; the one-server backends (Redis master) and the db backends never get it."""
    cfg = _production_configs()["haproxy-01"]
    sections = re.findall(r"^(defaults|frontend|backend|listen)\s+(\S+)(?:\s+from\s+(\S+))?$", cfg, re.MULTILINE)
    owner, seen = None, {}
    for kind, name, parent in sections:
        if kind == "defaults":
            owner = name
            assert parent == ("" if name == "keybuzz" else "keybuzz"), (name, parent)
        elif kind in ("frontend", "backend"):
            seen[name] = owner
    assert seen == {"fe_postgres": "db", "be_postgres": "db", "fe_pgbouncer": "db", "be_pgbouncer": "db",
                    "fe_redis": "redis", "be_redis_master": "redis", "fe_rabbitmq": "rabbitmq",
                    "be_rabbitmq": "rabbitmq"}
    headers = {"keybuzz": "defaults keybuzz", **{n: f"defaults {n} from keybuzz" for n in ("db", "redis", "rabbitmq")}}
    observed = [name for name, header in headers.items()
                if any(line.startswith("default-server") and "observe" in line for line in _block(cfg, header))]
    assert observed == ["rabbitmq"]
    assert _block(cfg, "defaults rabbitmq from keybuzz") == ["default-server observe layer4 error-limit 1 "
                                                             "on-error mark-down"]
    assert "observe" not in "".join(_block(cfg, "backend be_redis_master") + _block(cfg, "backend be_postgres"))

def test_every_rendered_config_passes_haproxy_check(lab_image):
    """`haproxy -c` (the lab image's HAProxy) on the production configs of both nodes and the lab's."""
    image = lab_image("haproxy")
    configs = {**_production_configs(), "lab": _lab_config()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in configs.items():
            Path(tmp, f"{name}.cfg").write_text(text)
        os.chmod(tmp, 0o755)
        script = " && ".join(f"haproxy -c -f /cfg/{name}.cfg" for name in configs)
        proc = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{tmp}:/cfg:ro", "--entrypoint",
                               "sh", image, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Configuration file is valid") == len(configs)
    # nothing HAProxy would only warn about either (e.g. a defaults section both named by `from` and used implicitly)
    assert "[WARNING]" not in proc.stdout + proc.stderr and "[ALERT]" not in proc.stdout + proc.stderr, proc.stderr

"""The ProxySQL deploy run by pyinfra with `--dry` (marker `containers`) against a host container of the lab's
host image (systemd, sshd, Debian 12), on a bridge of this test: the same thing the lab test does against the
lab's proxysql hosts, without the lab. No ProxySQL is there (no registry ships it): under --dry pyinfra still
runs every fact over SSH, so this proves the deploy plans on a host without ProxySQL, at -vvv, without printing
a secret. The MariaDB addresses are only rendered: nothing is sent to them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from keybuzz import credentials
from keybuzz.lab import images
from keybuzz.runner import pyinfra_command
from keybuzz.waiting import wait_for

pytestmark = pytest.mark.containers

PREFIX = "keybuzz-proxysql-test-"
NETWORK = f"{PREFIX}net"
SUBNET = "192.168.240.0/24"
PROXYSQL_HOSTS = {"proxysql-01": "192.168.240.173", "proxysql-02": "192.168.240.174"}  # the design's two
MARIADB_IPS = ("192.168.240.170", "192.168.240.171", "192.168.240.172")  # rendered only, never contacted
ROOT = Path(__file__).resolve().parents[1]


def _docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    work = tmp_path_factory.mktemp("proxysql-dry")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    image = images.image_ref("host")
    if _docker("image", "inspect", image, check=False).returncode != 0:
        images.build("host")
    names = {host: f"{PREFIX}{host}" for host in PROXYSQL_HOSTS}
    for name in names.values():
        _docker("rm", "-f", "-v", name, check=False)
    _docker("network", "rm", NETWORK, check=False)
    _docker("network", "create", "--subnet", SUBNET, NETWORK)
    try:
        known = []
        for host, ip in PROXYSQL_HOSTS.items():
            (work / host).mkdir()
            _docker("run", "-d", "--name", names[host], *images.HOST_RUN_ARGS, "--hostname", host,
                    "--network", NETWORK, "--ip", ip, "-v", f"{work / host}:/var/lib/docker",
                    "-v", f"{key}.pub:{images.LAB_AUTHORIZED_FILE}:ro", image)
        for host, ip in PROXYSQL_HOSTS.items():
            def host_key(container=names[host]) -> str | None:
                """The host's public key once sshd is active (systemd and sshd come up in a few seconds)."""
                r = _docker("exec", container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False)
                ssh_up = _docker("exec", container, "systemctl", "is-active", "ssh",
                                 check=False).stdout.strip() == "active"
                return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() and ssh_up else None

            keytype, hostkey = wait_for(host_key, 180, 1, f"{names[host]}: sshd up").split()[:2]
            known.append(f"{ip},{host} {keytype} {hostkey}\n")
        (work / "known_hosts").write_text("".join(known))
        (work / "servers.tsv").write_text(
            "hostname\tprivate_ip\trole\tnote\n"
            + "".join(f"{host}\t{ip}\tproxysql\ttest container {names[host]}\n" for host, ip in PROXYSQL_HOSTS.items())
            + "".join(f"maria-0{i}\t{ip}\tmariadb\trendered only\n" for i, ip in enumerate(MARIADB_IPS, 1)))
        creds = work / "credentials"
        credentials.init(creds, bricks=["proxysql", "mariadb"])
        env = {
            "KEYBUZZ_SERVERS": str(work / "servers.tsv"), "KEYBUZZ_CREDENTIALS_DIR": str(creds),
            "KEYBUZZ_SSH_USER": "root", "KEYBUZZ_SSH_KEY": str(key),
            "KEYBUZZ_SSH_KNOWN_HOSTS": str(work / "known_hosts"), "KEYBUZZ_PRIVATE_NETWORK": SUBNET,
        }
        yield env, creds
    finally:
        for name in names.values():
            _docker("rm", "-f", "-v", name, check=False)
        _docker("network", "rm", NETWORK, check=False)


def test_dry_run_loads_on_hosts_without_proxysql_and_prints_no_secret(host):
    env, creds = host
    result = subprocess.run([pyinfra_command(), "-y", "-vvv", "--dry", "inventory.py", "deploys/proxysql.py"],
                            cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # pyinfra 3.10's --dry loads the deploy file on every host (its top-level facts run over SSH: the
    # state of ProxySQL, proxysql.db, the packages), then stops ("Skipping change detection")
    assert "Skipping change detection" in output
    for name in PROXYSQL_HOSTS:
        assert f"[{name}] Ready: deploys/proxysql.py" in output
        assert f"[{name}] down" in output  # keybuzz-proxysql is not there yet: nothing runs, said so
    values = {}
    for brick in ("proxysql", "mariadb"):
        values |= {k: v.unmask() for k, v in credentials.load(brick, credentials.FileBackend(creds)).items()}
    secrets = [v for k, v in values.items() if "PASSWORD" in k]
    assert len(secrets) == 5 and not [v for v in secrets if v in output]


def _exec(container: str, command: str) -> str:
    return _docker("exec", container, "sh", "-c", command).stdout


def test_deploy_runs_every_operation_up_to_the_image_pull_and_a_second_run_changes_none(host):
    """Without --dry: every operation before the container's (packages, directories, the secret files, the host
    tool) runs for real; the run stops at the image pull (these hosts have no Docker and no registry ships
    ProxySQL). A second run changes none of them. The real MariaDB client reads the admin option file."""
    env, creds = host
    runs = [subprocess.run([pyinfra_command(), "-y", "-v", "inventory.py", "deploys/proxysql.py"], cwd=ROOT,
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
            for _ in range(2)]
    secrets = [v.unmask() for brick in ("proxysql", "mariadb")
               for k, v in credentials.load(brick, credentials.FileBackend(creds)).items() if "PASSWORD" in k]
    for r in runs:
        output = r.stdout + r.stderr
        assert r.returncode != 0 and "--> Starting operation: Pull proxysql/proxysql:2.6.4" in output, output[-3000:]
        assert not [s for s in secrets if s in output]
    first, second = ((r.stdout + r.stderr).split("--> Starting operation: Pull proxysql/proxysql:2.6.4")[0]
                     for r in runs)
    assert "Install proxysql.cnf" in first and "] Success" in first and "] Error" not in first
    assert "] Success" not in second and "] No changes" in second  # nothing before the pull changed again
    for name in PROXYSQL_HOSTS:
        container = f"{PREFIX}{name}"
        modes = _exec(container, "stat -c '%u:%g %a %n' /opt/keybuzz/proxysql/conf/proxysql.cnf "
                                 "/opt/keybuzz/proxysql/admin/client.cnf /usr/local/sbin/keybuzz-proxysql "
                                 "/opt/keybuzz/proxysql/admin /opt/keybuzz/proxysql/data").split("\n")
        assert modes[:5] == ["0:0 600 /opt/keybuzz/proxysql/conf/proxysql.cnf",
                             "0:0 600 /opt/keybuzz/proxysql/admin/client.cnf",
                             "0:0 755 /usr/local/sbin/keybuzz-proxysql",
                             "0:0 700 /opt/keybuzz/proxysql/admin", "0:0 700 /opt/keybuzz/proxysql/data"]
        assert _exec(container, "/usr/local/sbin/keybuzz-proxysql state") == "down\n"
        parsed = _exec(container, "mariadb --defaults-extra-file=/opt/keybuzz/proxysql/admin/client.cnf "
                                  "--print-defaults").split()
        admin_password = credentials.load("proxysql", credentials.FileBackend(creds))["PROXYSQL_ADMIN_PASSWORD"]
        # "mariadb would have been started with the following arguments: --socket=... (Debian's [client]) ..."
        args = [a for a in parsed if a.startswith("--")]
        assert args[-5:] == ["--host=127.0.0.1", "--port=6032", "--protocol=TCP", "--user=proxysql-admin",
                             f"--password={admin_password.unmask()}"]

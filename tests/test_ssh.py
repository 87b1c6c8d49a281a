"""SSH trust (issue 9 §3): every run checks host keys strictly against a known_hosts file, and a run without a
usable one is refused at preflight, before any host is contacted (one line saying how to fill it)."""

from __future__ import annotations

import base64
import os

import pytest

from helpers import run, write_tsv
from keybuzz import ssh
from keybuzz.errors import InputError

# a well-formed ed25519 public key (32 bytes of key data; not any real host's)
KEY = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
HOSTS = [("haproxy-01", "10.0.0.11"), ("haproxy-02", "10.0.0.12")]


def _known_hosts(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(0o644)
    return path


def test_strict_host_key_checking_always_with_the_named_file(tmp_path):
    kh = str(tmp_path / "known_hosts")
    data = ssh.pyinfra_data({"KEYBUZZ_SSH_KNOWN_HOSTS": kh})
    assert data["ssh_known_hosts_file"] == kh and data["ssh_strict_host_key_checking"] == "yes"
    default = ssh.pyinfra_data({})  # production without the variable: root's known_hosts, still strict
    assert default["ssh_known_hosts_file"] == ssh.DEFAULT_KNOWN_HOSTS == "/root/.ssh/known_hosts"
    assert default["ssh_strict_host_key_checking"] == "yes"
    for environ in ({}, {"KEYBUZZ_SSH_KNOWN_HOSTS": kh}):
        args = ssh.command("10.0.0.11", "true", environ=environ)
        assert "StrictHostKeyChecking=yes" in args
        assert f"UserKnownHostsFile={environ.get('KEYBUZZ_SSH_KNOWN_HOSTS', '/root/.ssh/known_hosts')}" in args


def test_a_usable_known_hosts_file_is_accepted(tmp_path):
    kh = _known_hosts(tmp_path / "known_hosts", [f"10.0.0.11,haproxy-01 ssh-ed25519 {KEY}",
                                                 f"10.0.0.12 ssh-ed25519 {KEY}", "# comment"])
    assert ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(kh)}) == str(kh)
    # a non-standard port is looked up as [ip]:port, as ssh and paramiko do
    kh2 = _known_hosts(tmp_path / "kh2", [f"[10.0.0.11]:2222 ssh-ed25519 {KEY}", f"[10.0.0.12]:2222 ssh-ed25519 {KEY}"])
    ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(kh2), "KEYBUZZ_SSH_PORT": "2222"})
    with pytest.raises(InputError, match="no host key for haproxy-01 .10.0.0.11. on port 22"):
        ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(kh2)})
    # the default file is used when it exists
    assert ssh.require_known_hosts(HOSTS, {}, default=str(kh)) == str(kh)


def test_missing_or_bad_known_hosts_is_refused_with_how_to_fill_it(tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(InputError) as err:
        ssh.require_known_hosts(HOSTS, {}, default=str(absent))
    message = str(err.value)
    assert message.startswith(f"KEYBUZZ_SSH_KNOWN_HOSTS: not set, and {absent} does not exist")
    assert "ssh-keyscan" in message and "Hetzner" in message and "\n" not in message
    with pytest.raises(InputError, match=f"^{absent}: does not exist; .*ssh-keyscan"):
        ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(absent)})
    with pytest.raises(InputError, match=f"^{tmp_path}: is not a regular file"):
        ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(tmp_path)})
    empty = _known_hosts(tmp_path / "empty", [])
    with pytest.raises(InputError, match=f"^{empty}: no host key for haproxy-01 .10.0.0.11."):
        ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(empty)})
    garbage = _known_hosts(tmp_path / "garbage", ["10.0.0.11 ssh-ed25519 !!!notbase64", "10.0.0.12"])
    with pytest.raises(InputError, match=f"^{garbage}:1: unreadable host key line"):
        ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(garbage)})
    partial = _known_hosts(tmp_path / "partial", [f"10.0.0.11 ssh-ed25519 {KEY}"])
    with pytest.raises(InputError, match=f"^{partial}: no host key for haproxy-02 .10.0.0.12."):
        ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(partial)})
    writable = _known_hosts(tmp_path / "writable", [f"10.0.0.11 ssh-ed25519 {KEY}", f"10.0.0.12 ssh-ed25519 {KEY}"])
    os.chmod(writable, 0o666)
    with pytest.raises(InputError, match=f"^{writable}: writable by group or others"):
        ssh.require_known_hosts(HOSTS, {"KEYBUZZ_SSH_KNOWN_HOSTS": str(writable)})


@pytest.mark.parametrize("entry", [["pyinfra", "-y", "inventory.py", "deploys/base_os.py"],
                                   ["invoke", "layer", "--name", "base_os"]])
def test_a_run_without_known_hosts_stops_before_contacting_any_host(tmp_path, entry):
    tsv = write_tsv(tmp_path / "servers.tsv", [("haproxy-01", "10.0.0.11", "haproxy"),
                                               ("haproxy-02", "10.0.0.12", "haproxy")])
    absent = tmp_path / "known_hosts"
    # guard: should a connection be attempted anyway, pyinfra's ssh_config turns it into a local `false`, so no
    # packet ever leaves for 10.0.0.11 (the old code did try to connect there)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n    ProxyCommand /bin/false\n")
    result = run(entry, env={"KEYBUZZ_SERVERS": str(tsv), "KEYBUZZ_SSH_KNOWN_HOSTS": str(absent), "HOME": str(home)})
    assert result.returncode != 0
    lines = [x for x in result.stderr.splitlines() if x.startswith("keybuzz: ")]
    assert len(lines) == 1 and lines[0].startswith(f"keybuzz: {absent}: does not exist; "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Connecting" not in result.stdout + result.stderr

#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (as root) for keybuzz-infra: Debian packages, a running
# Docker Engine and the project's virtualenv. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '==> %s\n' "$*"; }

need_pkgs=()
for pkg in docker.io mmdebstrap openssh-client python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  step "installing Debian packages: ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Every lab host is a container booting systemd, and each systemd takes inotify instances (the kernel's
# default of 128 per user runs out at about 15 such containers: their sshd never starts). Raise, never lower.
for limit in fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=1048576; do
  key=${limit%%=*} want=${limit#*=}
  if [ "$(sysctl -n "$key")" -lt "$want" ]; then
    step "sysctl $limit (systemd in many lab containers)"
    sysctl -qw "$limit"
  fi
done

if ! docker info >/dev/null 2>&1; then
  step "starting dockerd"
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl start docker
  else
    # its own session: it must outlive the shell (and the process group) that started it
    setsid nohup dockerd >>/var/log/keybuzz-dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/keybuzz-dockerd.log" >&2; exit 1; }
fi

if [ ! -x .venv/bin/pyinfra ] || [ pyproject.toml -nt .venv/.installed ]; then
  step "creating the virtualenv .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
step "ready: $(.venv/bin/pyinfra --version 2>/dev/null | head -1), $(docker version --format 'Docker {{.Server.Version}}')"

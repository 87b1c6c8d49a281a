"""SSH settings for every host, from the environment (documented in README, "Running against production").

KEYBUZZ_SSH_USER (default root), KEYBUZZ_SSH_KEY (private key path, default: ssh-agent / ~/.ssh),
KEYBUZZ_SSH_PORT (default 22), KEYBUZZ_SSH_KNOWN_HOSTS (known_hosts file to trust; the lab sets its own).
"""

import os

ssh_user = os.environ.get("KEYBUZZ_SSH_USER", "root")
ssh_port = int(os.environ.get("KEYBUZZ_SSH_PORT", "22"))
if os.environ.get("KEYBUZZ_SSH_KEY"):
    ssh_key = os.environ["KEYBUZZ_SSH_KEY"]
if os.environ.get("KEYBUZZ_SSH_KNOWN_HOSTS"):
    ssh_known_hosts_file = os.environ["KEYBUZZ_SSH_KNOWN_HOSTS"]
    ssh_strict_host_key_checking = "yes"

"""Settings of the base OS layer (deploys/base_os.py): kernel settings and the /etc/hosts block markers."""

# Kernel settings: Redis wants overcommit (background saves fork) and a listen backlog of at least its
# tcp-backlog (511); 4096 is the current kernel default, written so that older kernels get it too.
SYSCTLS = {"vm.overcommit_memory": 1, "net.core.somaxconn": 4096}
SYSCTL_FILE = "/etc/sysctl.d/60-keybuzz.conf"

HOSTS_BEGIN = "# BEGIN KEYBUZZ HOSTS"
HOSTS_END = "# END KEYBUZZ HOSTS"

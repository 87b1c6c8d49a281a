"""Settings of the base OS layer (deploys/base_os.py): kernel settings and the /etc/hosts block markers."""

# Kernel settings: Redis wants overcommit (background saves fork) and a listen backlog of at least its
# tcp-backlog (511); 4096 is the current kernel default, written so that older kernels get it too.
SYSCTLS = {"vm.overcommit_memory": 1, "net.core.somaxconn": 4096}
SYSCTL_FILE = "/etc/sysctl.d/60-keybuzz.conf"

HOSTS_BEGIN = "# BEGIN KEYBUZZ HOSTS"
HOSTS_END = "# END KEYBUZZ HOSTS"

FIREWALL_FILE = "/etc/keybuzz/firewall.nft"
# Roles without Docker Engine: K3s brings its own containerd, and dockerd sets the iptables FORWARD policy to DROP,
# which drops pod traffic between K3s nodes (the K3s layer refuses a node where Docker runs).
NO_DOCKER_ROLES = ("k3s_masters", "k3s_workers")
SSH_PORT = 22


def open_ports(role: str) -> tuple[list[str], list[str]]:
    """(tcp, udp) ports the layers of `role` open to the private network: `OPEN_PORTS` ("tcp/6379",
    "udp/8472", "tcp/35672-35682") in keybuzz/<layer>/settings.py of each layer that deploys to the role.

    >>> open_ports("redis")
    (['6379', '26379'], [])
    """
    import importlib

    from keybuzz import ROOT
    from keybuzz.layers import LAYERS

    tcp: list[str] = []
    udp: list[str] = []
    for layer in LAYERS.values():
        if role not in layer.roles or not (ROOT / "keybuzz" / layer.name / "settings.py").is_file():
            continue
        for spec in getattr(importlib.import_module(f"keybuzz.{layer.name}.settings"), "OPEN_PORTS", ()):
            proto, _, port = spec.partition("/")
            bucket = tcp if proto == "tcp" else udp
            if port not in bucket:
                bucket.append(port)
    return tcp, udp


def trusted_networks(role: str) -> list[str]:
    """Networks whose traffic the firewall of `role` accepts on every port: `TRUSTED_NETWORKS` of each layer that
    deploys to the role (K3s: its pod and service networks, which reach the node's kubelet, API and DNS).

    >>> trusted_networks("k3s_workers"), trusted_networks("redis")
    (['10.42.0.0/16', '10.43.0.0/16'], [])
    """
    import importlib

    from keybuzz import ROOT
    from keybuzz.layers import LAYERS

    out: list[str] = []
    for layer in LAYERS.values():
        if role in layer.roles and (ROOT / "keybuzz" / layer.name / "settings.py").is_file():
            settings = importlib.import_module(f"keybuzz.{layer.name}.settings")
            out += [n for n in getattr(settings, "TRUSTED_NETWORKS", ()) if n not in out]
    return out


def admin_networks(value: str | None) -> list[str]:
    """Networks allowed to SSH besides the private one ($KEYBUZZ_ADMIN_NETWORKS, comma-separated CIDRs).

    >>> admin_networks("203.0.113.0/24, 198.51.100.7/32")
    ['203.0.113.0/24', '198.51.100.7/32']
    >>> admin_networks("not-a-network")
    Traceback (most recent call last):
    ValueError: KEYBUZZ_ADMIN_NETWORKS: 'not-a-network' is not an IPv4 network (e.g. 203.0.113.0/24)
    """
    import ipaddress

    out = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(str(ipaddress.IPv4Network(item, strict=False)))
        except ValueError:
            raise ValueError(f"KEYBUZZ_ADMIN_NETWORKS: {item!r} is not an IPv4 network (e.g. 203.0.113.0/24)") from None
    return out

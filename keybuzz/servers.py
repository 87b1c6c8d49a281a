"""servers.tsv: the list of machines (design §G step 1), parsed and validated in one place.

Format: tab-separated, one machine per line, `#` starts a comment line, first non-comment line is
the header `hostname  private_ip  role  note`. `private_ip` is the address on the private network,
or `TBD` when the design gives none yet: any deploy that would touch such a host refuses.

The private network is 10.0.0.0/16 (Hetzner) unless $KEYBUZZ_PRIVATE_NETWORK names another (the lab's
172.30.0.0/24): `private_network()` is the one source, for this check and for the deploys (keybuzz.context).
An address outside it, its network, broadcast or gateway address (Hetzner: the first address), the network or
broadcast address of a /24 inside it, 0.0.0.0 or a loopback address is refused.

Example (the shipped production plan):
    >>> plan = load_servers(ROOT / "servers.tsv")   # raises InputError on the first bad line
    >>> [s.name for s in plan.group("rabbitmq")]
    ['queue-01', 'queue-02', 'queue-03']
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from keybuzz import ROOT
from keybuzz.errors import InputError

HEADER = ("hostname", "private_ip", "role", "note")
UNKNOWN_IP = "TBD"

# role -> (exact group size the design fixes, or None, one-line description)
ROLES = {
    "install": (None, "install-01: holds the credentials and runs pyinfra"),
    "haproxy": (2, "HAProxy in front of PostgreSQL, PgBouncer, Redis, RabbitMQ (§A)"),
    "db": (None, "PostgreSQL / Patroni / PgBouncer nodes"),
    "redis": (3, "Redis + Sentinel (§C)"),
    "rabbitmq": (3, "RabbitMQ quorum cluster queue-01..03 (§D)"),
    "minio": (3, "MinIO distributed minio-01..03 (§B)"),
    "mariadb": (None, "MariaDB Galera (ERPNext)"),
    "proxysql": (2, "ProxySQL in front of Galera (§A)"),
    "k3s_masters": (3, "K3s masters, HA cluster-init + join (§E)"),
    "k3s_workers": (5, "K3s workers (§E)"),
}

# Addresses owned by Hetzner load balancers (§A, §E): no server may take them.
LOAD_BALANCER_IPS = {
    "10.0.0.10": "the private LB in front of haproxy-01/02",
    "10.0.0.20": "the private LB in front of proxysql-01/02",
    "10.0.0.5": "the public K3s LB",
    "10.0.0.6": "the public K3s LB",
}

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

DEFAULT_PRIVATE_NETWORK = "10.0.0.0/16"  # the Hetzner private network of the design (§A, §B, §D)
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def private_network(environ=None) -> ipaddress.IPv4Network:
    """The servers' private network: $KEYBUZZ_PRIVATE_NETWORK, else 10.0.0.0/16. A malformed value is refused.

    >>> str(private_network({})), str(private_network({"KEYBUZZ_PRIVATE_NETWORK": "172.30.0.0/24"}))
    ('10.0.0.0/16', '172.30.0.0/24')
    """
    environ = os.environ if environ is None else environ
    value = environ.get("KEYBUZZ_PRIVATE_NETWORK") or DEFAULT_PRIVATE_NETWORK
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        raise InputError("KEYBUZZ_PRIVATE_NETWORK", 0, f"{value!r} is not an IPv4 network in CIDR form with "
                         "its host bits zero (e.g. 10.0.0.0/16); set it to the servers' private network") from None
    if not any(network.subnet_of(block) for block in _RFC1918) or network.prefixlen > 30:
        raise InputError("KEYBUZZ_PRIVATE_NETWORK", 0, f"{value} is not a private network of at most /30 inside "
                         "10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (RFC 1918, e.g. 10.0.0.0/16); set it to the "
                         "servers' private network")
    return network


def address_problem(address: ipaddress.IPv4Address, network: ipaddress.IPv4Network) -> str | None:
    """Why `address` cannot be a server's private address on `network`, or None.

    >>> net = ipaddress.IPv4Network("10.0.0.0/16")
    >>> address_problem(ipaddress.IPv4Address("10.0.0.11"), net) is None
    True
    >>> address_problem(ipaddress.IPv4Address("10.0.0.1"), net)
    '10.0.0.1 is the gateway of 10.0.0.0/16 (its first address)'
    """
    if address.is_unspecified:
        return f"{address} is the unspecified address (\"any interface\"), not a server's"
    if address.is_loopback:
        return f"{address} is a loopback address, not reachable from the other servers"
    if address not in network:
        return f"{address} is outside the private network {network} (KEYBUZZ_PRIVATE_NETWORK)"
    if address == network.network_address:
        return f"{address} is the network address of {network}"
    if address == network.broadcast_address:
        return f"{address} is the broadcast address of {network}"
    if address == network.network_address + 1:
        return f"{address} is the gateway of {network} (its first address)"
    if network.prefixlen < 24:
        subnet = ipaddress.IPv4Network(f"{address}/24", strict=False)
        if address == subnet.network_address:
            return f"{address} is the network address of the /24 {subnet} (a Hetzner subnet is usually a /24)"
        if address == subnet.broadcast_address:
            return f"{address} is the broadcast address of the /24 {subnet} (a Hetzner subnet is usually a /24)"
    return None


@dataclass(frozen=True)
class Server:
    name: str
    ip: str | None  # None when the design gives no address yet (TBD)
    role: str
    note: str
    line: int


@dataclass(frozen=True)
class ServerPlan:
    path: Path
    servers: tuple[Server, ...]

    def group(self, role: str) -> list[Server]:
        """Servers of one role, in file order.

        >>> [s.ip for s in load_servers(ROOT / "servers.tsv").group("haproxy")]
        ['10.0.0.11', '10.0.0.12']
        """
        return [s for s in self.servers if s.role == role]

    def get(self, name: str) -> Server:
        """The server called `name` (KeyError if absent)."""
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def require_hosts(self, layer: str, roles, renders=()) -> None:
        """Refuse (InputError) a layer with no host to deploy to in any of `roles`, or a role in `renders`
        (whose addresses go into the layer's configuration) that has no host at all.

        >>> plan = ServerPlan(Path("servers.tsv"), ())
        >>> plan.require_hosts("haproxy", ["haproxy"], ["redis"])
        Traceback (most recent call last):
        keybuzz.errors.InputError: servers.tsv: no host with role haproxy, and layer haproxy deploys to them; ...
        """
        roles, renders = list(roles), list(renders)
        if roles and not any(self.group(role) for role in roles):
            raise InputError(self.path, 0, f"no host with role {' or '.join(roles)}, and layer {layer} deploys to "
                             f"them; add the {'/'.join(roles)} lines{_design_size(roles)}")
        for role in renders:
            if not self.group(role):
                raise InputError(self.path, 0, f"no host with role {role}, and layer {layer} renders the {role} "
                                 f"hosts' addresses into its configuration; add the {role} lines{_design_size([role])}")

    def require_addresses(self, roles) -> None:
        """Refuse (InputError) if a server of `roles` has no address yet.

        >>> load_servers(ROOT / "servers.tsv").require_addresses(["redis"])
        Traceback (most recent call last):
        keybuzz.errors.InputError: .../servers.tsv:16: redis-01 (redis) has no private_ip (TBD); write its ...
        """
        for s in self.servers:
            if s.role in roles and s.ip is None:
                raise InputError(
                    self.path, s.line,
                    f"{s.name} ({s.role}) has no private_ip ({UNKNOWN_IP}); "
                    "write its address in the private_ip column before deploying to it",
                )


def _design_size(roles) -> str:
    sizes = [f"{ROLES[r][0]} hosts" for r in roles if r in ROLES and ROLES[r][0]]
    return f" (design: {', '.join(sizes)})" if len(sizes) == len(roles) else ""


def servers_path() -> Path:
    """servers.tsv in use: $KEYBUZZ_SERVERS, else the production plan at the repository root."""
    return Path(os.environ.get("KEYBUZZ_SERVERS") or ROOT / "servers.tsv")


def load_servers(path: str | os.PathLike | None = None, network: str | None = None) -> ServerPlan:
    """Parse and validate servers.tsv; raise InputError naming the file and line of the first fault.

    Addresses must be servers' addresses on `network` (default: `private_network()`).
    """
    path = Path(path) if path else servers_path()
    net = ipaddress.IPv4Network(network) if network else private_network()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(path, 0, f"cannot read the servers file ({e.strerror}); "
                         "set KEYBUZZ_SERVERS to an existing servers.tsv") from None

    servers: list[Server] = []
    names: dict[str, int] = {}
    ips: dict[str, int] = {}
    header_seen = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        cols = [c.strip() for c in raw.rstrip("\r\n").split("\t")]
        if not header_seen:
            if tuple(cols[:3]) != HEADER[:3]:
                raise InputError(path, lineno, "first line must be the tab-separated header "
                                 f"'{chr(9).join(HEADER)}'")
            header_seen = True
            continue
        if len(cols) not in (3, 4):
            raise InputError(path, lineno, f"expected 3 or 4 tab-separated columns "
                             f"(hostname, private_ip, role[, note]), found {len(cols)}; "
                             "separate columns with one tab")
        name, ip, role = cols[:3]
        note = cols[3] if len(cols) == 4 else ""
        if not _HOSTNAME.match(name):
            raise InputError(path, lineno, f"invalid host name {name!r}: use lowercase letters, "
                             "digits and '-' (e.g. redis-01)")
        if name in names:
            raise InputError(path, lineno, f"duplicate host name {name} (first at line {names[name]}); "
                             "each machine appears once")
        names[name] = lineno
        if role not in ROLES:
            raise InputError(path, lineno, f"unknown role {role!r} for {name}; "
                             f"use one of: {', '.join(ROLES)}")
        if ip == UNKNOWN_IP:
            address = None
        else:
            try:
                address = str(ipaddress.IPv4Address(ip))
            except ValueError:
                raise InputError(path, lineno, f"malformed IP {ip!r} for {name}; write a dotted IPv4 "
                                 f"address like 10.0.0.11, or {UNKNOWN_IP} if not known yet") from None
            problem = address_problem(ipaddress.IPv4Address(address), net)
            if problem:
                raise InputError(path, lineno, f"{name}: {problem}; write the server's own address on the "
                                 f"private network {net}")
            if address in LOAD_BALANCER_IPS:
                raise InputError(path, lineno, f"{name} is given {address}, the address of "
                                 f"{LOAD_BALANCER_IPS[address]} (design §A/§E); give the server its own address")
            if address in ips:
                raise InputError(path, lineno, f"duplicate IP {address} for {name} "
                                 f"(first at line {ips[address]}); each machine has its own address")
            ips[address] = lineno
        if role == "minio" and name.startswith("k3s-worker"):
            raise InputError(path, lineno, f"{name} cannot be in the minio group: design §B keeps "
                             "k3s-worker-05 a K3s worker; MinIO runs on minio-01..03")
        servers.append(Server(name, address, role, note, lineno))

    if not header_seen:
        raise InputError(path, 1, "empty servers file: expected the header "
                         f"'{chr(9).join(HEADER)}' and one line per machine")
    for role, (size, _desc) in ROLES.items():
        members = [s for s in servers if s.role == role]
        if size is not None and members and len(members) != size:
            raise InputError(path, members[-1].line, f"group {role} has {len(members)} host(s), the design "
                             f"requires exactly {size}; add or remove {role} lines")
    return ServerPlan(path, tuple(servers))

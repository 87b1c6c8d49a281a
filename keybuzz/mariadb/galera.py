"""Which node starts the Galera cluster, decided from what each node holds: pure, so the deploy and the
testbed apply one logic (deploys/mariadb.py over SSH, keybuzz/mariadb/testbed.py on containers).

Inputs per node (`NodeState`): whether its server runs and what it reports (wsrep_cluster_status,
wsrep_local_state_comment, wsrep_cluster_size, wsrep_cluster_state_uuid), its grastate.dat (uuid, seqno,
safe_to_bootstrap) and, after an unclean stop (seqno -1), the position `mysqld --wsrep-recover` found in
InnoDB. Galera's own rules (Galera docs, "Restarting the cluster" / "Crash recovery"): a cluster is started by
bootstrapping ONE node, the one with the most advanced state (highest seqno of the same cluster uuid); the
others join it and get IST or SST from it.

    >>> fresh = [NodeState(n) for n in ("maria-01", "maria-02", "maria-03")]
    >>> decide(fresh)
    Decision(action='bootstrap', nodes=('maria-01',), reason='first install: no node holds any state')
    >>> U = "6ee8d6e8-0000-11ef-8000-000000000001"
    >>> crashed = [NodeState("maria-01", grastate=Grastate(U, -1, False), recovered=Position(U, 41)),
    ...            NodeState("maria-02", grastate=Grastate(U, -1, False), recovered=Position(U, 43)),
    ...            NodeState("maria-03", grastate=Grastate(U, -1, False), recovered=Position(U, 42))]
    >>> decide(crashed).action, decide(crashed).nodes
    ('bootstrap', ('maria-02',))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

ZERO_UUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class Grastate:
    uuid: str
    seqno: int
    safe_to_bootstrap: bool


@dataclass(frozen=True)
class Position:
    uuid: str
    seqno: int


@dataclass(frozen=True)
class NodeState:
    name: str
    running: bool = False
    cluster_status: str = ""  # wsrep_cluster_status: Primary / non-Primary / Disconnected
    local_state: str = ""  # wsrep_local_state_comment: Synced / Donor/Desynced / Joining / ...
    cluster_size: int = 0
    cluster_uuid: str = ""
    grastate: Grastate | None = None  # None: no grastate.dat (never started)
    recovered: Position | None = None  # from --wsrep-recover, when asked
    last_committed: int | None = None  # wsrep_last_committed of a running node (answers without a Primary too)

    @property
    def primary(self) -> bool:
        return self.running and self.cluster_status == "Primary"

    @property
    def synced(self) -> bool:
        return self.primary and self.local_state == "Synced"

    @property
    def has_state(self) -> bool:
        return self.grastate is not None and self.grastate.uuid not in ("", ZERO_UUID)

    @property
    def position(self) -> Position | None:
        """The last committed position: grastate.dat's after a clean stop, else what recovery found."""
        if not self.has_state:
            return None
        assert self.grastate is not None
        if self.grastate.seqno >= 0:
            return Position(self.grastate.uuid, self.grastate.seqno)
        if self.running and self.last_committed is not None and self.last_committed >= 0:
            # a server left running without a Primary component (e.g. restarted by systemd after a power cut)
            return Position(self.grastate.uuid, self.last_committed)
        return self.recovered


@dataclass(frozen=True)
class Decision:
    """action: none | start (join a running Primary cluster) | recover (run --wsrep-recover on `nodes`, then
    decide again) | bootstrap (nodes[0] starts a new cluster; then the others start) | refuse (reason says why)."""

    action: str
    nodes: tuple[str, ...] = ()
    reason: str = ""


def parse_grastate(text: str) -> Grastate | None:
    """grastate.dat's fields, or None when the file is absent or empty.

    >>> parse_grastate('''# GALERA saved state
    ... version: 2.1
    ... uuid:    6ee8d6e8-0000-11ef-8000-000000000001
    ... seqno:   -1
    ... safe_to_bootstrap: 0
    ... ''')
    Grastate(uuid='6ee8d6e8-0000-11ef-8000-000000000001', seqno=-1, safe_to_bootstrap=False)
    >>> parse_grastate("") is None
    True
    """
    fields = dict(re.findall(r"^\s*(uuid|seqno|safe_to_bootstrap):\s*(\S+)\s*$", text, re.MULTILINE))
    if "uuid" not in fields:
        return None
    return Grastate(fields["uuid"], int(fields.get("seqno", "-1")), fields.get("safe_to_bootstrap", "0") == "1")


def parse_recovered(log: str) -> Position | None:
    """The position `mysqld --wsrep-recover` logs ("WSREP: Recovered position: <uuid>:<seqno>"), else None.

    >>> parse_recovered("[Note] WSREP: Recovered position: 6ee8d6e8-0000-11ef-8000-000000000001:1234")
    Position(uuid='6ee8d6e8-0000-11ef-8000-000000000001', seqno=1234)
    >>> parse_recovered("[ERROR] Aborting") is None
    True
    """
    found = re.findall(r"Recovered position:\s*([0-9a-fA-F-]{36}):(-?\d+)", log)
    if not found:
        return None
    uuid, seqno = found[-1]
    return Position(uuid, int(seqno))


def decide(nodes: Sequence[NodeState]) -> Decision:
    """What to do to have every node in one Primary cluster (`nodes` in inventory order).

    A running Primary cluster: start the nodes that are not in it (they join; IST or SST).
    >>> U = "6ee8d6e8-0000-11ef-8000-000000000001"
    >>> up = NodeState("m1", True, "Primary", "Synced", 2, U, Grastate(U, -1, False))
    >>> up3 = NodeState("m3", True, "Primary", "Synced", 2, U)
    >>> decide([up, NodeState("m2", grastate=Grastate(U, 7, False)), up3])
    Decision(action='start', nodes=('m2',), reason='m2 joins the Primary cluster')

    Everything in place:
    >>> decide([NodeState(f"m{i}", True, "Primary", "Synced", 3, U) for i in (1, 2, 3)]).action
    'none'

    Full outage: positions unknown (seqno -1) -> recover them first; two cluster uuids -> refuse.
    >>> down = [NodeState("m1", grastate=Grastate(U, -1, False)), NodeState("m2", grastate=Grastate(U, 9, False))]
    >>> decide(down)
    Decision(action='recover', nodes=('m1',), reason='positions unknown after an unclean stop: m1')
    >>> V = "7ee8d6e8-0000-11ef-8000-000000000002"
    >>> decide([NodeState("m1", grastate=Grastate(U, 5, False)),
    ...         NodeState("m2", grastate=Grastate(V, 9, False))]).action
    'refuse'

    A clean full shutdown: Galera marks the last node to leave safe_to_bootstrap: 1.
    >>> decide([NodeState("m1", grastate=Grastate(U, 9, False)), NodeState("m2", grastate=Grastate(U, 10, True))])
    Decision(action='bootstrap', nodes=('m2',), reason='most advanced node: m2 at seqno 10 (m1: 9, m2: 10)')
    """
    if not nodes:
        return Decision("refuse", reason="no MariaDB node in the inventory")
    primary = [n for n in nodes if n.primary]
    if primary:
        uuids = sorted({n.cluster_uuid for n in primary})
        if len(uuids) > 1:
            return Decision("refuse", reason="running nodes are Primary in different clusters (split brain: "
                            + ", ".join(f"{n.name} {n.cluster_uuid}" for n in primary) + "): stop the wrong side "
                            "by hand, see the README runbook")
        outside = tuple(n.name for n in nodes if not n.primary)
        if outside:
            return Decision("start", outside, f"{', '.join(outside)} joins the Primary cluster" if len(outside) == 1
                            else f"{', '.join(outside)} join the Primary cluster")
        if all(n.synced for n in nodes) and all(n.cluster_size == len(nodes) for n in nodes):
            return Decision("none", reason=f"{len(nodes)} nodes Synced in one Primary cluster")
        return Decision("none", reason="every node is in the Primary cluster (some not Synced yet: wait)")
    # No Primary component anywhere: a first install, or every node stopped (cleanly or not).
    stateful = [n for n in nodes if n.has_state]
    if not stateful:
        if any(n.running for n in nodes):
            return Decision("refuse", reason="nodes run without a Primary cluster and hold no state: stop them "
                            "(systemctl stop mariadb) and run the layer again")
        return Decision("bootstrap", (nodes[0].name,), "first install: no node holds any state")
    uuids = sorted({n.grastate.uuid for n in stateful if n.grastate})
    if len(uuids) > 1:
        return Decision("refuse", reason="the nodes' data belong to different clusters ("
                        + ", ".join(f"{n.name} {n.grastate.uuid}" for n in stateful if n.grastate)
                        + "): keep one cluster's data, move the other away, see the README runbook")
    unknown = tuple(n.name for n in stateful if n.position is None)
    if unknown:
        return Decision("recover", unknown, f"positions unknown after an unclean stop: {', '.join(unknown)}")
    positions = {n.name: n.position for n in stateful}
    if any(p is None or p.uuid != uuids[0] or p.seqno < 0 for p in positions.values()):
        return Decision("refuse", reason="cannot tell which node is most advanced: "
                        + ", ".join(f"{k} {p}" for k, p in positions.items()) + " (see the README runbook)")
    best = max(p.seqno for p in positions.values() if p)
    # ties: the first in inventory order (same data); a node Galera marked safe wins only if it is the most advanced
    candidates = [n for n in stateful if n.position and n.position.seqno == best]
    chosen = next((n for n in candidates if n.grastate and n.grastate.safe_to_bootstrap), candidates[0])
    summary = ", ".join(f"{k}: {p.seqno}" for k, p in positions.items() if p)
    return Decision("bootstrap", (chosen.name,), f"most advanced node: {chosen.name} at seqno {best} ({summary})")


def parse_node_state(name: str, lines: Sequence[str]) -> NodeState:
    """NodeState from `keybuzz-mariadb state` (key=value lines; the deploy's fact).

    >>> parse_node_state("maria-02", ["running=0", "grastate_uuid=6ee8d6e8-0000-11ef-8000-000000000001",
    ...     "grastate_seqno=-1", "grastate_safe_to_bootstrap=0", "recovered=6ee8d6e8-0000-11ef-8000-000000000001:77"]
    ...     ).position
    Position(uuid='6ee8d6e8-0000-11ef-8000-000000000001', seqno=77)
    >>> parse_node_state("maria-01", ["running=1", "wsrep_cluster_status=Primary", "wsrep_cluster_size=3",
    ...     "wsrep_local_state_comment=Synced"]).synced
    True
    """
    kv = dict(line.strip().split("=", 1) for line in lines if "=" in line)
    grastate = None
    if "grastate_uuid" in kv:
        grastate = Grastate(kv["grastate_uuid"], int(kv.get("grastate_seqno", "-1") or -1),
                            kv.get("grastate_safe_to_bootstrap") == "1")
    recovered = None
    if kv.get("recovered"):
        uuid, _, seqno = kv["recovered"].rpartition(":")
        if uuid and seqno.lstrip("-").isdigit():
            recovered = Position(uuid, int(seqno))
    return NodeState(name, running=kv.get("running") == "1", cluster_status=kv.get("wsrep_cluster_status", ""),
                     local_state=kv.get("wsrep_local_state_comment", ""),
                     cluster_size=int(kv.get("wsrep_cluster_size") or 0),
                     cluster_uuid=kv.get("wsrep_cluster_state_uuid", ""), grastate=grastate, recovered=recovered,
                     last_committed=int(kv["wsrep_last_committed"]) if kv.get("wsrep_last_committed", "").lstrip(
                         "-").isdigit() else None)


class Refused(RuntimeError):
    """The layer will not start anything: the reason says why and what to do (README runbook)."""


class Nodes(Protocol):
    """How `converge` acts on the nodes: over SSH with keybuzz-mariadb (deploys/mariadb.py) or on the testbed's
    containers (keybuzz/mariadb/testbed.py)."""

    def state(self, name: str) -> NodeState:
        """The node's state; a stopped node with grastate seqno -1 comes with its --wsrep-recover position."""

    def stop(self, name: str) -> None: ...

    def bootstrap(self, name: str) -> None:
        """Start a new cluster from this node (data initialised when empty) and wait until it is Primary."""

    def apply_users(self, name: str) -> None: ...

    def start(self, name: str) -> None:
        """Start (or restart a non-Primary) server and wait until it is Synced in the Primary cluster."""


def converge(names: Sequence[str], nodes: Nodes) -> list[str]:
    """Bring every node into one Primary cluster, by `decide`; returns what was done ([] when nothing).

    Servers running without a Primary component (e.g. restarted by systemd after a power cut, waiting for
    peers) are stopped first: their position is then read from their data, and they would not let the chosen
    node's new cluster be the only one. Joiners start one at a time (one state transfer at a time).

    >>> class Fake:
    ...     def __init__(self): self.up = set(); self.did = []
    ...     def state(self, n):
    ...         return NodeState(n, n in self.up, "Primary" if n in self.up else "", "Synced", len(self.up), "u")
    ...     def stop(self, n): self.up.discard(n)
    ...     def bootstrap(self, n): self.up.add(n)
    ...     def apply_users(self, n): self.did.append(f"users {n}")
    ...     def start(self, n): self.up.add(n)
    >>> fake = Fake()
    >>> converge(["m1", "m2", "m3"], fake), fake.did
    (['bootstrap m1', 'start m2', 'start m3'], ['users m1'])
    >>> converge(["m1", "m2", "m3"], fake)
    []
    """
    done: list[str] = []
    states = [nodes.state(n) for n in names]
    decision = decide(states)
    stray = [s.name for s in states if s.running and not s.primary]
    if decision.action in ("recover", "bootstrap") and stray:
        for name in stray:
            nodes.stop(name)
            done.append(f"stop {name}")
        states = [nodes.state(n) for n in names]
        decision = decide(states)
    if decision.action == "recover":
        raise Refused(f"{decision.reason}: `mysqld --wsrep-recover` found no position (journalctl -u mariadb)")
    if decision.action == "refuse":
        raise Refused(decision.reason)
    if decision.action == "bootstrap":
        chosen = decision.nodes[0]
        nodes.bootstrap(chosen)
        nodes.apply_users(chosen)
        done.append(f"bootstrap {chosen}")
        decision = decide([nodes.state(n) for n in names])
    if decision.action == "start":
        for name in decision.nodes:
            nodes.start(name)
            done.append(f"start {name}")
    elif decision.action != "none":
        raise Refused(f"after the bootstrap: {decision.reason}")
    return done

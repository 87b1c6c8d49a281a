"""Facts shared by the layers, written the way pyinfra's own are: a command, and what its output means.

    host.get_fact(ServiceActive, service="rabbitmq")   # True / False
    host.get_fact(UserOfUid, uid="999")                # "systemd-coredump" on many Debian 12 hosts, or None
"""

from __future__ import annotations

from pyinfra.api import FactBase


class ServiceActive(FactBase):
    """True when the systemd unit `service` is active.

    >>> ServiceActive().process(["active"]), ServiceActive().process(["inactive"])
    (True, False)
    """

    def command(self, service):
        return f"systemctl is-active {service} || true"

    def process(self, output):
        return bool(output) and output[0].strip() == "active"


class UserOfUid(FactBase):
    """Name of the host account with this uid, or None (file ownership facts show names, not uids).

    >>> UserOfUid().process(["systemd-coredump"]), UserOfUid().process([""])
    ('systemd-coredump', None)
    """

    def command(self, uid):
        return f"getent passwd {uid} | cut -d: -f1 || true"

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None

"""Who owns a run, and when an owner is dead.

On the same host an owner is dead when its process is gone (or a zombie); on another
host, when its lease has expired (the owner renews it by heartbeat). A live owner is
never displaced without ``force``.
"""

from __future__ import annotations

import os
import socket
import time

from baton.observe.events import new_id
from baton.stores.base import Owner

LEASE_S = 30.0
HEARTBEAT_S = 10.0


def new_owner() -> Owner:
    return Owner(host=socket.gethostname(), pid=os.getpid(), token=new_id(), lease_until=time.time() + LEASE_S)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A killed child that nobody has reaped yet is a zombie ('Z'): dead for our purposes.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def owner_is_dead(owner: Owner, *, now: float | None = None) -> bool:
    if owner.host == socket.gethostname():
        return owner.pid != os.getpid() and not _pid_alive(owner.pid)
    return (now or time.time()) > owner.lease_until


def describe(owner: Owner) -> str:
    return f"pid {owner.pid} on {owner.host} (lease until {time.strftime('%H:%M:%S', time.localtime(owner.lease_until))})"

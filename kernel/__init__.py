"""The Linux data plane through pyroute2: network namespaces, KERNEL (veth) wires, liveness pings.

Map:

* :func:`resolve_namespace` turns NSM's ``inodeURL`` (``file:///proc/<pid>/ns/net``,
  ``file:///run/netns/<name>``, ``inode://<dev>/<ino>``) into a :class:`Namespace`;
  :func:`inode_url` names a namespace file as ``inode://<dev>/<ino>``.
* :class:`Netlink`, from :func:`open_netlink` (owned, closed on exit) or :func:`current_netlink`
  (this run's shared one): the executor all kernel work goes through, with capacities in
  :class:`NetlinkLimits` per :class:`Lane` and :class:`NetlinkStatistics`.

Guarantees:

* pyroute2 is used only in this package, through its sync API on dedicated handle threads (one
  per namespace and concurrent job, each entered once with setns(2) and retired after
  ``idle_timeout`` of quiet); no code here enters a namespace in the Trio thread or in Trio's
  worker threads, and no asyncio loop is involved on the Trio side.
* Creations (``SETUP``), removals (``TEARDOWN``) and probes (``PROBE``) have separate
  capacities, so a request never queues behind a backlog of teardowns.
* Failures are :mod:`trionsm.errors` classes naming the hop, the namespace and the cause.
"""

from __future__ import annotations

from ._netlink import Lane, Netlink, NetlinkLimits, NetlinkStatistics, current_netlink, open_netlink
from ._netns import Namespace, inode_url, resolve_namespace

__all__ = [
    "Lane",
    "Namespace",
    "Netlink",
    "NetlinkLimits",
    "NetlinkStatistics",
    "current_netlink",
    "inode_url",
    "open_netlink",
    "resolve_namespace",
]

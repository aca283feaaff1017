"""The Linux data plane through pyroute2: namespaces, KERNEL (veth) and VXLAN wires, liveness pings.

Map:

* :func:`resolve_namespace` turns NSM's ``inodeURL`` (``file:///proc/<pid>/ns/net``,
  ``file:///run/netns/<name>``, ``inode://<dev>/<ino>``) into a :class:`Namespace`;
  :func:`inode_url` names a namespace file as ``inode://<dev>/<ino>``.
* :func:`create_kernel_wire` makes a connection's veth pair between the client's and the
  endpoint's namespace (names, alias ``trionsm:<owner>:<connection id>``, MTU, addresses, routes,
  neighbours, policy routes) and returns a :class:`KernelWire` of two :class:`WireEnd`;
  :func:`remove_wire` deletes a connection's interfaces by alias; :func:`check_wire` says whether
  a wire is still whole (a refresh); :func:`list_wires` lists the :class:`WireInterface` carrying
  our aliases, for reconcile.
* :func:`create_vxlan_end` makes one side of a remote connection's VXLAN wire: a vxlan device
  whose tunnel lives in the node's underlay namespace and whose interface lives in the workload's
  (:class:`VxlanEnd`); the kernel's refusal of a VNI already used in that underlay is
  :class:`VniInUse`; :func:`vxlan_macs` derives both sides' MAC addresses from the tunnel;
  :func:`vxlan_mtu` reads the most MTU an end over the node's underlay may have.
  ``remove_wire``, ``check_wire`` and ``list_wires`` take vxlan ends as well.
* Reconcile: :func:`alias_for` / :func:`parse_alias` (:class:`WireAlias`) write and read the
  alias naming the forwarder that made an interface and the NSC's connection id;
  :func:`scan_namespaces` finds a forwarder's :class:`Interface` s in every namespace of the
  host; :func:`inspect_wire` compares the interfaces a plan names with it (an
  :class:`Inspection`: adopt as it is, or why not) and :func:`lookup` reads one;
  :func:`inspect_vxlan_end` does the same for one side's vxlan end planned by
  :func:`plan_vxlan_end` (:class:`VxlanPlan`; a :class:`VxlanInspection`: VNI, tunnel,
  underlay, MAC, MTU, addresses, routes, neighbours);
  :func:`remove_interfaces` removes exactly (namespace, index and alias).
* :func:`ping` and :func:`check_liveness`: ICMP echo from inside a namespace (NSM's kernel
  liveness check: every src/dst pair, ``LIVENESS_PACKETS`` echoes over ``LIVENESS_TIMEOUT``).
* :class:`Netlink`, from :func:`open_netlink` (owned, closed on exit) or :func:`current_netlink`
  (this run's shared one, the default everywhere): the executor every call above goes through,
  with capacities in :class:`NetlinkLimits` per :class:`Lane` and :class:`NetlinkStatistics`.
* :func:`plan_wire` checks a wire's input without touching the kernel (:class:`WirePlan`).

Guarantees:

* pyroute2 is used only in this package, through its sync API on dedicated handle threads (one
  per namespace and concurrent job, each entered once with setns(2) and retired after
  ``idle_timeout`` of quiet); no code here enters a namespace in the Trio thread or in Trio's
  worker threads, and no asyncio loop is involved on the Trio side.
* Nothing here keeps a deleted namespace (and the interfaces in it) alive: handle threads retire
  after 1 s of quiet, and within ``watch_interval`` (0.1 s) of a namespace losing its name
  (``ip netns del``, its process exiting); every job first checks that its namespace's path
  still names it, so a namespace deleted or made again under its name is never served by an old
  handle; ping sockets close before :func:`ping` returns. ``Netlink.aclose`` (the end of
  :func:`open_netlink`) returns only once every handle thread it started has exited.
* A :class:`Namespace` is its inode, not its path: a recorded one whose path went stale (the
  ``/proc/<pid>/ns/net`` of an NSC that died while its pod's namespace lives on) is found again
  by its inode for every later job (removal, :func:`check_wire`, inspection), so its wire ends
  are still removed; NotFound (gone, nothing to remove) only once no path on the host names it.
* Kernel work for different connections runs concurrently; creations (``SETUP``), removals
  (``TEARDOWN``) and pings (``PROBE``) have separate capacities, so a request never queues behind
  a backlog of teardowns.
* Every interface we create carries the alias ``trionsm:<owner>:<connection id>``; a failed or
  cancelled :func:`create_kernel_wire` leaves nothing behind.
* Failures are :mod:`trionsm.errors` classes naming the hop, the namespace, the interface and the
  cause: InvalidArgument (bad input, before any change), NotFound and PermissionDenied
  (namespaces), AlreadyExists (a taken name or address).
* Calls are cancellable; a kernel step that has started runs to its end first. So a pyroute2
  call that never returns (a kernel that never answers a netlink request) holds its caller, its
  lane's capacity and ``Netlink.aclose`` for as long: nothing here bounds it but the process's
  own shutdown bound (a node's ``shutdown_timeout``), past which the process exits.
"""

from __future__ import annotations

from ._netlink import Lane, Netlink, NetlinkLimits, NetlinkStatistics, current_netlink, open_netlink
from ._netns import Namespace, inode_url, resolve_namespace
from ._ping import LIVENESS_INTERVAL, LIVENESS_PACKETS, LIVENESS_TIMEOUT, check_liveness, ping
from ._reconcile import (
    Inspection,
    Interface,
    inspect_wire,
    lookup,
    remove_interfaces,
    scan_namespaces,
)
from ._veth import (
    KernelWire,
    WireEnd,
    WireInterface,
    check_wire,
    create_kernel_wire,
    list_wires,
    remove_wire,
)
from ._vxlan import (
    DEFAULT_VXLAN_PORT,
    MAX_VNI,
    Side,
    VniInUse,
    VxlanEnd,
    VxlanPlan,
    create_vxlan_end,
    plan_vxlan_end,
    vxlan_macs,
    vxlan_mtu,
)
from ._vxlan_reconcile import VxlanInspection, inspect_vxlan_end
from ._wireplan import (
    ALIAS_PREFIX,
    DEFAULT_CLIENT_IFNAME,
    IFNAME_MAX,
    WireAlias,
    WirePlan,
    alias_for,
    parse_alias,
    plan_wire,
)

__all__ = [
    "ALIAS_PREFIX",
    "DEFAULT_CLIENT_IFNAME",
    "DEFAULT_VXLAN_PORT",
    "IFNAME_MAX",
    "LIVENESS_INTERVAL",
    "LIVENESS_PACKETS",
    "LIVENESS_TIMEOUT",
    "MAX_VNI",
    "Inspection",
    "Interface",
    "KernelWire",
    "Lane",
    "Namespace",
    "Netlink",
    "NetlinkLimits",
    "NetlinkStatistics",
    "Side",
    "VniInUse",
    "VxlanEnd",
    "VxlanInspection",
    "VxlanPlan",
    "WireAlias",
    "WireEnd",
    "WireInterface",
    "WirePlan",
    "alias_for",
    "check_liveness",
    "check_wire",
    "create_kernel_wire",
    "create_vxlan_end",
    "current_netlink",
    "inode_url",
    "inspect_vxlan_end",
    "inspect_wire",
    "list_wires",
    "lookup",
    "open_netlink",
    "parse_alias",
    "ping",
    "plan_vxlan_end",
    "plan_wire",
    "remove_interfaces",
    "remove_wire",
    "resolve_namespace",
    "scan_namespaces",
    "vxlan_macs",
    "vxlan_mtu",
]

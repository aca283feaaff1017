"""An in-process mesh builder: registry, nodes (nsmgr + forwarders), endpoints and clients.

Like NSM's sandbox: every part of every node runs in one Trio run, joined by ``inproc://``
transports (every message serialised by default, so wire bugs cannot hide) or by real sockets.
Each part is killable and restartable on the same URL, which is how the heal tests inject faults.

>>> async with open_mesh(nodes=2) as mesh:                       # doctest: +SKIP
...     await mesh.register_service("icmp")
...     await mesh.add_endpoint("nse-1", "icmp", node=1, cidr="169.254.1.0/24")
...     async with mesh.connect("noop://icmp/nsm-1", node=0) as conn:
...         print(len(conn.connection.path.path_segments))         # 6: NSC, nsmgr, fwd, nsmgr...
...     await mesh.kill("nse-1")                                   # a crash: no unregister

Killing a part cancels it abruptly (its registration stays until it expires, as after a real
crash); :meth:`Mesh.restart` starts it again with the same name and URL. A network service is
kept registered by a lease part (``ns:<name>``), so it survives a registry restart as an
operator's re-applied resource would.

The same roles also run as real processes (``python -m trionsm.cli ...`` over unix sockets):
:func:`open_process_mesh` (:class:`ProcessMesh`: start, ``kill`` = SIGKILL, ``stop`` = SIGTERM,
``restart`` on the same socket, ``leaks``), from :mod:`trionsm._processes`.

With ``kernel=True`` the forwarders program KERNEL wires (``mechanisms=(KERNEL, NOOP)``) through
one kernel executor the mesh owns (:attr:`Mesh.netlink`, closed when the mesh exits), and clients
use it for their liveness checks. The actors still run in this process; only interfaces live in
namespaces: ``add_endpoint(..., netns=url)`` serves an NSE "in" a namespace and
``connect("kernel://svc/nsm-1", netns=url)`` puts a client's interface in one.
Remote connections go over VXLAN: each node gets an underlay namespace (``tnsm-ul<node>-...``,
address ``169.254.200.<node + 1>/24``), all joined by a bridge in a namespace of its own, and
the node's forwarders get ``tunnel_ip`` and ``underlay_netns`` from it (:attr:`Mesh.underlay`).
:meth:`Mesh.add_netns` makes a namespace the mesh deletes on exit, and :meth:`Mesh.remove_netns`
deletes one now (a pod died: with its namespace go its interfaces, and the veth peers of those).

Leaks: :meth:`Mesh.baseline` snapshots every role's supervision tree; :meth:`Mesh.leaks` then
lists what is left behind (connections in a hop's monitor hub, connection actors, a tree that
differs from its baseline, and in a kernel mesh any interface left in a node's underlay), so a
test ends with ``assert await mesh.leaks(baseline) == []``.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio.testing

from trionsm._namespaces import (
    create_netns,
    delete_namespaces,
    delete_netns,
    make_netns,
    netns_name,
    netns_url,
)
from trionsm._processes import ProcessMesh, RoleProcess, open_process_mesh
from trionsm.actors._connection import ServerHop
from trionsm.actors._mechanisms import KERNEL, NOOP, VXLAN
from trionsm.actors.client import ClientConnection, open_connection
from trionsm.actors.endpoint import serve_endpoint
from trionsm.actors.forwarder import DataPlane, serve_forwarder
from trionsm.actors.lease import serve_service_lease
from trionsm.actors.nsmgr import serve_nsmgr
from trionsm.actors.registry import serve_registry
from trionsm.api.registry import NetworkService
from trionsm.supervision import SupervisorTree

if TYPE_CHECKING:
    from trionsm.kernel import Netlink

__all__ = [
    "Mesh",
    "Part",
    "ProcessMesh",
    "RoleProcess",
    "open_mesh",
    "open_process_mesh",
    "tree_shape",
]

_meshes = itertools.count(1)


@attrs.define(eq=False)
class Part:
    """One running piece of the mesh (registry, nsmgr, forwarder, endpoint)."""

    name: str
    url: str
    start: Callable[..., Awaitable[None]]
    handle: Any = None
    scope: trio.CancelScope | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    @property
    def running(self) -> bool:
        return self.scope is not None and not self.done.is_set()


class Mesh:
    """A running in-process mesh (see :func:`open_mesh`)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        prefix: str,
        options: dict[str, Any],
        netlink: Netlink | None = None,
        namespaces: list[str] | None = None,
        underlay: Underlay | None = None,
    ) -> None:
        self._nursery = nursery
        self._prefix = prefix
        self._options = options
        self.parts: dict[str, Part] = {}
        self.registry_url = f"inproc://{prefix}-registry"
        self.nodes: list[str] = []
        self.netlink = netlink
        """The kernel executor of a ``kernel=True`` mesh (None otherwise)."""
        self.namespaces: list[str] = namespaces if namespaces is not None else []
        """The names of the namespaces :meth:`add_netns` made (deleted when the mesh exits)."""
        self.underlay = underlay
        """The nodes' network for VXLAN in a ``kernel=True`` mesh (None otherwise)."""

    def url(self, name: str) -> str:
        return f"inproc://{self._prefix}-{name}"

    def nsmgr_url(self, node: int) -> str:
        return self.url(f"nsmgr-{node}")

    def __getitem__(self, name: str) -> Any:
        """The handle of the running part ``name``."""
        return self.parts[name].handle

    async def _run(self, part: Part) -> None:
        part.done = trio.Event()

        async def body(*, task_status: trio.TaskStatus[Any]) -> None:
            with trio.CancelScope() as scope:
                part.scope = scope
                try:
                    await part.start(task_status=task_status)
                finally:
                    part.done.set()

        part.handle = await self._nursery.start(body)

    async def _add(self, name: str, start: Callable[..., Awaitable[None]]) -> Any:
        part = Part(name, self.url(name), start)
        self.parts[name] = part
        await self._run(part)
        return part.handle

    async def kill(self, name: str) -> None:
        """Stop ``name`` at once (as a crash would: nothing is unregistered)."""
        part = self.parts[name]
        assert part.scope is not None
        part.scope.cancel()
        await part.done.wait()

    async def restart(self, name: str) -> Any:
        """Start ``name`` again with its name and URL (kill it first if it runs)."""
        part = self.parts[name]
        if part.running:
            await self.kill(name)
        await self._run(part)
        return part.handle

    # -- building --------------------------------------------------------------------------------

    async def _start_registry(self) -> None:
        async def start(*, task_status: trio.TaskStatus[Any]) -> None:
            await serve_registry(
                self.registry_url,
                roundtrip_bytes=self._options["roundtrip_bytes"],
                task_status=task_status,
                **self._options["registry_options"],
            )

        part = Part("registry", self.registry_url, start)
        self.parts["registry"] = part
        await self._run(part)

    async def add_node(self, forwarders: int = 1) -> int:
        """Add a node (an nsmgr and ``forwarders`` forwarders); returns its index."""
        node = len(self.nodes)
        nsmgr = f"nsmgr-{node}"
        self.nodes.append(nsmgr)
        if self.underlay is not None:
            await self.underlay.add(node)
        client = {"roundtrip_bytes": self._options["roundtrip_bytes"]}
        await self._add(
            nsmgr,
            partial(
                serve_nsmgr,
                nsmgr,
                self.url(nsmgr),
                registry=self.registry_url,
                client_options=client,
                roundtrip_bytes=self._options["roundtrip_bytes"],
            ),
        )
        for index in range(forwarders):
            await self.add_forwarder(f"forwarder-{node}-{index}", node=node)
        return node

    async def add_forwarder(self, name: str, *, node: int, **options: Any) -> Any:
        """Start a forwarder on ``node``; ``options`` go to ``serve_forwarder`` (overriding the
        mesh's: ``tunnel_ip=""`` makes one without VXLAN). A mesh's forwarders keep their
        connections and wires when stopped (``keep_dataplane_on_stop=True``), so :meth:`kill`
        is a crash; ``reconcile_grace`` sets how long a restarted one holds its leftovers."""

        def remote(url: str) -> bool:  # towards another node's nsmgr
            return url in {self.nsmgr_url(i) for i in range(len(self.nodes))}

        kernel: dict[str, Any] = {"keep_dataplane_on_stop": True}
        if self.netlink is not None:
            kernel["mechanisms"] = (KERNEL, VXLAN, NOOP)
            kernel["dataplane"] = DataPlane(self.netlink)
        if self.underlay is not None:
            kernel["tunnel_ip"] = self.underlay.address(node)
            kernel["underlay_netns"] = self.underlay.url(node)
        kernel.update(options)
        return await self._add(
            name,
            partial(
                serve_forwarder,
                name,
                self.url(name),
                nsmgr=self.nsmgr_url(node),
                remote=remote,
                **kernel,
                client_options={"roundtrip_bytes": self._options["roundtrip_bytes"]},
                lease_options={"unregister": False},
                roundtrip_bytes=self._options["roundtrip_bytes"],
            ),
        )

    async def add_endpoint(
        self, name: str, services: str | list[str], *, node: int = 0, **options: Any
    ) -> Any:
        """Start an endpoint on ``node`` (registered through that node's nsmgr)."""
        return await self._add(
            name,
            partial(
                serve_endpoint,
                name,
                self.url(name),
                services=services,
                registry=self.nsmgr_url(node),
                lease_options={
                    "unregister": False,
                    "roundtrip_bytes": self._options["roundtrip_bytes"],
                },
                roundtrip_bytes=self._options["roundtrip_bytes"],
                **options,
            ),
        )

    async def register_service(self, service: str | NetworkService) -> NetworkService:
        """Register a network service at the registry and keep it registered (part ``ns:<name>``).

        Registering a name again replaces the service (the registry's watchers see the update).
        """
        ns = NetworkService(name=service) if isinstance(service, str) else service
        name = f"ns:{ns.name}"

        async def start(*, task_status: trio.TaskStatus[Any]) -> None:
            await serve_service_lease(
                self.registry_url,
                ns,
                roundtrip_bytes=self._options["roundtrip_bytes"],
                task_status=task_status,
            )

        old = self.parts.get(name)
        if old is not None and old.running:
            await self.kill(name)
        lease = await self._add(name, start)
        registered: NetworkService = lease.current
        return registered

    # -- namespaces ------------------------------------------------------------------------------

    async def add_netns(self, prefix: str = "tnsm-") -> str:
        """A new network namespace ``<prefix><random>``; returns its ``file:///run/netns/`` URL.

        The mesh deletes it by its exact name when it exits (after its executor has let go).
        """
        return netns_url(await make_netns(prefix, into=self.namespaces))

    async def remove_netns(self, url: str) -> None:
        """Delete the namespace ``file:///run/netns/<name>`` now, as when a pod dies.

        The mesh's executor first lets go of it (idle handles close), so nothing of ours keeps
        it, and its interfaces, alive. Idempotent.
        """
        if self.netlink is not None:
            from trionsm.errors import NotFound
            from trionsm.kernel import resolve_namespace

            try:
                self.netlink.forget(await resolve_namespace(url))
            except NotFound:
                return
        await delete_netns(netns_name(url))

    # -- leaks -----------------------------------------------------------------------------------

    def hop(self, name: str) -> ServerHop | None:
        """The connection logic of part ``name`` (nsmgr, forwarder or endpoint), else None."""
        handle = self.parts[name].handle
        for attribute in ("nsmgr", "forwarder", "endpoint"):
            hop = getattr(handle, attribute, None)
            if isinstance(hop, ServerHop):
                return hop
        return None

    def baseline(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """The supervision tree shape of every running role (compare with :meth:`leaks`)."""
        return {
            name: tree_shape(part.handle.supervisor.tree())
            for name, part in self.parts.items()
            if part.running and self.hop(name) is not None
        }

    async def leaks(
        self, baseline: dict[str, tuple[tuple[str, str], ...]] | None = None
    ) -> list[str]:
        """What running roles still hold: connections, connection actors, grown trees.

        First waits until every task of the run is blocked, so actors that are stopping (a
        Close is answered before its actor has stopped) have stopped. A role's tree is compared
        with ``baseline`` (its shape: every child's path and state); a role missing from it
        (started later) must at least have no child under its connections supervisor.
        """
        await trio.testing.wait_all_tasks_blocked()
        found = []
        for name, part in self.parts.items():
            hop = self.hop(name)
            if hop is None or not part.running:
                continue
            if len(hop.hub):
                found.append(f"{name}: {len(hop.hub)} connection(s) in its monitor hub")
            if hop.connection_count:
                found.append(f"{name}: {hop.connection_count} connection actor(s)")
            shape = tree_shape(part.handle.supervisor.tree())
            if baseline is not None and name in baseline and shape != baseline[name]:
                found.append(f"{name}: supervision tree {shape} is not {baseline[name]}")
            elif any(path.startswith(f"{name}/connections/") for path, _ in shape):
                found.append(f"{name}: children left under its connections supervisor")
        if self.underlay is not None:
            found += await self.underlay.leaks()
        return found

    @asynccontextmanager
    async def connect(
        self, url: str, *, node: int = 0, **options: Any
    ) -> AsyncIterator[ClientConnection]:
        """A client connection through ``node``'s nsmgr (see ``open_connection``)."""
        if self.netlink is not None:
            options.setdefault("netlink", self.netlink)
        async with open_connection(
            url,
            nsmgr=self.nsmgr_url(node),
            roundtrip_bytes=self._options["roundtrip_bytes"],
            **options,
        ) as connection:
            yield connection


class Underlay:
    """The nodes' network of a kernel mesh: a namespace per node (``tnsm-ul<node>-<token>``,
    interface ``ul0`` with ``169.254.200.<node + 1>/24``), each joined by a veth to the bridge
    ``br0`` of one more namespace (``tnsm-br-<token>``). Every name goes into ``namespaces``,
    which the mesh deletes by exact name when it exits."""

    def __init__(self, namespaces: list[str]) -> None:
        self.token = secrets.token_hex(3)
        self._namespaces = namespaces
        self.bridge = f"tnsm-br-{self.token}"
        self.names: dict[int, str] = {}

    def address(self, node: int) -> str:
        """The tunnel address of ``node``'s forwarders."""
        if not 0 <= node < 254:
            raise ValueError(f"node {node}: the underlay has room for nodes 0..253")
        return f"169.254.200.{node + 1}"

    def url(self, node: int) -> str:
        """``node``'s underlay namespace, as a ``file:///run/netns/`` URL."""
        return netns_url(self.names[node])

    async def add(self, node: int) -> None:
        """Make ``node``'s underlay namespace and plug it into the bridge (the bridge first)."""
        if not self.names:
            await create_netns(self.bridge, into=self._namespaces)
            await _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            await _ip("-n", self.bridge, "link", "set", "br0", "up")
        address = self.address(node)
        name = f"tnsm-ul{node}-{self.token}"
        self.names[node] = name
        port = f"n{node}"
        await create_netns(name, into=self._namespaces)
        await _ip("-n", name, "link", "add", "ul0", "type", "veth", "peer", "name", port,
                  "netns", self.bridge)  # fmt: skip
        await _ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
        await _ip("-n", name, "addr", "add", f"{address}/24", "dev", "ul0")
        await _ip("-n", name, "link", "set", "ul0", "up")

    async def leaks(self) -> list[str]:
        """Interfaces in an underlay namespace besides ``lo`` and ``ul0`` (a vxlan device left
        half-made, for instance)."""
        found = []
        for node, name in self.names.items():
            done = await trio.run_process(
                ["ip", "-j", "-n", name, "link", "show"], capture_stdout=True
            )
            extra = sorted(
                link["ifname"]
                for link in json.loads(done.stdout or b"[]")
                if link["ifname"] not in ("lo", "ul0")
            )
            if extra:
                found.append(f"underlay of node {node} ({name}): {', '.join(extra)} left")
        return found


async def _ip(*args: str) -> None:
    await trio.run_process(["ip", *args])


def tree_shape(tree: SupervisorTree) -> tuple[tuple[str, str], ...]:
    """A tree's shape: each child's path and state (restart counts and exit reasons left out)."""
    return tuple((path, node.state.value) for path, node in tree.walk())


@asynccontextmanager
async def open_mesh(
    nodes: int = 1,
    *,
    forwarders: int = 1,
    roundtrip_bytes: bool = True,
    registry_options: dict[str, Any] | None = None,
    kernel: bool = False,
) -> AsyncIterator[Mesh]:
    """A registry and ``nodes`` nodes in this Trio run; everything stops when the block exits.

    Args:
        kernel: forwarders program KERNEL wires through one executor the mesh owns, and VXLAN
            between nodes over the mesh's underlay (see the module docstring); on exit the
            actors stop, then the executor closes, then the namespaces of :meth:`Mesh.add_netns`
            and the underlay's are deleted. Wires of connections still open
            at exit are left to their namespaces.
    """
    namespaces: list[str] = []
    async with AsyncExitStack() as stack:  # on exit: the actors, then the executor, then netns
        stack.push_async_callback(delete_namespaces, namespaces)
        netlink = underlay = None
        if kernel:
            from trionsm.kernel import open_netlink

            underlay = Underlay(namespaces)
            netlink = await stack.enter_async_context(open_netlink())
        nursery = await stack.enter_async_context(trio.open_nursery())
        mesh = Mesh(
            nursery,
            f"mesh{next(_meshes)}",
            {"roundtrip_bytes": roundtrip_bytes, "registry_options": dict(registry_options or {})},
            netlink,
            namespaces,
            underlay,
        )
        await mesh._start_registry()
        for _ in range(nodes):
            await mesh.add_node(forwarders)
        try:
            yield mesh
        finally:
            nursery.cancel_scope.cancel()

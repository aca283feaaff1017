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

Leaks: :meth:`Mesh.baseline` snapshots every role's supervision tree; :meth:`Mesh.leaks` then
lists what is left behind (connections in a hop's monitor hub, connection actors, a tree that
differs from its baseline), so a test ends with ``assert await mesh.leaks(baseline) == []``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio
import trio.testing

from trionsm._processes import ProcessMesh, RoleProcess, open_process_mesh
from trionsm.actors._connection import ServerHop
from trionsm.actors.client import ClientConnection, open_connection
from trionsm.actors.endpoint import serve_endpoint
from trionsm.actors.forwarder import serve_forwarder
from trionsm.actors.lease import serve_service_lease
from trionsm.actors.nsmgr import serve_nsmgr
from trionsm.actors.registry import serve_registry
from trionsm.api.registry import NetworkService
from trionsm.supervision import SupervisorTree

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

    def __init__(self, nursery: trio.Nursery, prefix: str, options: dict[str, Any]) -> None:
        self._nursery = nursery
        self._prefix = prefix
        self._options = options
        self.parts: dict[str, Part] = {}
        self.registry_url = f"inproc://{prefix}-registry"
        self.nodes: list[str] = []

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

    async def add_forwarder(self, name: str, *, node: int) -> Any:
        def remote(url: str) -> bool:  # towards another node's nsmgr
            return url in {self.nsmgr_url(i) for i in range(len(self.nodes))}

        return await self._add(
            name,
            partial(
                serve_forwarder,
                name,
                self.url(name),
                nsmgr=self.nsmgr_url(node),
                remote=remote,
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
        return found

    @asynccontextmanager
    async def connect(
        self, url: str, *, node: int = 0, **options: Any
    ) -> AsyncIterator[ClientConnection]:
        """A client connection through ``node``'s nsmgr (see ``open_connection``)."""
        async with open_connection(
            url,
            nsmgr=self.nsmgr_url(node),
            roundtrip_bytes=self._options["roundtrip_bytes"],
            **options,
        ) as connection:
            yield connection


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
) -> AsyncIterator[Mesh]:
    """A registry and ``nodes`` nodes in this Trio run; everything stops when the block exits."""
    async with trio.open_nursery() as nursery:
        mesh = Mesh(
            nursery,
            f"mesh{next(_meshes)}",
            {"roundtrip_bytes": roundtrip_bytes, "registry_options": dict(registry_options or {})},
        )
        await mesh._start_registry()
        for _ in range(nodes):
            await mesh.add_node(forwarders)
        try:
            yield mesh
        finally:
            nursery.cancel_scope.cancel()

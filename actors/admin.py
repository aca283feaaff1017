"""The node's admin service (``trionsm.admin.v1.Admin``): its tree, its connections, Crash.

:class:`Admin` is the service's handler. It reads, never changes, what the node runs: the
supervision tree (``Tree``: every child by path, with its kind, state and restarts) and the
connections its hops hold (``Connections``: per hop, the path, state, expiry, mechanism and
interface). ``Crash`` is fault injection for scenarios and chaos drills: the actor at a path
exits abnormally and its supervisor restarts it (or not) by its own policy, exactly as after a
real crash. :func:`serve_admin` serves it on its own listeners (the AdminActor of the node's
tree), so it keeps answering while the node's other roles crash and restart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from trionsm.api.connection import Connection
from trionsm.api.trionsm.admin.v1 import (
    Actor,
    ConnectionsRequest,
    ConnectionsResponse,
    CrashRequest,
    CrashResponse,
    HopConnection,
    TreeRequest,
    TreeResponse,
)
from trionsm.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from trionsm.supervision import (
    ChildNode,
    ChildNotFound,
    ChildNotRunning,
    Supervisor,
    SupervisorStopped,
    SupervisorTree,
)
from trionsm.transport import ADMIN, CallContext, serve

from ._connection import ServerHop
from ._mechanisms import Param

__all__ = ["Admin", "AdminHandle", "serve_admin", "tree_rows"]

HopsView = Callable[[], Sequence[tuple[str, ServerHop]]]
"""The node's hops now: ``[(role, hop), ...]`` (``("nsmgr", nsmgr)``, ``("forwarder", ...)``)."""


def tree_rows(tree: SupervisorTree, base: str = "", depth: int = 0) -> Iterator[Actor]:
    """Every child below ``tree`` as an admin ``Actor`` row, depth first in start order, with
    its path as :meth:`SupervisorTree.walk` gives it."""
    base = base or tree.name
    for node in tree.children:
        path = f"{base}/{node.id}"
        yield _row(path, node, depth)
        if node.supervisor is not None:
            yield from tree_rows(node.supervisor, path, depth + 1)


def _row(path: str, node: ChildNode, depth: int) -> Actor:
    return Actor(
        path=path,
        id=node.id,
        depth=depth,
        kind=node.type.value,
        status=node.state.value,
        restarts=node.restarts,
        restart=node.restart.value,
        last_exit=node.last_exit or "",
        strategy=node.supervisor.strategy.value if node.supervisor is not None else "",
    )


def hop_connection(role: str, hop: str, connection: Connection) -> HopConnection:
    """One connection as the admin service shows it (this hop's view)."""
    row = HopConnection(
        role=role,
        hop=hop,
        id=connection.id,
        network_service=connection.network_service,
        state=connection.state.name,
        endpoint=connection.network_service_endpoint_name,
    )
    if connection.path is not None:
        segments = connection.path.path_segments
        row.path = [segment.name for segment in segments]
        index = connection.path.index
        if 0 <= index < len(segments):
            row.expires = segments[index].expires
    if connection.mechanism is not None:
        row.mechanism = connection.mechanism.type
        row.interface = connection.mechanism.parameters.get(Param.NAME, "")
    return row


class Admin:
    """The ``trionsm.admin.v1.Admin`` handler of one node.

    Args:
        node: the node's name (in replies and errors).
        supervisor: returns the node's root supervisor (None while it is not running).
        hops: returns the node's hops now (they change when a role restarts).
    """

    def __init__(
        self, node: str, supervisor: Callable[[], Supervisor | None], hops: HopsView
    ) -> None:
        self.node = node
        self._supervisor = supervisor
        self._hops = hops

    def _root(self) -> Supervisor:
        root = self._supervisor()
        if root is None or root.stopped:
            raise Unavailable(f"node {self.node} is not running", hop=self._hop)
        return root

    @property
    def _hop(self) -> str:
        return f"admin@{self.node}"

    async def tree(self, request: TreeRequest, ctx: CallContext) -> TreeResponse:
        return TreeResponse(node=self.node, actors=list(tree_rows(self._root().tree())))

    async def connections(
        self, request: ConnectionsRequest, ctx: CallContext
    ) -> ConnectionsResponse:
        rows = [
            hop_connection(role, hop.name, connection)
            for role, hop in self._hops()
            for connection in hop.hub.connections().values()
        ]
        return ConnectionsResponse(connections=rows)

    async def crash(self, request: CrashRequest, ctx: CallContext) -> CrashResponse:
        if not request.path:
            raise InvalidArgument("Crash needs the path of an actor (see Tree)", hop=self._hop)
        reason = request.reason or "crashed on request"
        try:
            before = await self._root().crash_child(request.path, reason)
        except ChildNotFound:
            raise NotFound(
                f"no actor at path {request.path!r} (Tree lists every path)", hop=self._hop
            ) from None
        except ChildNotRunning as exc:
            raise FailedPrecondition(
                f"cannot crash {request.path!r}: {exc}", hop=self._hop
            ) from None
        except SupervisorStopped as exc:
            raise Unavailable(f"cannot crash {request.path!r}: {exc}", hop=self._hop) from None
        return CrashResponse(path=request.path, restarts=before.restarts)


@attrs.frozen(eq=False)
class AdminHandle:
    """A running admin service: ``urls`` (bound, in the order given) and its ``admin``."""

    urls: tuple[str, ...]
    admin: Admin


async def serve_admin(
    admin: Admin,
    urls: Sequence[str],
    *,
    task_status: trio.TaskStatus[AdminHandle] = trio.TASK_STATUS_IGNORED,
    **transport_options: Any,
) -> None:
    """Serve ``admin`` on every URL in ``urls`` until cancelled (the node's AdminActor).

    ``task_status.started(handle)`` once every listener accepts calls. Stopping it closes the
    listeners (a unix socket file is removed).
    """
    async with trio.open_nursery() as nursery:
        servers = [
            await nursery.start(
                partial(serve, url, {ADMIN: admin}, hop=f"admin@{admin.node}", **transport_options)
            )
            for url in urls
        ]
        task_status.started(AdminHandle(tuple(server.url for server in servers), admin))

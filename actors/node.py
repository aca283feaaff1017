"""A whole node as one supervision tree: ``serve_node`` (what ``trionsm node`` runs).

``serve_node`` runs the node's roles as supervised children, started in dependency order::

    node (ONE_FOR_ONE, intensity 3 in 30 s)
    ├── kernel      the netlink executor the forwarder programs wires through (only with an
    │               in-process forwarder that programs KERNEL or VXLAN)
    ├── registry    the node's registry (memory or etcd store; absent with a remote registry)
    ├── nsmgr       NetworkService + MonitorConnection + the registry front, on the node's unix
    │               socket (``<dir>/nsm.io.sock``) and TCP
    ├── forwarder   (absent with ``mode = "external"``: a separate ``trionsm forwarder``)
    └── admin       ``trionsm.admin.v1.Admin`` (tree, connections, Crash) on ``<dir>/admin.sock``

ONE_FOR_ONE because the roles talk only through transports and heal through soft state: a
crashed forwarder is restarted alone; its clients see their monitor stream break and heal
through the new incarnation (as in NSM, where each role is its own pod). Each role keeps its
own supervisor and intensity below this one.

Stopping (cancellation: SIGTERM through the CLI). First the node refuses new Requests at its
nsmgr and forwarder (``Unavailable``: the node is stopping), so a client healing meanwhile
cannot open what is about to be closed. Then, unless ``restart_keep_dataplane``, the forwarder
closes every connection as its client would (downstream, so the endpoints see the Close, and its
wire), each within the forwarder's ``STOP_TIMEOUT``. Then the children stop in reverse start
order: admin, the forwarder (its lease unregisters), the nsmgr, the registry, the kernel
executor; listeners close and unix sockets are removed. Every step is bounded (Close and
Unregister timeouts), and the whole stop by ``shutdown_timeout`` (default 30 s): past it the
node reports the step it was in and the actors still running (``trionsm node`` then exits 1 at
once; embedded, ``serve_node`` raises DeadlineExceeded once the stuck steps let go, since a
shielded cleanup cannot be cut short from outside). With ``restart_keep_dataplane`` the
connections and wires are left as they are, for the next run of the node to adopt when its
clients re-request: a restart that does not flap the data plane.

A Crash of the forwarder (through the admin service) is a crash, not a stop: its connections are
not closed and its wires stay, for the restarted incarnation to adopt. A crash of the kernel
executor crashes the forwarder too (it must not keep programming through a closed executor); both
restart, and the wires stay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio

from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.clock import Clock
from trionsm.errors import DeadlineExceeded, Unavailable
from trionsm.identity import JwtTokenProvider
from trionsm.supervision import (
    ChildSpec,
    ChildState,
    ChildType,
    Strategy,
    Supervisor,
    open_supervisor,
)

from ._connection import RequestHook, ServerHop
from ._nodeconfig import (
    ADMIN_SOCKET,
    DEFAULT_DIR,
    DEFAULT_NSMGR_PORT,
    DEFAULT_REGISTRY_PORT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    FORWARDER_MODES,
    NSM_SOCKET,
    ForwarderConfig,
    NodeConfig,
    NsmgrConfig,
    RegistryConfig,
)
from ._role import OnStarted
from .admin import Admin, AdminHandle, serve_admin
from .forwarder import STOP_TIMEOUT, DataPlane, ForwarderHandle, open_dataplane, serve_forwarder
from .nsmgr import NsmgrHandle, serve_nsmgr
from .registry import RegistryHandle, serve_registry

__all__ = [
    "ADMIN_SOCKET",
    "DEFAULT_DIR",
    "DEFAULT_NSMGR_PORT",
    "DEFAULT_REGISTRY_PORT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "FORWARDER_MODES",
    "NODE_INTENSITY",
    "NODE_PERIOD",
    "NSM_SOCKET",
    "ForwarderConfig",
    "NodeConfig",
    "NodeHandle",
    "NsmgrConfig",
    "RegistryConfig",
    "overrun_message",
    "serve_node",
    "still_running",
]

_log = logging.getLogger(__name__)

NODE_INTENSITY = 3
NODE_PERIOD = 30.0
"""The node supervisor gives up after more than 3 restarts of its roles within 30 s (the
process then exits non-zero and its service manager restarts it)."""


@attrs.define(eq=False)
class _Running:
    """The current incarnation of each role (replaced when a role restarts)."""

    supervisor: Supervisor | None = None
    dataplane: DataPlane | None = None
    registry: RegistryHandle | None = None
    nsmgr: NsmgrHandle | None = None
    forwarder: ForwarderHandle | None = None
    stopping: bool = False
    step: str = "refusing new Requests"  # what the stop is doing (for an overrun's message)
    closing: trio.CancelScope | None = None  # the stop's closing step, cut short by an overrun
    kernel_lost: trio.Event = attrs.field(factory=trio.Event)  # the executor's end, per incarnation
    bound: dict[str, list[str]] = attrs.field(factory=dict)  # each role's first bound URLs

    def hops(self) -> list[tuple[str, ServerHop]]:
        found: list[tuple[str, ServerHop]] = []
        if self.nsmgr is not None:
            found.append(("nsmgr", self.nsmgr.nsmgr))
        if self.forwarder is not None:
            found.append(("forwarder", self.forwarder.forwarder))
        return found


@attrs.frozen(eq=False)
class NodeHandle:
    """A running node.

    Attributes:
        name: the node's name; config: what it runs.
        urls: the nsmgr's bound URLs, in the order of ``config.nsmgr.listen``.
        admin_urls: the admin service's bound URLs.
        supervisor: the node's root supervisor (``tree()``, ``crash_child``).
    """

    name: str
    config: NodeConfig
    urls: tuple[str, ...]
    admin_urls: tuple[str, ...]
    supervisor: Supervisor
    _running: _Running

    @property
    def nsmgr(self) -> NsmgrHandle | None:
        """The nsmgr's current incarnation (None while it restarts)."""
        return self._running.nsmgr

    @property
    def forwarder(self) -> ForwarderHandle | None:
        """The in-process forwarder's current incarnation (None if external or restarting)."""
        return self._running.forwarder


def _registry_url(config: NodeConfig, running: _Running) -> str:
    """Where the nsmgr finds the registry: a remote URL, or the node's own in-process one."""
    if config.registry.remote:
        return config.registry.store
    return f"inproc://registry-{config.name}-{id(running):x}"


async def _serve_kernel(running: _Running, *, task_status: trio.TaskStatus[DataPlane]) -> None:
    async with open_dataplane() as dataplane:
        running.dataplane, running.kernel_lost = dataplane, trio.Event()
        try:
            task_status.started(dataplane)
            await trio.sleep_forever()
        finally:
            running.dataplane = None
            running.kernel_lost.set()


async def _fail_when_lost(lost: trio.Event, hop: str) -> None:
    await lost.wait()
    raise Unavailable(
        "the node's kernel executor stopped: the forwarder restarts with the new one", hop=hop
    )


async def _run_role(
    running: _Running,
    role: str,
    serve: Callable[..., Awaitable[None]],
    *,
    task_status: trio.TaskStatus[Any],
) -> None:
    """Run ``serve`` (a role's ``serve_*`` with its arguments bound) as the node's ``role``: its
    handle is the current incarnation while it runs, and its hop refuses Requests once the node
    is stopping."""

    def started(handle: Any) -> None:
        urls = getattr(handle, "urls", None)
        if urls and role not in running.bound:  # a restart listens where the first run did
            running.bound[role] = list(urls)
        hop = getattr(handle, role, None)
        if isinstance(hop, ServerHop):
            hop.before_request = _refuse_while_stopping(running, hop.name)
        setattr(running, role, handle)
        task_status.started(handle)

    try:
        await serve(task_status=OnStarted(started))
    finally:
        setattr(running, role, None)


def _refuse_while_stopping(running: _Running, hop: str) -> RequestHook:
    async def refuse(request: NetworkServiceRequest) -> None:
        if running.stopping:
            service = request.connection.network_service if request.connection else None
            raise Unavailable("the node is stopping", hop=hop, service=service)

    return refuse


def _tokens(role: str, name: str, config: NodeConfig, clock: Clock | None) -> JwtTokenProvider:
    subject = f"spiffe://trionsm.local/{role}/{name}"
    return JwtTokenProvider(subject, lifetime=config.nsmgr.token_lifetime, clock=clock)


async def _serve_registry(
    config: NodeConfig, running: _Running, *, task_status: trio.TaskStatus[RegistryHandle]
) -> None:
    registry = config.registry
    await serve_registry(
        running.bound.get("registry") or [_registry_url(config, running), *registry.listen],
        store=registry.store,
        expiry=registry.expiry,
        hop=f"registry-{config.name}",
        task_status=task_status,
    )


async def _serve_nsmgr(
    config: NodeConfig,
    running: _Running,
    clock: Clock | None,
    *,
    task_status: trio.TaskStatus[NsmgrHandle],
) -> None:
    await serve_nsmgr(
        config.nsmgr_name,
        running.bound.get("nsmgr") or list(config.nsmgr.listen),
        registry=_registry_url(config, running),
        public_url=config.nsmgr.public_url,
        tokens=_tokens("nsmgr", config.nsmgr_name, config, clock),
        clock=clock,
        task_status=task_status,
    )


async def _serve_forwarder(
    config: NodeConfig,
    running: _Running,
    clock: Clock | None,
    *,
    task_status: trio.TaskStatus[ForwarderHandle],
) -> None:
    """The node's forwarder, registered at the nsmgr's current incarnation, programming wires
    through the kernel child's executor (taken at each start). When that executor stops (the
    kernel child crashed), the forwarder crashes too, so that its supervisor restarts it with
    the new one; its connections and wires are left for the new incarnation to adopt."""
    forwarder = config.forwarder
    nsmgr = running.nsmgr
    if nsmgr is None:
        raise Unavailable("the node's nsmgr is not running", hop=forwarder.name)
    lease_options: dict[str, Any] = {}
    if forwarder.registration_expiry is not None:
        lease_options["expiry"] = forwarder.registration_expiry
    # None while the kernel child restarts: the forwarder then opens its own executor.
    dataplane, lost = running.dataplane, running.kernel_lost
    start = partial(
        serve_forwarder,
        forwarder.name,
        forwarder.listen,
        nsmgr=nsmgr.url,
        mechanisms=forwarder.mechanisms,
        labels=dict(forwarder.labels),
        dataplane=dataplane,
        tunnel_ip=forwarder.tunnel_ip,
        underlay_netns=forwarder.underlay_netns,
        tokens=_tokens("forwarder", forwarder.name, config, clock),
        clock=clock,
        lease_options=lease_options,
        reconcile_grace=forwarder.reconcile_grace,
        # The node closes the connections itself on a stop for good (see the module
        # docstring); stopped by a crash or a restart, the forwarder leaves them be.
        keep_dataplane_on_stop=True,
    )
    async with trio.open_nursery() as nursery:
        if dataplane is not None:  # a crashed kernel child: this forwarder crashes too
            nursery.start_soon(_fail_when_lost, lost, forwarder.name)
        task_status.started(await nursery.start(start))


def _children(config: NodeConfig, running: _Running, clock: Clock | None) -> list[ChildSpec]:
    admin = Admin(config.name, lambda: running.supervisor, running.hops)
    children = []
    if config.forwarder.kernel:
        children.append(ChildSpec("kernel", partial(_serve_kernel, running)))
    roles: list[tuple[str, Callable[..., Awaitable[None]]]] = []
    if not config.registry.remote:
        roles.append(("registry", partial(_serve_registry, config, running)))
    roles.append(("nsmgr", partial(_serve_nsmgr, config, running, clock)))
    if config.forwarder.internal:
        roles.append(("forwarder", partial(_serve_forwarder, config, running, clock)))
    for role, serve in roles:
        start = partial(_run_role, running, role, serve)
        children.append(ChildSpec(role, start, type=ChildType.SUPERVISOR))
    children.append(ChildSpec("admin", partial(serve_admin, admin, config.admin_listen)))
    return children


async def _stop_gracefully(config: NodeConfig, running: _Running) -> None:
    """Refuse new Requests, then (unless keeping the data plane) close the forwarder's
    connections downstream and remove their wires; bounded by the forwarder's STOP_TIMEOUT and
    cut short by an overrun (``_watch_stop``, once it has said what was still running)."""
    running.stopping = True
    forwarder = running.forwarder
    if config.restart_keep_dataplane or forwarder is None:
        return
    running.step = "closing the connections"
    with trio.move_on_after(STOP_TIMEOUT) as running.closing:
        await forwarder.forwarder.close_all()


def still_running(supervisor: Supervisor) -> list[str]:
    """The paths of the actors of ``supervisor``'s tree that have not stopped and have no such
    actor below them (what a stop is waiting for): connections first, then depth first in
    start order."""
    alive = [
        path for path, node in supervisor.tree().walk() if node.state is not ChildState.STOPPED
    ]
    leaves = [path for path in alive if not any(p.startswith(f"{path}/") for p in alive)]
    return sorted(leaves, key=lambda path: "/connections/" not in path)


def overrun_message(config: NodeConfig, running: _Running) -> str:
    """What a stop past ``config.shutdown_timeout`` says: the step it was in, the node's roles
    still running and (at most :data:`_SHOWN` of) the actors they wait for."""
    supervisor = running.supervisor
    roles = (
        [c.id for c in supervisor.which_children() if c.state is not ChildState.STOPPED]
        if supervisor is not None
        else []
    )
    left = still_running(supervisor) if supervisor is not None else []
    shown = ", ".join(left[:_SHOWN])
    if len(left) > _SHOWN:
        shown += f" and {len(left) - _SHOWN} more"
    return (
        f"node {config.name}: shutdown_timeout {config.shutdown_timeout:g}s exceeded while "
        f"{running.step}; still running: {', '.join(roles) or 'nothing'}"
        + (f" ({len(left)} actors: {shown})" if left else "")
    )


_SHOWN = 8


async def _watch_stop(
    config: NodeConfig,
    running: _Running,
    overrun: Callable[[str], object] | None,
    *,
    task_status: trio.TaskStatus[trio.CancelScope],
) -> None:
    """From the start of the stop, wait ``shutdown_timeout`` seconds (shielded: the stop's own
    cancellation does not end the wait; the node cancels it when its stop is through); then
    report what is still running: through ``overrun``, else by raising DeadlineExceeded (which
    ends ``serve_node`` once the stuck steps let go)."""
    with trio.CancelScope(shield=True) as scope:
        task_status.started(scope)
        await trio.sleep(config.shutdown_timeout)
        message = overrun_message(config, running)  # first: the step it names is still current
        if running.closing is not None:
            running.closing.cancel()  # then the closing step lets go, so the stop goes on
        if overrun is None:
            _log.error("%s", message)
            raise DeadlineExceeded(message, hop=f"node {config.name}")
        overrun(message)


async def serve_node(
    config: NodeConfig,
    *,
    clock: Clock | None = None,
    on_overrun: Callable[[str], object] | None = None,
    task_status: trio.TaskStatus[NodeHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node ``config`` describes until cancelled (see the module docstring).

    ``task_status.started(handle)`` once every role serves (the forwarder registered at the
    nsmgr). Cancelling it stops the node in order, each step bounded, the whole stop by
    ``config.shutdown_timeout``; the node's directory is created if missing and kept.

    Args:
        on_overrun: called with :func:`overrun_message` when the stop takes longer than
            ``config.shutdown_timeout`` (``trionsm node`` then exits 1 at once). None: the
            message is logged and DeadlineExceeded raised, which ends ``serve_node`` only once
            the stuck steps let go (a shielded cleanup cannot be cut short from outside).

    Raises:
        StartError: a role could not start (a socket or port in use, an unreachable registry).
        RestartIntensityExceeded: roles crashed more than :data:`NODE_INTENSITY` times within
            :data:`NODE_PERIOD` seconds.
        DeadlineExceeded: the stop took longer than ``config.shutdown_timeout`` (no
            ``on_overrun``).
    """
    config.dir.mkdir(parents=True, exist_ok=True)
    running = _Running()
    watch = trio.CancelScope()  # replaced by the watchdog's when the stop begins
    try:
        async with trio.open_nursery() as guard:
            try:
                async with open_supervisor(
                    _children(config, running, clock),
                    strategy=Strategy.ONE_FOR_ONE,
                    intensity=NODE_INTENSITY,
                    period=NODE_PERIOD,
                    name="node",
                ) as supervisor:
                    running.supervisor = supervisor
                    assert running.nsmgr is not None
                    admin = next(c.value for c in supervisor.which_children() if c.id == "admin")
                    assert isinstance(admin, AdminHandle)
                    handle = NodeHandle(
                        config.name, config, running.nsmgr.urls, admin.urls, supervisor, running
                    )
                    try:
                        task_status.started(handle)
                        await trio.sleep_forever()
                    finally:
                        with trio.CancelScope(shield=True):
                            watch = await guard.start(_watch_stop, config, running, on_overrun)
                            await _stop_gracefully(config, running)
                            running.step = "stopping the roles"
            finally:
                watch.cancel()  # the stop is through (or the node failed): no overrun
    except BaseExceptionGroup as group:  # (the guard nursery's): raise what the roles raised
        lone = _lone_error(group)
        if lone is None:
            raise
        raise lone from None


def _lone_error(group: BaseExceptionGroup[Any]) -> BaseException | None:
    """The one exception besides ``trio.Cancelled`` in ``group`` (nested groups flattened)."""
    rest = group.split(trio.Cancelled)[1]
    leaves: list[BaseException] = []
    pending: list[BaseException] = [rest] if rest is not None else []
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None

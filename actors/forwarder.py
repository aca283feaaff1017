"""The forwarder: picks the endpoint, negotiates the mechanisms, programs the data plane.

``serve_forwarder`` runs a forwarder as a supervised tree::

    forwarder <name> (REST_FOR_ONE)
    ├── connections     SIMPLE_ONE_FOR_ONE ServerConnection per connection id (TEMPORARY)
    ├── peers           clients and monitor streams to next hops (endpoints, remote nsmgrs)
    ├── server          NetworkService + MonitorConnection (+ Health)
    ├── lease           registered at its nsmgr as service ``forwarder``, label ``p2p=true``
    └── reconcile       with a data plane (TRANSIENT): its leftovers from a previous life are
                        adopted by the re-requests that describe them, the rest removed after
                        ``reconcile_grace`` (``_reconcile``); restarted with the children
                        before it, it scans again and keeps every wire a live connection holds

The per-request logic (mechanisms, candidates, wires, VNIs) is :class:`Forwarder`, in
``_forwarder``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from trionsm.api.registry import NetworkServiceEndpoint, NetworkServiceLabels
from trionsm.clock import Clock
from trionsm.identity import JwtTokenProvider, TokenProvider
from trionsm.supervision import (
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
    Supervisor,
    open_supervisor,
)
from trionsm.transport import HEALTH, MONITOR_CONNECTION, NETWORK_SERVICE, serve

from ._dataplane import DataPlane, open_dataplane
from ._forwarder import STOP_TIMEOUT, Forwarder
from ._health import Health
from ._mechanisms import (
    KERNEL,
    NOOP,
    VXLAN,
)
from ._reconcile import (
    DEFAULT_RECONCILE_GRACE,
    Reconciler,
    serve_reconcile,
)
from ._role import serve_connections, serve_peers
from .lease import Lease, serve_lease

__all__ = [
    "FORWARDER_LABELS",
    "FORWARDER_SERVICE",
    "STOP_TIMEOUT",
    "DataPlane",
    "Forwarder",
    "ForwarderHandle",
    "open_dataplane",
    "serve_forwarder",
]

FORWARDER_SERVICE = "forwarder"
FORWARDER_LABELS = {"p2p": "true"}


@attrs.frozen(eq=False)
class ForwarderHandle:
    """A running forwarder: ``url`` (bound), ``forwarder`` (logic), ``supervisor``, ``lease``."""

    name: str
    url: str
    forwarder: Forwarder
    supervisor: Supervisor
    lease: Lease[NetworkServiceEndpoint] | None


async def serve_forwarder(
    name: str,
    url: str,
    *,
    nsmgr: str,
    mechanisms: Sequence[str] = (NOOP,),
    labels: Mapping[str, str] | None = None,
    remote: Any = None,
    dataplane: DataPlane | None = None,
    tunnel_ip: str = "",
    underlay_netns: str = "",
    public_url: str | None = None,
    tokens: TokenProvider | None = None,
    clock: Clock | None = None,
    client_options: Mapping[str, Any] | None = None,
    lease_options: Mapping[str, Any] | None = None,
    reconcile_grace: float | None = DEFAULT_RECONCILE_GRACE,
    reconcile_namespaces: Sequence[str] | None = None,
    keep_dataplane_on_stop: bool = False,
    task_status: trio.TaskStatus[ForwarderHandle] = trio.TASK_STATUS_IGNORED,
    **transport_options: Any,
) -> None:
    """Run the forwarder ``name`` on ``url``, registered at ``nsmgr``, until cancelled.

    With a data plane, a forwarder reconciles when it starts (``_reconcile``): the interfaces
    carrying its name in their alias are adopted by the re-requests that describe them, and
    whatever no re-request claimed within ``reconcile_grace`` seconds is removed. When it is
    cancelled (stopped), it first closes every connection (downstream, and its wire), within
    ``STOP_TIMEOUT``, unless ``keep_dataplane_on_stop``: then it stops without touching them, for
    the next incarnation to adopt (a restart that must not flap the wires). A crash (an error
    raised out of its supervisor) closes nothing either.

    Args:
        name: its name.
        url: where it serves.
        nsmgr: its nsmgr's URL (registration and discovery go through it).
        mechanisms: the mechanism types it programs (``(KERNEL, NOOP)`` for veth wires).
        dataplane: programs the KERNEL wires (shared, not closed here); None with KERNEL or
            VXLAN in ``mechanisms``: the forwarder opens its own for as long as it runs.
        tunnel_ip: its address on the underlay, for VXLAN (remote KERNEL connections).
        underlay_netns: the namespace holding ``tunnel_ip`` (default: the forwarder's own).
        labels: its registration labels (default ``p2p=true``).
        remote: ``remote(url) -> bool``, whether a next hop is on another node (default: by
            scheme; in-process meshes tell it).
        client_options: for the clients to next hops and the nsmgr (``roundtrip_bytes``...).
        lease_options: for its registration lease.
        reconcile_grace: seconds leftovers wait for a claim (default
            :data:`~trionsm.actors._reconcile.DEFAULT_RECONCILE_GRACE`, well above a client's
            heal and refresh); None: no reconcile at start.
        reconcile_namespaces: where to look for leftovers (default: every network namespace
            of the host).
        keep_dataplane_on_stop: stop without closing connections or removing wires.
        transport_options: for ``transport.serve``.
    """
    tokens = tokens or JwtTokenProvider(f"spiffe://trionsm.local/forwarder/{name}", clock=clock)
    async with _dataplane_for(mechanisms, dataplane) as chosen:
        forwarder = Forwarder(
            name,
            tokens=tokens,
            mechanisms=mechanisms,
            remote=remote,
            clock=clock,
            dataplane=chosen,
            tunnel_ip=tunnel_ip,
            underlay_netns=underlay_netns,
        )
        reconcile = None
        if chosen is not None and reconcile_grace is not None:
            # A scan started again while connections live on keeps the wires they hold.
            forwarder.reconciler = Reconciler(name, reconcile_grace, live=forwarder.live_wires)
            reconcile = partial(
                serve_reconcile,
                forwarder.reconciler,
                hop=name,
                netlink=chosen.netlink,
                namespaces=reconcile_namespaces,
            )
        await _serve(
            forwarder,
            url,
            nsmgr=nsmgr,
            labels=labels,
            public_url=public_url,
            client_options=client_options,
            lease_options=lease_options,
            reconcile=reconcile,
            keep_dataplane_on_stop=keep_dataplane_on_stop,
            task_status=task_status,
            **transport_options,
        )


@asynccontextmanager
async def _dataplane_for(
    mechanisms: Sequence[str], dataplane: DataPlane | None
) -> AsyncIterator[DataPlane | None]:
    if dataplane is not None or not {KERNEL, VXLAN} & set(mechanisms):
        yield dataplane
        return
    async with open_dataplane() as owned:
        yield owned


async def _serve(
    forwarder: Forwarder,
    url: str,
    *,
    nsmgr: str,
    labels: Mapping[str, str] | None,
    public_url: str | None,
    client_options: Mapping[str, Any] | None,
    lease_options: Mapping[str, Any] | None,
    reconcile: Any,
    keep_dataplane_on_stop: bool,
    task_status: trio.TaskStatus[ForwarderHandle],
    **transport_options: Any,
) -> None:
    name = forwarder.name
    options = dict(client_options or {})
    handlers = {NETWORK_SERVICE: forwarder, MONITOR_CONNECTION: forwarder, HEALTH: Health()}
    bound: dict[str, str] = {}
    leases: list[Lease[NetworkServiceEndpoint]] = []

    async def run_server(*, task_status: trio.TaskStatus[Any]) -> None:
        assert forwarder.peers is not None
        forwarder.registry = await forwarder.peers.client(nsmgr)
        async with trio.open_nursery() as nursery:
            forwarder.discovery.start(nursery, forwarder.registry)
            server = await nursery.start(
                partial(serve, url, handlers, hop=name, **transport_options)
            )
            bound["url"] = server.url
            task_status.started(server)

    async def run_lease(*, task_status: trio.TaskStatus[Any]) -> None:
        registration = NetworkServiceEndpoint(
            name=name,
            network_service_names=[FORWARDER_SERVICE],
            network_service_labels={
                FORWARDER_SERVICE: NetworkServiceLabels(labels=dict(labels or FORWARDER_LABELS))
            },
            url=public_url or bound["url"],
        )

        class _Status:
            def started(self, lease: Any = None) -> None:
                leases[:] = [lease]
                task_status.started(lease)

        status: Any = _Status()
        await serve_lease(
            nsmgr, registration, task_status=status, **{**options, **dict(lease_options or {})}
        )

    children = [
        ChildSpec("connections", partial(serve_connections, forwarder), type=ChildType.SUPERVISOR),
        ChildSpec("peers", partial(serve_peers, forwarder, options)),
        ChildSpec("server", run_server),
        ChildSpec("lease", run_lease),
    ]
    if reconcile is not None:  # last: its failure restarts only itself (a new scan)
        children.append(ChildSpec("reconcile", reconcile, restart=Restart.TRANSIENT))
    stopping = trio.Event()

    async def wait_for_stop() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopping.set()

    async with trio.open_nursery() as nursery:
        if not keep_dataplane_on_stop:
            nursery.start_soon(wait_for_stop)
        # Shielded, the tree outlives the cancellation that stops it until its connections are
        # closed (they need the peers, the server and the actors); then it stops in order.
        with trio.CancelScope(shield=not keep_dataplane_on_stop):
            async with open_supervisor(
                children, strategy=Strategy.REST_FOR_ONE, intensity=3, period=30.0, name=name
            ) as supervisor:
                handle = ForwarderHandle(name, bound["url"], forwarder, supervisor, leases[0])
                task_status.started(handle)
                await stopping.wait()
                with trio.move_on_after(STOP_TIMEOUT):
                    await forwarder.close_all()

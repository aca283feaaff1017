"""The client (NSC): ``open_connection`` asks for a network service and keeps the wire alive.

Theory of operation. ``open_connection("noop://icmp-responder/nsm-1?app=foo", nsmgr=url)``
requests the service through the node's nsmgr and yields a :class:`ClientConnection` once the
first Request succeeded. The first Request is retried every 200 ms until ``request_timeout`` when
it fails for a reason that may pass (the nsmgr or a hop unreachable or not serving yet, a timeout,
a bound hit, and NotFound: as in NSM, an endpoint or service may register after the client
starts, so a misspelt service fails only at the timeout, with NotFound naming it); a caller error
(:data:`CALLER_ERRORS`: a malformed request, a refused identity, a mechanism no hop can serve)
fails at once with its typed error. The connection's own task then
runs a nursery with the refresh timer, the monitor watcher and, when a ``liveness`` check is
given, the data-plane watcher:

* **refresh**: re-requests at NSM's schedule (20 % of the shortest remaining token lifetime on a
  4-hop path); a failed refresh is retried every 200 ms until the connection's own tokens run out,
  then the connection heals (monitoring goes on meanwhile, so a broken path heals at once);
* **monitor**: a MonitorConnections stream to the nsmgr (``_nscmonitor``: scoped to this
  connection's segment, or one stream shared by every connection on a shared ``client=``); a
  broken stream, or a ``DOWN`` or ``DELETE`` for the connection that the nsmgr confirms, means
  the control plane broke;
* **liveness** (optional): ``await liveness(connection)`` every ``liveness_interval``, each check
  bounded by ``liveness_timeout`` (a timeout counts as dead); False means the data plane broke.
  A ``kernel://`` connection with ``netns`` gets :func:`kernel_liveness` (ICMP from the client's
  namespace over the wire) by default, as cmd-nsc does.

When a child reports a broken path, the nursery is cancelled and the connection heals (NSM's
heal, nsm-reference §2.5):

* control plane broken and no liveness check: **reselect**, since nothing says the data plane
  still works (so after an nsmgr restart the client reselects, and lands on the same endpoint
  only if selection picks it again);
* control plane broken and the data plane alive (one extra check): **re-request** the same
  connection, same endpoint and path segment ids, without Close, until it succeeds; if the
  liveness check fails meanwhile, reselect instead;
* data plane broken (either way): **reselect**.

A reselect is a best-effort Close of the old path, then Requests with ``RESELECT_REQUESTED``, the
endpoint and mechanism cleared (or as a custom ``reselect`` function says), keeping the path
segment ids, until one succeeds. Every step is an event on :meth:`ClientConnection.events`.
Leaving the block closes the connection through the whole path, unless ``close_on_exit=False``
(the client then simply vanishes, as a crashed workload would, and every hop closes its part when
the tokens it holds run out).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import itertools
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from trionsm.api.connection import (
    Connection,
    State,
)
from trionsm.api.networkservice import NetworkServiceRequest
from trionsm.clock import Clock, current_clock
from trionsm.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    TrionsmError,
    Unauthenticated,
    Unimplemented,
)
from trionsm.identity import JwtTokenProvider, TokenProvider, client_metadata
from trionsm.transport import Client, open_client

from ._liveness import choose_liveness, kernel_liveness
from ._mechanisms import KERNEL, kernel_mechanism
from ._nscmonitor import ConnectionMonitor, MonitorBroken, own_monitor, shared_monitor
from ._nsurl import parse_nsurl
from ._path import refresh_after, restore_hop, update_path, update_token

if TYPE_CHECKING:
    from trionsm.kernel import Netlink

__all__ = [
    "CALLER_ERRORS",
    "DEFAULT_LIVENESS_INTERVAL",
    "DEFAULT_LIVENESS_TIMEOUT",
    "DEFAULT_NSMGR_URL",
    "ClientConnection",
    "ConnectionEvent",
    "EventKind",
    "LivenessCheck",
    "kernel_liveness",
    "open_connection",
    "reselect_default",
]

DEFAULT_NSMGR_URL: Final = "unix:///var/lib/networkservicemesh/nsm.io.sock"
DEFAULT_REQUEST_TIMEOUT: Final = 15.0
RETRY_INTERVAL: Final = 0.2
DEFAULT_LIVENESS_INTERVAL: Final = 0.2
"""Seconds between liveness checks (NSM's sdk default, 200 ms)."""
DEFAULT_LIVENESS_TIMEOUT: Final = 1.0
"""Seconds one liveness check may take before it counts as dead (cmd-nsc's 1 s)."""
CALLER_ERRORS: Final = (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    FailedPrecondition,
    Unimplemented,
    AlreadyExists,
)
"""Errors the first Request does not retry: asking again the same way cannot succeed."""
_ids = itertools.count(1)

LivenessCheck = Callable[[Connection], Awaitable[bool]]
"""``async (connection) -> bool``: True while the connection's data plane carries traffic."""


class EventKind(enum.Enum):
    """What happened to a client connection."""

    CONNECTED = "connected"
    REFRESHED = "refreshed"
    DOWN = "down"
    HEALED = "healed"
    CLOSED = "closed"


@attrs.frozen
class ConnectionEvent:
    """One event of a client connection.

    Attributes:
        kind: what happened.
        connection: the connection after it (None once closed).
        reason: why (DOWN: what broke; HEALED: how it healed).
        at: ``trio.current_time()`` when it happened.
    """

    kind: EventKind
    connection: Connection | None
    reason: str = ""
    at: float = 0.0


def reselect_default(connection: Connection) -> Connection:
    """NSM's default reselect: forget the endpoint and mechanism, mark RESELECT_REQUESTED."""
    return dataclasses.replace(
        connection,
        network_service_endpoint_name="",
        mechanism=None,
        state=State.RESELECT_REQUESTED,
    )


class _PathBroken(Exception):
    def __init__(self, reason: str, *, data_plane: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data_plane = data_plane  # the liveness check failed (else: the control plane)


class ClientConnection:
    """A connection held by this client (what ``open_connection`` yields).

    Attributes:
        connection: the latest connection (its path, addresses, endpoint...).
        requests: successful Requests so far (first, refreshes and heals).
        heals: completed heals (reselects and re-requests).
        reselects: the heals that reselected.
        closes: Closes sent (one before each reselect, one when the block exits).
    """

    def __init__(
        self,
        client: Client,
        request: NetworkServiceRequest,
        *,
        name: str,
        monitor: Callable[[], ConnectionMonitor] | None = None,
        tokens: TokenProvider,
        clock: Clock,
        request_timeout: float,
        reselect: Callable[[Connection], Connection],
        liveness: LivenessCheck | None = None,
        liveness_interval: float = DEFAULT_LIVENESS_INTERVAL,
        liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
    ) -> None:
        self._client = client
        self._request = request
        self._name = name
        assert request.connection is not None
        # a shared monitor is asked for before each watch (``shared_monitor``'s docstring)
        self._shared_monitor = monitor
        self._own_monitor = (
            own_monitor(client, name, request.connection.id) if monitor is None else None
        )
        self._tokens = tokens
        self._clock = clock
        self._timeout = request_timeout
        self._reselect = reselect
        self._liveness = liveness
        self._liveness_interval = liveness_interval
        self._liveness_timeout = liveness_timeout
        self.connection: Connection | None = None
        self.requests = 0
        self.heals = 0
        self.reselects = 0
        self.closes = 0
        self._history: list[ConnectionEvent] = []
        self._changed = trio.Event()

    # -- events ----------------------------------------------------------------------------------

    def _emit(self, kind: EventKind, reason: str = "") -> None:
        self._history.append(ConnectionEvent(kind, self.connection, reason, trio.current_time()))
        self._changed.set()
        self._changed = trio.Event()

    @property
    def history(self) -> list[ConnectionEvent]:
        """Every event so far, oldest first."""
        return list(self._history)

    async def events(self) -> AsyncIterator[ConnectionEvent]:
        """Every event from the first on, then each new one as it happens (never ends)."""
        seen = 0
        while True:
            while seen < len(self._history):
                seen += 1
                yield self._history[seen - 1]
            await self._changed.wait()

    async def wait_for(self, kind: EventKind, count: int = 1) -> ConnectionEvent:
        """The ``count``-th event of ``kind`` since the start (waiting for it if needed)."""
        seen = 0
        while True:
            for event in self._history[seen:]:
                seen += 1
                if event.kind is kind:
                    count -= 1
                    if count == 0:
                        return event
            await self._changed.wait()

    # -- requests --------------------------------------------------------------------------------

    async def _request_once(self, connection: Connection) -> Connection:
        outgoing = update_path(connection, self._name)
        assert outgoing.path is not None
        outgoing = update_token(
            outgoing, 0, caller_token=None, caller_expires=None, provider=self._tokens
        )
        request = dataclasses.replace(self._request, connection=outgoing)
        metadata = client_metadata(self._tokens.issue())
        reply = await self._client.network_service.request(
            request, timeout=self._timeout, metadata=metadata
        )
        self.requests += 1
        return restore_hop(reply, 0)

    async def _request_until(self, connection: Connection, deadline: float) -> Connection:
        """Request until one succeeds or ``deadline`` passes (then the last error); a caller
        error (:data:`CALLER_ERRORS`) is raised at once."""
        last: TrionsmError | None = None
        while True:
            try:
                with trio.fail_at(deadline) if math.isfinite(deadline) else trio.CancelScope():
                    return await self._request_once(connection)
            except trio.TooSlowError:
                raise DeadlineExceeded(
                    f"no successful Request for {connection.network_service!r} before the "
                    f"deadline; last error: {last}",
                    hop=self._name,
                    service=connection.network_service,
                ) from last
            except CALLER_ERRORS:
                raise
            except TrionsmError as exc:
                last = exc
            if trio.current_time() + RETRY_INTERVAL >= deadline:
                assert last is not None
                raise last
            await trio.sleep(RETRY_INTERVAL)

    async def start(self) -> None:
        assert self._request.connection is not None
        deadline = trio.current_time() + self._timeout
        self.connection = await self._request_until(self._request.connection, deadline)
        self._emit(EventKind.CONNECTED)

    async def run(self) -> None:
        """Refresh, monitor (and check liveness) and heal until cancelled."""
        healed_at = -math.inf
        while True:
            if trio.current_time() - healed_at < RETRY_INTERVAL:
                await trio.sleep(RETRY_INTERVAL)  # a path that breaks at once: don't spin
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._refresh_loop)
                    nursery.start_soon(self._monitor_loop)
                    if self._liveness is not None:
                        nursery.start_soon(self._liveness_loop)
            except* _PathBroken as group:
                broken = group.exceptions[0]
                assert isinstance(broken, _PathBroken)
                self._emit(EventKind.DOWN, broken.reason)
                await self._heal(broken)
                healed_at = trio.current_time()

    async def _refresh_loop(self) -> None:
        while True:
            assert self.connection is not None
            delay = refresh_after(self.connection.path, 0, clock=self._clock)
            await trio.sleep(delay)
            expiry = self._own_expiry()
            while True:
                try:
                    self.connection = await self._request_once(self.connection)
                    self._emit(EventKind.REFRESHED)
                    break
                except TrionsmError as exc:
                    if trio.current_time() + RETRY_INTERVAL >= expiry:
                        raise _PathBroken(
                            f"refresh failed until the tokens expired: {exc}"
                        ) from exc
                    await trio.sleep(RETRY_INTERVAL)

    def _own_expiry(self) -> float:
        assert self.connection is not None
        path = self.connection.path
        if path is None or not path.path_segments or path.path_segments[0].expires is None:
            return math.inf
        return self._clock.deadline(path.path_segments[0].expires)

    async def _monitor_loop(self) -> None:
        assert self.connection is not None
        try:
            monitor = self._own_monitor
            if monitor is None:
                assert self._shared_monitor is not None
                monitor = self._shared_monitor()
            await monitor.watch(self.connection.id)
        except MonitorBroken as exc:
            raise _PathBroken(exc.reason) from None

    async def _liveness_loop(self) -> None:
        while True:
            await trio.sleep(self._liveness_interval)
            if not await self._alive():
                reason = "the liveness check failed: the data plane is down"
                raise _PathBroken(reason, data_plane=True)

    async def _alive(self) -> bool:
        """One liveness check (a check that takes longer than its timeout counts as dead)."""
        assert self._liveness is not None
        assert self.connection is not None
        with trio.move_on_after(self._liveness_timeout):
            return bool(await self._liveness(self.connection))
        return False

    async def _heal(self, broken: _PathBroken) -> None:
        """Heal after ``broken`` (NSM's decision, see the module docstring)."""
        if not broken.data_plane and self._liveness is not None and await self._alive():
            if await self._rerequest():
                self.heals += 1
                self._emit(EventKind.HEALED, f"re-requested (data plane alive) after: {broken}")
                return
            reason = f"the data plane went down while re-requesting after: {broken}"
        else:
            reason = str(broken)
        await self._reselect_path()
        self.heals += 1
        self.reselects += 1
        self._emit(EventKind.HEALED, f"reselected after: {reason}")

    async def _rerequest(self) -> bool:
        """Request the same connection again until it works (True) or the data plane dies."""
        assert self.connection is not None
        done = False
        async with trio.open_nursery() as nursery:

            async def request() -> None:
                nonlocal done
                while True:
                    assert self.connection is not None
                    try:
                        self.connection = await self._request_once(self.connection)
                        done = True
                        nursery.cancel_scope.cancel()
                        return
                    except TrionsmError:
                        await trio.sleep(RETRY_INTERVAL)

            async def watch() -> None:
                while True:
                    if not await self._alive():
                        nursery.cancel_scope.cancel()
                        return
                    await trio.sleep(self._liveness_interval)

            nursery.start_soon(request)
            nursery.start_soon(watch)
        return done

    async def _reselect_path(self) -> None:
        """Close the old path (best effort), then Request with RESELECT until one succeeds."""
        assert self.connection is not None
        await self._close_path()
        reselected = self._reselect(self.connection)
        while True:
            try:
                self.connection = await self._request_once(reselected)
                return
            except TrionsmError:
                await trio.sleep(RETRY_INTERVAL)

    async def _close_path(self) -> None:
        """Close the connection through the path (best effort, bounded by the request timeout)."""
        assert self.connection is not None
        self.closes += 1
        with trio.move_on_after(self._timeout), contextlib.suppress(TrionsmError):
            await self._client.network_service.close(
                self.connection,
                timeout=self._timeout,
                metadata=client_metadata(self._tokens.issue()),
            )

    async def close(self) -> None:
        """Close the connection through the whole path (best effort, bounded)."""
        if self.connection is None:
            return
        await self._close_path()
        self.connection = None
        self._emit(EventKind.CLOSED)


@asynccontextmanager
async def open_connection(
    url: str,
    *,
    nsmgr: str | None = None,
    labels: Mapping[str, str] | None = None,
    name: str | None = None,
    connection_id: str | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    reselect: Callable[[Connection], Connection] = reselect_default,
    netns: str | None = None,
    mtu: int | None = None,
    liveness: LivenessCheck | bool | None = None,
    liveness_interval: float = DEFAULT_LIVENESS_INTERVAL,
    liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT,
    netlink: Netlink | None = None,
    close_on_exit: bool = True,
    tokens: TokenProvider | None = None,
    clock: Clock | None = None,
    client: Client | None = None,
    **client_options: Any,
) -> AsyncIterator[ClientConnection]:
    """Connect to a network service and keep the connection alive inside the block.

    Args:
        url: NSM's form ``<mechanism>://<service>[/<interface>][?label=value&...]``.
        nsmgr: the nsmgr's URL (default: ``NSM_NSMGR_URL``, then NSM's unix socket path).
        labels: extra request labels (merged over the URL's).
        name: this client's path segment name (default ``nsc-<pid>``).
        connection_id: the first segment's id (default ``<name>-<n>``, as cmd-nsc does).
        request_timeout: how long the first Request is retried (transient failures only),
            and each Request's bound.
        reselect: how a heal changes the connection before requesting again.
        netns: for ``kernel://``: the network namespace the interface goes into, as an
            ``inodeURL`` (``file:///run/netns/<name>``, ``file:///proc/<pid>/ns/net``), put in
            the KERNEL preference; the forwarder refuses a KERNEL request without one.
        mtu: for ``kernel://``: the interface's MTU (68..65535), put in the KERNEL preference.
        liveness: the data-plane check (``async (connection) -> bool``); False: none; None:
            :func:`kernel_liveness` of ``netns`` for a ``kernel://`` connection with ``netns``,
            else none. Without a check every heal reselects.
        liveness_interval: seconds between liveness checks (200 ms, as cmd-nsc).
        liveness_timeout: seconds one check may take before it counts as dead (1 s, as cmd-nsc).
        netlink: the kernel executor for the default liveness check (default: the run's).
        close_on_exit: Close the connection when the block exits; False leaves it to expire
            at every hop (a client that vanished).
        client: an open client to the nsmgr to share (many connections, one channel, and one
            monitor stream for all the connections of one ``name`` on it); default: a client
            of this connection's own.
        client_options: for ``open_client`` (``roundtrip_bytes``, ``ssl_context``...).

    Raises:
        InvalidArgument: a bad URL, interface name or MTU; ``netns`` or ``mtu`` for another
            mechanism than KERNEL.
        TrionsmError: a caller error (:data:`CALLER_ERRORS`) of the first Request at once;
            otherwise its last error when it never succeeded within ``request_timeout``.
    """
    target = parse_nsurl(url)
    preference = target.to_mechanism()
    if target.mechanism == KERNEL:
        preference = kernel_mechanism(netns or "", target.interface or "", mtu=mtu)
    elif netns is not None or mtu is not None:
        raise InvalidArgument(
            f"netns and mtu are for kernel:// connections, not {url!r}",
            service=target.network_service,
        )
    check = choose_liveness(
        liveness, preference, netns=netns, timeout=liveness_timeout, netlink=netlink
    )
    nsmgr_url = nsmgr or os.environ.get("NSM_NSMGR_URL") or DEFAULT_NSMGR_URL
    client_name = name or f"nsc-{os.getpid()}"
    clock = clock or current_clock()
    tokens = tokens or JwtTokenProvider(f"spiffe://trionsm.local/nsc/{client_name}", clock=clock)
    first = Connection(
        id=connection_id or f"{client_name}-{next(_ids)}",
        network_service=target.network_service,
        labels={**target.labels, **dict(labels or {})},
    )
    request = NetworkServiceRequest(connection=first, mechanism_preferences=[preference])
    async with AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(open_client(nsmgr_url, **client_options))
            monitor = None  # one of its own, scoped to its segment
        else:
            monitor = functools.partial(shared_monitor, client, client_name)
        held = ClientConnection(
            client,
            request,
            name=client_name,
            monitor=monitor,
            tokens=tokens,
            clock=clock,
            request_timeout=request_timeout,
            reselect=reselect,
            liveness=check,
            liveness_interval=liveness_interval,
            liveness_timeout=liveness_timeout,
        )
        await held.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(held.run)
                try:
                    yield held
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if close_on_exit:
                with trio.CancelScope(shield=True):
                    await held.close()

"""LeaseActor: keeps one registration alive in a registry (NSM's NSE-side registry client).

Used by endpoints and forwarders (:func:`serve_lease`, a NetworkServiceEndpoint) and by whoever
publishes a network service (:func:`serve_service_lease`). :func:`lease_spec` makes a TRANSIENT
supervised child of either.

Theory of operation. The lease Registers and reports its :class:`Lease` (``task_status.started``)
only once the registry accepted it. Two tasks then keep the registration alive:

* the registrar re-Registers at 2/3 of the remaining lifetime of the registration the registry
  returned (its ``expiration_time``, read through the run's :class:`~trionsm.clock.Clock`, so
  ``MockClock`` drives it), or at once when the watcher asks. A failed refresh is retried every
  ``retry_interval`` while the registration is still alive; after that (and for every re-Register
  the watcher asks for) with a backoff doubling up to ``max_retry_interval`` until the registry
  answers again. Services never expire, so a service lease never refreshes.
* the watcher holds Find(watch=true) on the lease's own name. A broken stream (the registry
  restarted, a partition, a watch that fell behind), ``deleted=true`` for the name (it expired, or
  was unregistered behind the lease's back) or a snapshot that lacks the name within
  ``call_timeout`` makes the registrar re-Register at once. The watch reopens once a
  re-Register succeeded (with the same capped backoff if it breaks before showing the name).

Errors. The path's errors (Unavailable, DeadlineExceeded, ResourceExhausted, CallCancelled) are
retried. Any other (the registry refuses: InvalidArgument, PermissionDenied, ...) ends the lease
with that error, unwrapped: before the first registration it is a start error; later the lease
crashes and its supervisor restarts it (TRANSIENT). Start-up retries end after ``start_timeout``
with DeadlineExceeded; meanwhile the lease's start blocks its supervisor, as any OTP start does.

Shutdown. Cancelled (its supervisor stops it, or the caller leaves the nursery), the lease stops
watching and Unregisters within :func:`~trionsm.supervision.cleanup_scope` (the child's shutdown
grace; 5 s outside a supervisor), each call bounded by ``call_timeout``. A failure there is logged,
never raised over the cancellation: the registration then simply expires. A lease that ended on a
refused registration does not Unregister (the name is not, or no longer, its own).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Final, Generic, TypeVar, cast

import attrs
import trio

from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from trionsm.clock import Clock, current_clock
from trionsm.errors import (
    CallCancelled,
    DeadlineExceeded,
    ResourceExhausted,
    TrionsmError,
    Unavailable,
)
from trionsm.supervision import DEFAULT_WORKER_SHUTDOWN, ChildSpec, Restart, cleanup_scope
from trionsm.transport import Client, open_client

__all__ = [
    "DEFAULT_LEASE_CALL_TIMEOUT",
    "DEFAULT_MAX_RETRY_INTERVAL",
    "DEFAULT_RETRY_INTERVAL",
    "DEFAULT_START_TIMEOUT",
    "REFRESH_FRACTION",
    "Lease",
    "lease_spec",
    "serve_lease",
    "serve_service_lease",
]

log = logging.getLogger("trionsm.actors.lease")

REFRESH_FRACTION: Final = 2 / 3
"""Re-Register after this fraction of the remaining lifetime (NSM's NSE refresh)."""
DEFAULT_RETRY_INTERVAL: Final = 0.2
"""Seconds between attempts to refresh a registration that is still alive (NSM's 200 ms)."""
DEFAULT_MAX_RETRY_INTERVAL: Final = 1.0
"""Cap of the backoff while the registration is lost and the registry does not answer."""
DEFAULT_LEASE_CALL_TIMEOUT: Final = 5.0
"""Seconds each Register/Unregister may take (and a watch may take to show the name)."""
DEFAULT_START_TIMEOUT: Final = 15.0
"""Seconds the first Register is retried before the lease fails to start (NSM's request timeout)."""

RETRYABLE: Final = (Unavailable, DeadlineExceeded, ResourceExhausted, CallCancelled)

E = TypeVar("E", NetworkServiceEndpoint, NetworkService)


@attrs.define(eq=False)
class Lease(Generic[E]):
    """A registration kept alive by :func:`serve_lease` (what it reports once registered).

    Read it, never write it. Waiting methods block until the condition holds and are cancelled
    only from outside (bound them with ``trio.fail_after``).

    Attributes:
        kind: ``"endpoint"`` or ``"service"``.
        name: the registered name.
        registry_url: where it is registered.
        current: the last registration the registry returned (with its ``expiration_time``).
        registrations: successful Registers so far (the first one, refreshes, re-Registers).
        registered_at: Trio time of the last successful Register.
        expires_at: Trio deadline of ``current`` (``inf`` for a service; ``-inf`` before the first
            registration; the Unregister's time once unregistered).
        refresh_at: Trio time of the next planned refresh (``inf`` when none is planned).
        watch_breaks: times the watch on the name broke or showed the name deleted.
        last_error: the last failed call's error (kept after a later success, for status).
    """

    kind: str
    name: str
    registry_url: str
    current: E
    registrations: int = 0
    registered_at: float = -math.inf
    expires_at: float = -math.inf
    refresh_at: float = math.inf
    watch_breaks: int = 0
    last_error: TrionsmError | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event, repr=False)

    @property
    def alive(self) -> bool:
        """True while the last registration has not expired (by this process's clock)."""
        return trio.current_time() < self.expires_at

    async def wait_registrations(self, count: int) -> E:
        """Block until ``registrations >= count``; returns that registration (``current``)."""
        while self.registrations < count:
            await self._changed.wait()
        return self.current

    async def updates(self) -> AsyncIterator[E]:
        """Each registration made after this call, as it happens; never ends by itself.

        Coalesced: a reader slower than the registrations sees the latest one.
        """
        seen = self.registrations
        while True:
            await self.wait_registrations(seen + 1)
            seen = self.registrations
            yield self.current

    def _note(self, current: E, expires_at: float, refresh_at: float) -> None:
        self.current = current
        self.registrations += 1
        self.registered_at = trio.current_time()
        self.expires_at = expires_at
        self.refresh_at = refresh_at
        self._changed.set()
        self._changed = trio.Event()


Entry = NetworkServiceEndpoint | NetworkService
"""What a lease registers; the helpers below hold all that differs between the two kinds."""


def _prepare(entry: Entry, clock: Clock, expiry: float | None) -> Entry:
    """The message to Register now: an endpoint asks for a fresh expiry (or the default)."""
    if isinstance(entry, NetworkServiceEndpoint):
        expires = None if expiry is None else clock.timestamp(trio.current_time() + expiry)
        return dataclasses.replace(entry, expiration_time=expires)
    return entry


async def _register(client: Client, entry: Entry, call_timeout: float) -> Entry:
    if isinstance(entry, NetworkServiceEndpoint):
        return await client.nse_registry.register(entry, timeout=call_timeout)
    return await client.ns_registry.register(entry, timeout=call_timeout)


async def _unregister(client: Client, entry: Entry, call_timeout: float) -> None:
    if isinstance(entry, NetworkServiceEndpoint):
        await client.nse_registry.unregister(entry, timeout=call_timeout)
    else:
        await client.ns_registry.unregister(entry, timeout=call_timeout)


def _watch(
    client: Client, entry: Entry
) -> AbstractAsyncContextManager[
    AsyncIterator[NetworkServiceEndpointResponse | NetworkServiceResponse]
]:
    """Find(watch=true) on the entry's name."""
    if isinstance(entry, NetworkServiceEndpoint):
        nse = NetworkServiceEndpoint(name=entry.name)
        return client.nse_registry.find(
            NetworkServiceEndpointQuery(network_service_endpoint=nse, watch=True)
        )
    ns = NetworkService(name=entry.name)
    return client.ns_registry.find(NetworkServiceQuery(network_service=ns, watch=True))


def _event(response: NetworkServiceEndpointResponse | NetworkServiceResponse) -> tuple[str, bool]:
    """(name, deleted) of one watch event."""
    if isinstance(response, NetworkServiceEndpointResponse):
        entry: NetworkServiceEndpoint | NetworkService | None = response.network_service_endpoint
    else:
        entry = response.network_service
    return (entry.name if entry is not None else ""), response.deleted


@attrs.frozen
class _Options:
    expiry: float | None
    retry_interval: float
    max_retry_interval: float
    call_timeout: float
    clock: Clock


class _Keeper(Generic[E]):
    """The lease's tasks: the registrar and the watcher (see the module docstring)."""

    def __init__(self, client: Client, url: str, entry: E, opts: _Options) -> None:
        self.client = client
        self.entry: E = entry
        self.opts = opts
        kind = "endpoint" if isinstance(entry, NetworkServiceEndpoint) else "service"
        self.lease: Lease[E] = Lease(kind, entry.name, url, entry)
        self.fatal: TrionsmError | None = None
        self._urgent = trio.Event()
        self._confirmed = False

    def _where(self) -> str:
        return f"{self.lease.kind} lease {self.lease.name!r} at {self.lease.registry_url}"

    async def register(self, *, urgent: bool) -> None:
        """Register until the registry accepts; raises only what is not the path's fault.

        ``urgent``: the registration may be lost, so back off (capped) from the first failure;
        otherwise retry every ``retry_interval`` while the current registration is alive.
        """
        opts, backoff, failures = self.opts, self.opts.retry_interval, 0
        while True:
            entry = cast(E, _prepare(self.entry, opts.clock, opts.expiry))
            try:
                reply = cast(E, await _register(self.client, entry, opts.call_timeout))
            except RETRYABLE as exc:
                self.lease.last_error = exc
                failures += 1
                if not urgent and trio.current_time() < self.lease.expires_at:
                    pause = opts.retry_interval
                else:
                    pause, backoff = backoff, min(backoff * 2, opts.max_retry_interval)
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(
                    level, "%s: Register failed (%s); retrying in %.1fs", self._where(), exc, pause
                )
                await trio.sleep(pause)
                continue
            if failures:
                log.info("%s: registered after %d failed attempts", self._where(), failures)
            self._note(reply, entry)
            return

    def _note(self, reply: E, sent: E) -> None:
        now = trio.current_time()
        expiration = None
        if isinstance(reply, NetworkServiceEndpoint) and isinstance(sent, NetworkServiceEndpoint):
            expiration = reply.expiration_time or sent.expiration_time
        if expiration is None:
            expires_at = refresh_at = math.inf
        else:
            expires_at = self.opts.clock.deadline(expiration)
            remaining = expires_at - now
            # A registration already past (clock skew) is refreshed soon, never in a hot loop.
            refresh_at = now + (
                remaining * REFRESH_FRACTION if remaining > 0 else self.opts.retry_interval
            )
        self.lease._note(reply, expires_at, refresh_at)

    async def start(self, start_timeout: float) -> None:
        """The first registration, retried until ``start_timeout`` (then DeadlineExceeded)."""
        with trio.move_on_after(start_timeout):
            await self.register(urgent=True)
            return
        last = self.lease.last_error or "none (the first Register had not returned)"
        raise DeadlineExceeded(
            f"not registered within {start_timeout:g}s; last error: {last}",
            hop=self.lease.registry_url,
            service=self.lease.name,
        ) from self.lease.last_error

    async def keep(self) -> None:
        """Refresh and watch until cancelled; raises the error that ended the lease."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._registrar, nursery.cancel_scope)
            nursery.start_soon(self._watcher, nursery.cancel_scope)
        if self.fatal is not None:
            raise self.fatal

    def _fail(self, exc: TrionsmError, scope: trio.CancelScope) -> None:
        log.error("%s: ending the lease: %s", self._where(), exc)
        if self.fatal is None:
            self.fatal = exc
        scope.cancel()

    async def _registrar(self, scope: trio.CancelScope) -> None:
        while True:
            with trio.move_on_at(self.lease.refresh_at):
                await self._urgent.wait()
            urgent = self._urgent.is_set()
            self._urgent = trio.Event()  # a trigger from now on asks for another Register
            try:
                await self.register(urgent=urgent)
            except TrionsmError as exc:
                self._fail(exc, scope)
                return

    async def _watcher(self, scope: trio.CancelScope) -> None:
        opts, backoff = self.opts, self.opts.retry_interval
        while True:
            self._confirmed = False
            try:
                reason = await self._follow()
            except RETRYABLE as exc:
                reason = f"the watch broke: {exc}"
            except TrionsmError as exc:
                self._fail(exc, scope)
                return
            seen = self.lease.registrations
            self.lease.watch_breaks += 1
            log.warning("%s: %s; registering again", self._where(), reason)
            self._urgent.set()
            await self.lease.wait_registrations(seen + 1)
            if self._confirmed:
                backoff = opts.retry_interval
            else:  # the watch never showed the name: do not reopen it in a tight loop
                await trio.sleep(backoff)
                backoff = min(backoff * 2, opts.max_retry_interval)

    async def _follow(self) -> str:
        """Watch the name until the watch says it is gone; returns why."""
        name = self.lease.name
        async with _watch(self.client, self.entry) as events:
            deadline = trio.current_time() + self.opts.call_timeout
            while True:
                with trio.move_on_at(deadline) as wait:
                    try:
                        response = await anext(events)
                    except StopAsyncIteration:
                        self._confirmed = False  # reopen with backoff, not in a tight loop
                        return "the registry ended the watch"
                if wait.cancelled_caught:
                    # Absent from the snapshot (lost between Register and watch): the
                    # re-Register shows up on this watch as an update.
                    deadline = math.inf
                    log.warning("%s: not in the registry's watch; registering again", self._where())
                    self._urgent.set()
                    continue
                event_name, deleted = _event(response)
                if event_name != name:
                    continue
                if deleted:
                    return "the registry deleted it (expired or unregistered elsewhere)"
                self._confirmed = True
                deadline = math.inf

    async def unregister(self) -> None:
        """Unregister within the shutdown grace; failures are logged, never raised."""
        lease = self.lease
        with cleanup_scope() as scope:
            try:
                await _unregister(self.client, lease.current, self.opts.call_timeout)
            except TrionsmError as exc:
                log.warning("%s: Unregister failed (%s); it will expire", self._where(), exc)
                return
            except Exception:
                log.exception("%s: Unregister failed; it will expire", self._where())
                return
            lease.expires_at, lease.refresh_at = trio.current_time(), math.inf
        if scope.cancelled_caught:
            log.warning("%s: no time left to Unregister; it will expire", self._where())


async def _serve(
    registry_url: str,
    entry: E,
    opts: _Options,
    *,
    start_timeout: float,
    unregister: bool,
    client_options: dict[str, Any],
    task_status: trio.TaskStatus[Lease[E]],
) -> None:
    if not (opts.retry_interval > 0 and opts.max_retry_interval >= opts.retry_interval):
        raise ValueError(
            f"retry_interval must be > 0 and <= max_retry_interval, got {opts.retry_interval!r}"
            f" and {opts.max_retry_interval!r}"
        )
    async with open_client(registry_url, **client_options) as client:
        keeper = _Keeper(client, registry_url, entry, opts)
        try:
            await keeper.start(start_timeout)
            task_status.started(keeper.lease)
            await keeper.keep()
        finally:
            if unregister and keeper.lease.registrations and keeper.fatal is None:
                await keeper.unregister()


async def serve_lease(
    registry_url: str,
    endpoint: NetworkServiceEndpoint,
    *,
    expiry: float | None = None,
    retry_interval: float = DEFAULT_RETRY_INTERVAL,
    max_retry_interval: float = DEFAULT_MAX_RETRY_INTERVAL,
    call_timeout: float = DEFAULT_LEASE_CALL_TIMEOUT,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    unregister: bool = True,
    clock: Clock | None = None,
    task_status: trio.TaskStatus[Lease[NetworkServiceEndpoint]] = trio.TASK_STATUS_IGNORED,
    **client_options: Any,
) -> None:
    """Keep ``endpoint`` registered at ``registry_url`` until cancelled (the LeaseActor).

    ``task_status.started(lease)`` once the registry accepted the first Register. Runs until
    cancelled, then Unregisters (see the module docstring); usable as a supervised child (see
    :func:`lease_spec`).

    Args:
        registry_url: the registry (or nsmgr) to register with, any transport URL.
        endpoint: what to register; its ``expiration_time`` is ignored (see ``expiry``).
        expiry: lifetime to ask for on each Register, seconds; None takes the registry's default
            (NSM's 1 minute). The registry may grant less; refreshes follow what it granted.
        retry_interval: seconds between refresh attempts while the registration is alive.
        max_retry_interval: cap of the backoff while the registration is lost.
        call_timeout: seconds each Register/Unregister may take.
        start_timeout: seconds the first Register is retried on the path's errors.
        unregister: Unregister when cancelled.
        clock: maps Trio time to wire Timestamps (default: the run's clock).
        client_options: passed to ``open_client`` (``ssl_context``, ``roundtrip_bytes``...).

    Raises:
        InvalidArgument, PermissionDenied, ...: the registry refused (before ``started``: a start
            error; later the lease ends with it).
        DeadlineExceeded: no Register succeeded within ``start_timeout``.
        ValueError: a bad ``retry_interval``.
    """
    opts = _Options(
        expiry, retry_interval, max_retry_interval, call_timeout, clock or current_clock()
    )
    await _serve(
        registry_url,
        endpoint,
        opts,
        start_timeout=start_timeout,
        unregister=unregister,
        client_options=client_options,
        task_status=task_status,
    )


async def serve_service_lease(
    registry_url: str,
    service: NetworkService,
    *,
    retry_interval: float = DEFAULT_RETRY_INTERVAL,
    max_retry_interval: float = DEFAULT_MAX_RETRY_INTERVAL,
    call_timeout: float = DEFAULT_LEASE_CALL_TIMEOUT,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    unregister: bool = False,
    task_status: trio.TaskStatus[Lease[NetworkService]] = trio.TASK_STATUS_IGNORED,
    **client_options: Any,
) -> None:
    """Keep the network service ``service`` registered at ``registry_url`` until cancelled.

    As :func:`serve_lease`, except that services never expire, so nothing is refreshed: the lease
    re-Registers only when its watch breaks or shows the service deleted. By default it does not
    Unregister when cancelled (as NSM's endpoints, which never unregister their service): other
    endpoints may serve the same service, and their leases would only register it again.
    """
    opts = _Options(None, retry_interval, max_retry_interval, call_timeout, current_clock())
    await _serve(
        registry_url,
        service,
        opts,
        start_timeout=start_timeout,
        unregister=unregister,
        client_options=client_options,
        task_status=task_status,
    )


def lease_spec(
    registry_url: str,
    entry: NetworkServiceEndpoint | NetworkService,
    *,
    id: str | None = None,
    shutdown: float = DEFAULT_WORKER_SHUTDOWN,
    **options: Any,
) -> ChildSpec:
    """A TRANSIENT ChildSpec keeping ``entry`` registered (an endpoint or a network service).

    ``id`` defaults to ``lease:<name>``; ``shutdown`` is the grace for the Unregister;
    ``options`` go to :func:`serve_lease` or :func:`serve_service_lease`.
    """
    if isinstance(entry, NetworkServiceEndpoint):
        start = partial(serve_lease, registry_url, entry, **options)
    else:
        start = partial(serve_service_lease, registry_url, entry, **options)
    return ChildSpec(
        id or f"lease:{entry.name}", start, restart=Restart.TRANSIENT, shutdown=shutdown
    )

"""NSM's ``netsvcmonitor``: the nsmgr closes connections whose endpoint no longer matches.

Theory of operation. After every successful Request the nsmgr subscribes the connection to its
network service (:meth:`NetworkServiceMonitor.subscribe`, replacing its earlier subscription) until
the connection ends at the nsmgr (Close, expiry, reselect). Connections share one watch per service
(Find with ``watch=true``), opened with the service's first subscriber and closed with its last, so
a node with thousands of connections holds one stream per service in use, not one per connection.
Each version of the service that arrives (the current one first, then every change) is matched
again against every subscriber's selected endpoint as the registry has it now, with the request's
labels (:func:`still_matches`, NSM's ``MatchEndpoint``; a service without matches accepts every
endpoint, so the look-up is skipped); a new subscriber is checked against the version already
known. A connection that no longer matches is closed once (``close(reason)``, then unsubscribed):
the NSC sees the DELETE and heals onto an endpoint that matches.

A broken watch is reopened every :data:`RETRY_INTERVAL` (a registry restart must not close
connections), and so is a failed endpoint look-up; an endpoint the registry does not list
(expired, not yet re-registered) is not a reason to close; neither is a deleted service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs
import trio

from trionsm.api.registry import NetworkService, NetworkServiceEndpoint, NetworkServiceQuery
from trionsm.errors import TrionsmError
from trionsm.transport import Client

from ._role import find_endpoints
from ._select import match_endpoints

__all__ = ["RETRY_INTERVAL", "NetworkServiceMonitor", "still_matches"]

RETRY_INTERVAL: Final = 0.1
"""Seconds between attempts to reopen a broken watch or retry a look-up (NSM's 100 ms)."""
FIND_TIMEOUT: Final = 5.0
"""Seconds the look-up of a selected endpoint may take."""


def still_matches(
    labels: Mapping[str, str], ns: NetworkService, endpoints: Sequence[NetworkServiceEndpoint]
) -> bool:
    """True while ``ns``'s matches select one of ``endpoints`` for a request with ``labels``."""
    return bool(match_endpoints(labels, ns, endpoints))


@attrs.define(slots=True, eq=False)
class _Subscription:
    endpoint: str
    labels: Mapping[str, str]
    close: Callable[[str], None]


@attrs.define(eq=False)
class _ServiceWatch:
    """The subscribers of one network service and its latest version."""

    subscriptions: dict[str, _Subscription] = attrs.field(factory=dict)
    pending: set[str] = attrs.field(factory=set)  # to check against ``ns``
    ns: NetworkService | None = None
    wake: trio.Event = attrs.field(factory=trio.Event)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    def check(self, connection_ids: set[str] | dict[str, _Subscription]) -> None:
        self.pending.update(connection_ids)
        self.wake.set()


class NetworkServiceMonitor:
    """Shared network-service watches for the nsmgr's connections (see the module docstring).

    Args:
        nursery: where the watches run (the nsmgr's serving nursery).
        registry: a client to the registry (or a registry front).
    """

    def __init__(self, nursery: trio.Nursery, registry: Client) -> None:
        self._nursery = nursery
        self._registry = registry
        self._services: dict[str, _ServiceWatch] = {}
        self._by_connection: dict[str, str] = {}  # connection id -> its service

    def watching(self, service: str) -> int:
        """How many connections are subscribed to ``service``."""
        watch = self._services.get(service)
        return len(watch.subscriptions) if watch is not None else 0

    def subscribe(
        self,
        connection_id: str,
        service: str,
        endpoint: str,
        labels: Mapping[str, str],
        close: Callable[[str], None],
    ) -> None:
        """Call ``close(reason)`` once ``endpoint`` no longer matches ``service`` (replaces the
        connection's earlier subscription). Never blocks."""
        self.unsubscribe(connection_id)
        watch = self._services.get(service)
        if watch is None:
            watch = self._services[service] = _ServiceWatch()
            self._nursery.start_soon(self._run, service, watch)
        watch.subscriptions[connection_id] = _Subscription(endpoint, labels, close)
        self._by_connection[connection_id] = service
        if watch.ns is not None:
            watch.check({connection_id})

    def unsubscribe(self, connection_id: str) -> None:
        """Forget the connection (idempotent); a service's watch closes with its last one."""
        service = self._by_connection.pop(connection_id, None)
        watch = self._services.get(service) if service is not None else None
        if watch is None:
            return
        watch.subscriptions.pop(connection_id, None)
        watch.pending.discard(connection_id)
        if not watch.subscriptions:
            del self._services[service]  # type: ignore[arg-type]
            watch.scope.cancel()

    async def _run(self, service: str, watch: _ServiceWatch) -> None:
        with watch.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, service, watch)
                await self._checks(service, watch, nursery)

    async def _follow(self, service: str, watch: _ServiceWatch) -> None:
        """Keep ``watch.ns`` current; every version marks every subscriber for a check."""
        query = NetworkServiceQuery(network_service=NetworkService(name=service), watch=True)
        while True:
            try:
                async with self._registry.ns_registry.find(query, timeout=None) as stream:
                    async for response in stream:
                        ns = response.network_service
                        if ns is None or response.deleted or ns.name != service:
                            continue
                        watch.ns = ns
                        watch.check(watch.subscriptions)
            except TrionsmError:
                pass
            await trio.sleep(RETRY_INTERVAL)

    async def _checks(self, service: str, watch: _ServiceWatch, nursery: trio.Nursery) -> None:
        while True:
            await watch.wake.wait()
            watch.wake = trio.Event()
            ns, pending = watch.ns, watch.pending
            watch.pending = set()
            if ns is None or not ns.matches:
                continue  # no matches: every endpoint of the service matches
            by_endpoint: dict[str, list[str]] = {}
            for connection_id in pending:
                subscription = watch.subscriptions.get(connection_id)
                if subscription is not None:
                    by_endpoint.setdefault(subscription.endpoint, []).append(connection_id)
            for endpoint, connection_ids in by_endpoint.items():
                try:
                    found = await find_endpoints(
                        self._registry, NetworkServiceEndpoint(name=endpoint), bound=FIND_TIMEOUT
                    )
                except TrionsmError:
                    watch.pending.update(connection_ids)  # look again shortly
                    nursery.start_soon(_wake_later, watch)
                    continue
                found = [nse for nse in found if nse.name == endpoint]
                if not found:
                    continue  # not listed (expired, not yet re-registered): no reason to close
                for connection_id in connection_ids:
                    subscription = watch.subscriptions.get(connection_id)
                    if subscription is None or watch.ns is not ns:
                        continue  # gone meanwhile, or a newer version will be checked
                    if not still_matches(subscription.labels, ns, found):
                        self.unsubscribe(connection_id)
                        subscription.close(
                            f"endpoint {endpoint!r} no longer matches network service "
                            f"{service!r} as updated"
                        )


async def _wake_later(watch: _ServiceWatch) -> None:
    await trio.sleep(RETRY_INTERVAL)
    watch.wake.set()

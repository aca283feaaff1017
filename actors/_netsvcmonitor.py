"""NSM's ``netsvcmonitor``: the nsmgr closes connections whose endpoint no longer matches.

Theory of operation. After every successful Request the nsmgr watches the connection's network
service (Find with ``watch=true``) until the path's earliest expiry (a refresh starts a new
watch). Each version of the service that arrives (the current one first, then every change) is
matched again against the selected endpoint as the registry has it now, with the request's
labels (:func:`still_matches`, NSM's ``MatchEndpoint``; a service without matches accepts every
endpoint, so the look-up is skipped). When it no longer matches, the connection is closed once:
the NSC sees the DELETE and heals onto an endpoint that matches.

A broken watch is reopened every :data:`RETRY_INTERVAL` (a registry restart must not close
connections); an endpoint the registry does not list (expired, not yet re-registered) is not a
reason to close; neither is a deleted service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

import trio

from trionsm.api.registry import NetworkService, NetworkServiceEndpoint, NetworkServiceQuery
from trionsm.errors import TrionsmError
from trionsm.transport import Client

from ._role import find_endpoints
from ._select import match_endpoints

__all__ = ["RETRY_INTERVAL", "still_matches", "watch_network_service"]

RETRY_INTERVAL: Final = 0.1
"""Seconds between attempts to reopen a broken watch (NSM's 100 ms)."""
FIND_TIMEOUT: Final = 5.0
"""Seconds the look-up of the selected endpoint may take."""


def still_matches(
    labels: Mapping[str, str], ns: NetworkService, endpoints: Sequence[NetworkServiceEndpoint]
) -> bool:
    """True while ``ns``'s matches select one of ``endpoints`` for a request with ``labels``."""
    return bool(match_endpoints(labels, ns, endpoints))


async def watch_network_service(
    registry: Client,
    service: str,
    endpoint: str,
    labels: Mapping[str, str],
    *,
    close: Callable[[str], None],
) -> None:
    """Watch ``service`` and call ``close(reason)`` once ``endpoint`` no longer matches it.

    Runs until cancelled (the caller bounds it by the path's expiry), or returns right after
    calling ``close``. Never raises the registry's errors: it retries them.

    Args:
        registry: a client to the registry (or a registry front).
        service: the connection's network service.
        endpoint: the selected endpoint's name.
        labels: the request's labels (what selection used).
        close: called with the reason when the endpoint no longer matches.
    """
    query = NetworkServiceQuery(network_service=NetworkService(name=service), watch=True)
    wanted = NetworkServiceEndpoint(name=endpoint)
    while True:
        try:
            async with registry.ns_registry.find(query, timeout=None) as stream:
                async for response in stream:
                    ns = response.network_service
                    if ns is None or response.deleted or ns.name != service:
                        continue
                    if not ns.matches:
                        continue  # no matches: every endpoint of the service matches
                    found = await find_endpoints(registry, wanted, bound=FIND_TIMEOUT)
                    found = [nse for nse in found if nse.name == endpoint]
                    if found and not still_matches(labels, ns, found):
                        close(
                            f"endpoint {endpoint!r} no longer matches network service "
                            f"{service!r} as updated"
                        )
                        return
        except TrionsmError:
            pass
        await trio.sleep(RETRY_INTERVAL)

"""RegistryActor: the registry as a supervised tree serving both registry APIs.

Tree (REST_FOR_ONE, so a lost store restarts what depends on it, and a listener restarts alone)::

    registry
    ├── store                     the store's own tasks (etcd: its Watch feeding the catalogs)
    ├── entries                   SIMPLE_ONE_FOR_ONE supervisor of EntryActors (TEMPORARY)
    └── listen:<url> ...          one transport server per URL, serving
                                  NetworkServiceRegistry, NetworkServiceEndpointRegistry, Health
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from trionsm.actors._health import Health
from trionsm.api.google.protobuf import Empty
from trionsm.api.registry import (
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointQuery,
    NetworkServiceEndpointResponse,
    NetworkServiceQuery,
    NetworkServiceResponse,
)
from trionsm.clock import Clock
from trionsm.errors import InvalidArgument
from trionsm.supervision import (
    BRUTAL_KILL,
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
    Supervisor,
    open_supervisor,
)
from trionsm.transport import HEALTH, NS_REGISTRY, NSE_REGISTRY, CallContext, Handlers, serve

from ._catalog import DEFAULT_WATCH_BUFFER
from ._entry import run_entry
from ._registry import DEFAULT_EXPIRY, Registry
from ._store import MemoryStore, Store

__all__ = ["RegistryHandle", "open_store", "registry_handlers", "registry_spec", "serve_registry"]


class _EndpointRegistry:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def register(
        self, request: NetworkServiceEndpoint, ctx: CallContext
    ) -> NetworkServiceEndpoint:
        return await self._registry.register_endpoint(request, ctx.peer)

    def find(
        self, query: NetworkServiceEndpointQuery, ctx: CallContext
    ) -> AsyncIterator[NetworkServiceEndpointResponse]:
        return self._registry.find_endpoints(query)

    async def unregister(self, request: NetworkServiceEndpoint, ctx: CallContext) -> Empty:
        await self._registry.unregister_endpoint(request, ctx.peer)
        return Empty()


class _ServiceRegistry:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def register(self, request: NetworkService, ctx: CallContext) -> NetworkService:
        return await self._registry.register_service(request, ctx.peer)

    def find(
        self, query: NetworkServiceQuery, ctx: CallContext
    ) -> AsyncIterator[NetworkServiceResponse]:
        return self._registry.find_services(query)

    async def unregister(self, request: NetworkService, ctx: CallContext) -> Empty:
        await self._registry.unregister_service(request, ctx.peer)
        return Empty()


def registry_handlers(registry: Registry) -> Handlers:
    """The handlers that serve ``registry`` on a transport (both registry APIs and Health)."""
    return {
        NS_REGISTRY: _ServiceRegistry(registry),
        NSE_REGISTRY: _EndpointRegistry(registry),
        HEALTH: Health([NS_REGISTRY.name, NSE_REGISTRY.name]),
    }


def open_store(
    store: str | Store, *, watch_buffer: int = DEFAULT_WATCH_BUFFER, hop: str = "registry"
) -> Store:
    """A store from its description: ``memory`` or ``etcd://host:port[/prefix]``, or as given."""
    if not isinstance(store, str):
        return store
    if store == "memory":
        return MemoryStore(watch_buffer=watch_buffer, hop=hop)
    if store.startswith("etcd://"):
        from ._etcd_store import EtcdStore

        etcd: Store = EtcdStore(store, watch_buffer=watch_buffer, hop=hop)
        return etcd
    raise InvalidArgument(
        f"store {store!r}: expected 'memory' or 'etcd://HOST:PORT[/PREFIX]'", hop=hop
    )


@attrs.frozen(eq=False)
class RegistryHandle:
    """A running registry (what ``serve_registry`` reports once it serves).

    Attributes:
        registry: the logic (entries, store, counters), for status and tests.
        supervisor: the registry's supervisor (``tree()``, fault injection).
    """

    registry: Registry
    supervisor: Supervisor
    _bound: dict[str, str]

    @property
    def urls(self) -> list[str]:
        """The bound URL of each listener, in the order given (``tcp://...:0`` shows its port)."""
        return list(self._bound.values())


async def _serve_entries(registry: Registry, *, task_status: trio.TaskStatus[Supervisor]) -> None:
    spec = ChildSpec("entry", run_entry, restart=Restart.TEMPORARY, shutdown=BRUTAL_KILL)
    async with open_supervisor(
        [spec], strategy=Strategy.SIMPLE_ONE_FOR_ONE, intensity=10, period=10.0, name="entries"
    ) as supervisor:
        registry.attach(partial(_start_entry, supervisor, registry))
        try:
            await registry.adopt()
            task_status.started(supervisor)
            await trio.sleep_forever()
        finally:
            registry.detach()


async def _start_entry(supervisor: Supervisor, registry: Registry, entry: Any) -> object:
    return await supervisor.start_child(entry, registry.expire)


class _NoteBound:
    """A task status that notes the listener's bound URL before passing ``started`` on."""

    def __init__(self, inner: trio.TaskStatus[Any], bound: dict[str, str], url: str) -> None:
        self._inner, self._bound, self._url = inner, bound, url

    def started(self, value: Any = None) -> None:
        self._bound[self._url] = value.url
        self._inner.started(value)


async def _serve_listener(
    registry: Registry,
    url: str,
    bound: dict[str, str],
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    status: Any = _NoteBound(task_status, bound, url)
    await serve(url, registry_handlers(registry), hop=registry.hop, task_status=status, **options)


async def serve_registry(
    listen: str | Sequence[str],
    *,
    store: str | Store = "memory",
    expiry: float = DEFAULT_EXPIRY,
    watch_buffer: int = DEFAULT_WATCH_BUFFER,
    clock: Clock | None = None,
    hop: str = "registry",
    task_status: trio.TaskStatus[RegistryHandle] = trio.TASK_STATUS_IGNORED,
    **transport_options: Any,
) -> None:
    """Serve the registry on every URL in ``listen`` until cancelled.

    ``task_status.started(handle)`` once every listener accepts calls; ``handle.urls`` are the
    bound addresses. Usable as a supervised child (see :func:`registry_spec`).

    Args:
        listen: transport URLs (``tcp://127.0.0.1:5002``, ``unix:///run/registry.sock``, ...).
        store: ``"memory"``, ``"etcd://127.0.0.1:2379"`` or a :class:`Store`.
        expiry: the default (and longest) endpoint registration lifetime, seconds.
        watch_buffer: events a Find(watch=true) may fall behind before it is closed.
        clock: the wall-clock mapping for Timestamps (default: the run's clock).
        hop: this registry's name in errors.
        transport_options: passed to every ``transport.serve`` (``ssl_context``, ``curve``...).
    """
    urls = [listen] if isinstance(listen, str) else list(listen)
    if not urls:
        raise InvalidArgument("serve_registry needs at least one URL to listen on", hop=hop)
    backing = open_store(store, watch_buffer=watch_buffer, hop=hop)
    registry = Registry(backing, expiry=expiry, clock=clock, hop=hop)
    bound: dict[str, str] = {}
    children = [
        ChildSpec("store", backing.serve),
        ChildSpec("entries", partial(_serve_entries, registry), type=ChildType.SUPERVISOR),
        *(
            ChildSpec(
                f"listen:{url}",
                partial(_serve_listener, registry, url, bound, transport_options),
            )
            for url in urls
        ),
    ]
    async with open_supervisor(
        children, strategy=Strategy.REST_FOR_ONE, intensity=3, period=30.0, name=hop
    ) as supervisor:
        task_status.started(RegistryHandle(registry, supervisor, bound))
        await trio.sleep_forever()


def registry_spec(
    listen: str | Sequence[str], *, id: str = "registry", **options: Any
) -> ChildSpec:
    """A ChildSpec running :func:`serve_registry` (a PERMANENT supervisor child)."""
    return ChildSpec(id, partial(serve_registry, listen, **options), type=ChildType.SUPERVISOR)

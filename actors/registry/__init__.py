"""The registry role: network services and endpoints with expiry, watchable Find, two stores.

Map:

* :func:`serve_registry` / :func:`registry_spec`: the RegistryActor tree serving
  NetworkServiceRegistry and NetworkServiceEndpointRegistry (and gRPC Health) on any transport
  URL; :class:`RegistryHandle` is what it reports once serving.
* :class:`Registry`: the logic (Register, Unregister, Find) over a :class:`Store`.
* Stores: :class:`MemoryStore` (default), ``EtcdStore`` (``etcd://host:port``, shared by replicas);
  :func:`open_store` makes one from its description.
* :func:`endpoint_matches`, :func:`service_matches`: NSM's Find rules; :func:`check_endpoint`,
  :func:`check_service`: what a registration must satisfy.

Guarantees: an endpoint registration lives until ``min(requested expiration_time, now + expiry)``
(default expiry 60 s) unless refreshed; at that deadline it is removed and every watcher gets
``deleted=true``. Services never expire; their payload defaults to ``IP``. Find(watch=false)
streams the current matches and ends; Find(watch=true) streams them, then every change, and is
closed with ResourceExhausted if it falls behind. Bad registrations get InvalidArgument naming the
field and nothing is stored. A name registered by an authenticated identity can be changed only by
that identity (PermissionDenied otherwise).
"""

from __future__ import annotations

from ._catalog import DEFAULT_WATCH_BUFFER, Catalog, Change, Watcher
from ._match import endpoint_matches, service_matches
from ._registry import DEFAULT_EXPIRY, DEFAULT_PAYLOAD, Registry
from ._server import RegistryHandle, open_store, registry_handlers, registry_spec, serve_registry
from ._store import MemoryStore, Store
from ._validate import check_endpoint, check_service

__all__ = [
    "DEFAULT_EXPIRY",
    "DEFAULT_PAYLOAD",
    "DEFAULT_WATCH_BUFFER",
    "Catalog",
    "Change",
    "MemoryStore",
    "Registry",
    "RegistryHandle",
    "Store",
    "Watcher",
    "check_endpoint",
    "check_service",
    "endpoint_matches",
    "open_store",
    "registry_handlers",
    "registry_spec",
    "serve_registry",
    "service_matches",
]

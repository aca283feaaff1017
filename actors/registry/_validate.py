"""What the registry accepts: checks on every registration, each failure naming the field.

Pure functions. A failure raises :class:`~trionsm.errors.InvalidArgument` whose reason starts with
the field (``network_service_endpoint.url: ...``), so a caller knows what to fix; nothing is stored
for a registration that fails here.

Limits (documented, generous for real deployments, small enough that one registration cannot
exhaust the registry): names of at most :data:`MAX_NAME` characters; at most :data:`MAX_SERVICES`
service names per endpoint and label sets; at most :data:`MAX_LABELS` labels per set, keys of at
most :data:`MAX_LABEL_KEY` and values of at most :data:`MAX_LABEL_VALUE` characters; at most
:data:`MAX_MATCHES` matches per network service and :data:`MAX_LABELS` routes per match.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Final

from trionsm.api.registry import NetworkService, NetworkServiceEndpoint
from trionsm.errors import InvalidArgument
from trionsm.transport import parse_url

__all__ = [
    "MAX_LABELS",
    "MAX_LABEL_KEY",
    "MAX_LABEL_VALUE",
    "MAX_MATCHES",
    "MAX_NAME",
    "MAX_SERVICES",
    "PAYLOADS",
    "check_endpoint",
    "check_service",
]

MAX_NAME: Final = 253
MAX_SERVICES: Final = 64
MAX_LABELS: Final = 64
MAX_LABEL_KEY: Final = 253
MAX_LABEL_VALUE: Final = 1024
MAX_MATCHES: Final = 64
PAYLOADS: Final = ("IP", "ETHERNET")

_NSE = "network_service_endpoint"
_NS = "network_service"


def _fail(field: str, problem: str, *, hop: str, service: str | None) -> None:
    raise InvalidArgument(f"{field}: {problem}", hop=hop, service=service)


def _check_name(field: str, name: str, *, hop: str, service: str | None) -> None:
    if not name:
        _fail(field, "empty; a name is required", hop=hop, service=service)
    if len(name) > MAX_NAME:
        _fail(field, f"{len(name)} characters, at most {MAX_NAME}", hop=hop, service=service)
    for index, char in enumerate(name):
        if char.isspace() or not char.isprintable() or char == "/":
            _fail(
                field,
                f"character {char!r} at index {index} (no whitespace, '/' or control characters)",
                hop=hop,
                service=service,
            )


def _check_labels(field: str, labels: Mapping[str, str], *, hop: str, service: str | None) -> None:
    if len(labels) > MAX_LABELS:
        _fail(field, f"{len(labels)} labels, at most {MAX_LABELS}", hop=hop, service=service)
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY:
            _fail(
                field,
                f"label key of {len(key)} characters (1 to {MAX_LABEL_KEY})",
                hop=hop,
                service=service,
            )
        if len(value) > MAX_LABEL_VALUE:
            _fail(
                f"{field}[{key!r}]",
                f"value of {len(value)} characters, at most {MAX_LABEL_VALUE}",
                hop=hop,
                service=service,
            )


def check_endpoint(
    nse: NetworkServiceEndpoint, *, now: datetime.datetime, hop: str = "registry"
) -> None:
    """Raise InvalidArgument naming the first field of ``nse`` the registry cannot store.

    ``now`` is the registry's wall time (from its clock): an ``expiration_time`` at or before it is
    refused.
    """
    service = nse.network_service_names[0] if nse.network_service_names else None
    _check_name(f"{_NSE}.name", nse.name, hop=hop, service=service)
    where = f"{_NSE} {nse.name!r}"
    if not nse.url:
        _fail(
            f"{_NSE}.url",
            f"empty for {where}; the endpoint's URL is required",
            hop=hop,
            service=service,
        )
    try:
        parse_url(nse.url)
    except InvalidArgument as exc:
        _fail(f"{_NSE}.url", exc.reason, hop=hop, service=service)
    names = nse.network_service_names
    if not names:
        _fail(
            f"{_NSE}.network_service_names",
            f"empty for {where}; an endpoint serves at least one network service",
            hop=hop,
            service=None,
        )
    if len(names) > MAX_SERVICES:
        _fail(
            f"{_NSE}.network_service_names",
            f"{len(names)} names, at most {MAX_SERVICES}",
            hop=hop,
            service=service,
        )
    seen: set[str] = set()
    for index, name in enumerate(names):
        _check_name(f"{_NSE}.network_service_names[{index}]", name, hop=hop, service=name)
        if name in seen:
            _fail(
                f"{_NSE}.network_service_names[{index}]",
                f"{name!r} is listed twice",
                hop=hop,
                service=name,
            )
        seen.add(name)
    label_sets = nse.network_service_labels
    if len(label_sets) > MAX_SERVICES:
        _fail(
            f"{_NSE}.network_service_labels",
            f"{len(label_sets)} label sets, at most {MAX_SERVICES}",
            hop=hop,
            service=service,
        )
    for name, labels in label_sets.items():
        _check_labels(
            f"{_NSE}.network_service_labels[{name!r}]", labels.labels, hop=hop, service=name
        )
    expiration = nse.expiration_time
    if expiration is not None and expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=datetime.UTC)  # naive is UTC, as the clock reads it
    if expiration is not None and expiration <= now:
        _fail(
            f"{_NSE}.expiration_time",
            f"{expiration.isoformat()} is not after the registry's now ({now.isoformat()})",
            hop=hop,
            service=service,
        )


def check_service(ns: NetworkService, *, hop: str = "registry") -> None:
    """Raise InvalidArgument naming the first field of ``ns`` the registry cannot store."""
    _check_name(f"{_NS}.name", ns.name, hop=hop, service=ns.name or None)
    if ns.payload and ns.payload not in PAYLOADS:
        _fail(
            f"{_NS}.payload",
            f"{ns.payload!r}; expected one of {', '.join(PAYLOADS)} (empty means IP)",
            hop=hop,
            service=ns.name,
        )
    if len(ns.matches) > MAX_MATCHES:
        _fail(
            f"{_NS}.matches",
            f"{len(ns.matches)} matches, at most {MAX_MATCHES}",
            hop=hop,
            service=ns.name,
        )
    for index, match in enumerate(ns.matches):
        field = f"{_NS}.matches[{index}]"
        _check_labels(f"{field}.source_selector", match.source_selector, hop=hop, service=ns.name)
        if len(match.routes) > MAX_LABELS:
            _fail(
                f"{field}.routes",
                f"{len(match.routes)} routes, at most {MAX_LABELS}",
                hop=hop,
                service=ns.name,
            )
        for route_index, route in enumerate(match.routes):
            _check_labels(
                f"{field}.routes[{route_index}].destination_selector",
                route.destination_selector,
                hop=hop,
                service=ns.name,
            )
        if match.metadata is not None:
            _check_labels(
                f"{field}.metadata.labels", match.metadata.labels, hop=hop, service=ns.name
            )

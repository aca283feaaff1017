"""Choosing endpoints and forwarders: NSM's matches, selector templates, round robin (pure).

Theory of operation, as NSM's sdk does it (``matchutils``, ``discover``, ``discoverforwarder``,
``roundrobin``); the request labels are ``Connection.labels`` (the client's labels plus
``nodeName``/``podName``/``clusterName``):

* :func:`render` runs a selector value as a Go ``text/template`` over the request labels:
  ``{{.nodeName}}`` is that label (``<no value>`` when absent, as Go prints a missing map key),
  ``{{index . "k"}}`` and ``{{index .Labels "k"}}`` look ``k`` up (empty when absent). Trim
  markers (``{{- .x -}}``) work. Any other action, or a template Go would not parse, leaves the
  value literal, as NSM falls back to the literal string on a parse or exec error. (In NSM's
  matcher ``.Labels`` would be a missing key and the ``index .Labels`` form would stay literal;
  we accept it because it is the form NSM's pod templates use; it only widens what can match.)
* :func:`is_subset` is NSM's ``IsSubset``: every selector entry equals the label literally or
  once rendered. Go's map semantics are kept: an absent label reads as ``""``, and a selector
  with more entries than there are labels never matches.
* :func:`match_endpoints` is ``MatchEndpoint``: with no matches, every endpoint; else the first
  match whose source selector fits the request labels; its routes, in order, select the
  endpoints whose labels *for this service* fit (concatenated, duplicates kept, weights ignored);
  none found and ``fallthrough`` go on; none found, ``metadata`` and no routes: every endpoint;
  otherwise those candidates, even none. No match applies at all: None.
* :func:`match_forwarders` is ``discoverforwarder``: the first fitting match's metadata labels
  (default ``p2p=true``) against each forwarder's labels for service ``forwarder``,
  ``fallthrough`` respected; a service without matches (or unknown) accepts every forwarder.
* :class:`RoundRobin` rotates where each service's candidate list starts; :func:`prefer_named`
  puts a remembered forwarder first; :func:`drop_expired` is discover's expiry filter.

Where NSM answers "network service endpoint candidates not found" or "all candidates have
failed", :func:`no_endpoint_error`, :func:`no_forwarder_error` and :func:`all_failed_error` name
the service, each match and what it selected, and the candidates with their labels;
:func:`select_endpoints` / :func:`select_forwarders` match and raise those errors in one call.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Final, NamedTuple, TypeVar

import attrs

from trionsm.api.registry import Match, NetworkService, NetworkServiceEndpoint
from trionsm.errors import NotFound, TrionsmError, Unavailable

__all__ = [
    "DEFAULT_FORWARDER_LABELS",
    "FORWARDER_SERVICE",
    "RoundRobin",
    "all_failed_error",
    "drop_expired",
    "is_subset",
    "match_endpoints",
    "match_forwarders",
    "no_endpoint_error",
    "no_forwarder_error",
    "prefer_named",
    "render",
    "select_endpoints",
    "select_forwarders",
]

FORWARDER_SERVICE: Final = "forwarder"
"""The service forwarders register as."""
DEFAULT_FORWARDER_LABELS: Final[Mapping[str, str]] = types.MappingProxyType({"p2p": "true"})
"""What a forwarder must have when the applicable match has no metadata labels."""

_T = TypeVar("_T")
_SPACE = " \t\r\n"
_SPACES = frozenset(_SPACE)
_FIELD = re.compile(r"\.([^\W\d]\w*)")
_INDEX = re.compile(r'index[ \t\r\n]+(?:\.|\.Labels)[ \t\r\n]+("(?:[^"\\\n]|\\.)*"|`[^`]*`)')
_MAX_SHOWN = 8
_MAX_REASON = 4000


# -- templates ----------------------------------------------------------------------------------


class _Lookup(NamedTuple):
    key: str
    missing: str  # what Go prints when the key is absent


def render(value: str, labels: Mapping[str, str]) -> str:
    """``value`` rendered as NSM renders a selector template over ``labels``.

    Returns ``value`` itself when it is not a template this module understands.
    """
    if "{{" not in value:
        return value
    pieces = _parse(value)
    if pieces is None:
        return value
    return "".join(p if isinstance(p, str) else labels.get(p.key, p.missing) for p in pieces)


@functools.lru_cache(maxsize=1024)
def _parse(value: str) -> tuple[str | _Lookup, ...] | None:
    pieces: list[str | _Lookup] = []
    position = 0
    while (start := value.find("{{", position)) >= 0:
        text, inner = value[position:start], start + 2
        if value[inner : inner + 1] == "-" and value[inner + 1 : inner + 2] in _SPACES:
            text, inner = text.rstrip(_SPACE), inner + 1
        end = _close(value, inner)
        if end < 0:
            return None  # unclosed action: Go would not parse it
        body, trim_right = value[inner:end], False
        if body.endswith("-") and body[-2:-1] in _SPACES:
            body, trim_right = body[:-1], True
        lookup = _action(body.strip(_SPACE))
        if lookup is None:
            return None
        pieces += [text, lookup]
        position = end + 2
        while trim_right and value[position : position + 1] in _SPACES:
            position += 1
    pieces.append(value[position:])
    return tuple(pieces)


def _close(value: str, index: int) -> int:
    """Where the action opened before ``index`` closes (``}}`` outside a string), or -1."""
    quote = ""
    while index < len(value):
        char = value[index]
        if quote:
            if char == "\\" and quote == '"':
                index += 1
            elif char == quote:
                quote = ""
        elif char in '"`':
            quote = char
        elif value.startswith("}}", index):
            return index
        index += 1
    return -1


def _action(body: str) -> _Lookup | None:
    if field := _FIELD.fullmatch(body):
        return _Lookup(field[1], "<no value>")
    if index := _INDEX.fullmatch(body):
        literal = index[1]
        if literal.startswith("`"):
            return _Lookup(literal[1:-1], "")
        try:
            key = json.loads(literal)  # Go's escapes, near enough; others stay literal
        except ValueError:
            return None
        return _Lookup(key, "")
    return None


# -- matching -----------------------------------------------------------------------------------


def is_subset(
    selector: Mapping[str, str], labels: Mapping[str, str], values: Mapping[str, str]
) -> bool:
    """NSM's ``IsSubset(labels, selector, values)``: ``labels`` has every ``selector`` entry.

    An entry fits when the label equals the selector value literally or rendered over ``values``
    (:func:`render`). As in Go, an absent label reads as ``""``, and ``labels`` smaller than
    ``selector`` never fits.
    """
    if len(labels) < len(selector):
        return False
    for key, wanted in selector.items():
        have = labels.get(key, "")
        if have != wanted and have != render(wanted, values):
            return False
    return True


def _labels_for(endpoint: NetworkServiceEndpoint, service: str) -> Mapping[str, str]:
    entry = endpoint.network_service_labels.get(service)
    return entry.labels if entry is not None else {}


def _route(
    match: Match,
    service: str,
    request_labels: Mapping[str, str],
    endpoints: Sequence[NetworkServiceEndpoint],
) -> list[NetworkServiceEndpoint]:
    return [
        endpoint
        for route in match.routes
        for endpoint in endpoints
        if is_subset(route.destination_selector, _labels_for(endpoint, service), request_labels)
    ]


def match_endpoints(
    request_labels: Mapping[str, str],
    ns: NetworkService,
    endpoints: Sequence[NetworkServiceEndpoint],
) -> list[NetworkServiceEndpoint] | None:
    """NSM's ``MatchEndpoint``: the endpoints of ``ns`` this request may use, in order.

    Args:
        request_labels: the request's ``Connection.labels``.
        ns: the network service with its matches.
        endpoints: the (unexpired) endpoints registered for ``ns``.

    Returns:
        The candidates (possibly empty), or None when no match applies to the request.
    """
    if not ns.matches:
        return list(endpoints)
    for match in ns.matches:
        if not is_subset(match.source_selector, request_labels, request_labels):
            continue
        candidates = _route(match, ns.name, request_labels, endpoints)
        if match.fallthrough and not candidates:
            continue
        if match.metadata is not None and not match.routes and not candidates:
            return list(endpoints)
        return candidates
    return None


def _wanted_by(match: Match) -> Mapping[str, str]:
    # Go reads a nil map for absent metadata and for empty labels (as they come off the wire).
    if match.metadata is not None and match.metadata.labels:
        return match.metadata.labels
    return DEFAULT_FORWARDER_LABELS


def _fits_forwarder(
    forwarder: NetworkServiceEndpoint, wanted: Mapping[str, str], values: Mapping[str, str]
) -> bool:
    entry = forwarder.network_service_labels.get(FORWARDER_SERVICE)
    return entry is not None and is_subset(wanted, entry.labels, values)


def match_forwarders(
    request_labels: Mapping[str, str],
    ns: NetworkService | None,
    forwarders: Sequence[NetworkServiceEndpoint],
) -> list[NetworkServiceEndpoint]:
    """NSM's ``discoverforwarder.matchForwarders``: the forwarders fit for this request, in order.

    Args:
        request_labels: the request's ``Connection.labels``.
        ns: the requested network service, or None if unknown (every forwarder then fits).
        forwarders: this node's forwarders (endpoints of service :data:`FORWARDER_SERVICE`).

    Returns:
        Every forwarder when ``ns`` has no matches; else those whose ``forwarder`` labels have
        the first applicable match's metadata labels (default ``p2p=true``), with fallthrough;
        empty when no match applies.
    """
    if ns is None or not ns.matches:
        return list(forwarders)
    for match in ns.matches:
        if not is_subset(match.source_selector, request_labels, request_labels):
            continue
        wanted = _wanted_by(match)
        found = [f for f in forwarders if _fits_forwarder(f, wanted, request_labels)]
        if match.fallthrough and not found:
            continue
        return found
    return []


def drop_expired(
    endpoints: Sequence[NetworkServiceEndpoint], now: datetime.datetime
) -> list[NetworkServiceEndpoint]:
    """The endpoints whose ``expiration_time`` is unset or after ``now`` (naive times are UTC)."""

    def alive(endpoint: NetworkServiceEndpoint) -> bool:
        expires = endpoint.expiration_time
        if expires is None:
            return True
        return _utc(expires) > _utc(now)

    return [endpoint for endpoint in endpoints if alive(endpoint)]


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment.replace(tzinfo=datetime.UTC) if moment.tzinfo is None else moment


def prefer_named(
    candidates: Sequence[NetworkServiceEndpoint], name: str | None
) -> list[NetworkServiceEndpoint]:
    """``candidates`` with the one called ``name`` moved first (forwarder reuse after a restart).

    The order of the others is kept; with no such candidate (or no name) the order is unchanged.
    NSM swaps it with the first; moving it keeps the rest of the rotation intact.
    """
    for index, candidate in enumerate(candidates):
        if name and candidate.name == name:
            return [candidate, *candidates[:index], *candidates[index + 1 :]]
    return list(candidates)


@attrs.define
class RoundRobin:
    """Per-key rotation of candidate lists (NSM's ``roundrobin``, keyed by network service).

    Each :meth:`order` call starts one place further on than the previous call for the same
    key, so successive requests for a service spread over its endpoints. NSM advances once per
    *attempt*; here it advances once per request, and the failover order within a request is the
    rest of the rotation. Actor state: not shared between tasks.
    """

    _counters: dict[str, int] = attrs.field(factory=dict, init=False)

    def order(self, key: str, candidates: Sequence[_T]) -> list[_T]:
        """``candidates`` rotated to start at this key's turn; advances the key's counter."""
        if not candidates:
            return []
        turn = self._counters.get(key, 0)
        self._counters[key] = turn + 1
        start = turn % len(candidates)
        return [*candidates[start:], *candidates[:start]]

    def forget(self, key: str) -> None:
        """Drop a key's counter (the service is gone)."""
        self._counters.pop(key, None)


# -- errors that say why ------------------------------------------------------------------------


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_labels(labels: Mapping[str, str]) -> str:
    items = sorted(labels.items())
    shown = ", ".join(f"{_short(key, 40)}={_short(value)}" for key, value in items[:12])
    more = f", and {len(items) - 12} more" if len(items) > 12 else ""
    return "{" + shown + more + "}"


def _format_selector(selector: Mapping[str, str], values: Mapping[str, str]) -> str:
    if not selector:
        return "{any}"
    parts = []
    for key, wanted in sorted(selector.items()):
        rendered = render(wanted, values)
        origin = f" (from {_short(wanted)})" if rendered != wanted else ""
        parts.append(f"{_short(key, 40)}={_short(rendered)}{origin}")
    return "{" + ", ".join(parts) + "}"


def _format_candidates(
    candidates: Sequence[NetworkServiceEndpoint], service: str, what: str
) -> str:
    shown = "; ".join(
        f"{c.name or '(unnamed)'} {_format_labels(_labels_for(c, service))}"
        for c in candidates[:_MAX_SHOWN]
    )
    more = f"; and {len(candidates) - _MAX_SHOWN} more" if len(candidates) > _MAX_SHOWN else ""
    return f"{len(candidates)} {what}(s) considered: {shown}{more}"


def _walk(
    ns: NetworkService,
    request_labels: Mapping[str, str],
    applied: Callable[[Match], tuple[str, bool]],
) -> str:
    """What each match did for these labels, up to the one that decided (``applied``'s text)."""
    steps = []
    for number, match in enumerate(ns.matches, 1):
        head = f"match {number} (source {_format_selector(match.source_selector, request_labels)})"
        if not is_subset(match.source_selector, request_labels, request_labels):
            steps.append(f"{head} does not apply")
            continue
        text, empty = applied(match)
        if match.fallthrough and empty:
            steps.append(f"{head} {text}, falls through")
            continue
        steps.append(f"{head} {text}")
        return "; ".join(steps)
    steps.append("no match applies to these labels" if steps else "no match applies")
    return "; ".join(steps)


def _error(reason: str, *, hop: str | None, service: str) -> NotFound:
    return NotFound(_short(reason, _MAX_REASON), hop=hop, service=service)


def no_endpoint_error(
    service: str,
    request_labels: Mapping[str, str],
    ns: NetworkService | None,
    endpoints_considered: Sequence[NetworkServiceEndpoint],
    hop: str | None = None,
) -> NotFound:
    """The NotFound for "no endpoint for this request", saying why.

    The reason names the service, the request labels, each match tried with its source and
    (rendered) destination selectors, and the endpoints considered with their labels for this
    service (at most 8 listed).
    """
    labels = _format_labels(request_labels)
    if ns is None:
        reason = f"network service {service!r} is not registered"
        if endpoints_considered:
            reason += "; " + _format_candidates(endpoints_considered, service, "endpoint")
        return _error(reason, hop=hop, service=service)
    if not endpoints_considered:
        reason = f"no endpoint of network service {service!r} is registered (or all expired)"
        return _error(reason, hop=hop, service=service)
    labelled_for = ns.name or service  # whose labels the routes read (ns.name, as MatchEndpoint)

    def applied(match: Match) -> tuple[str, bool]:
        if not match.routes:
            every = ", so every endpoint" if match.metadata is not None else ""
            return f"has no routes{every}", True
        routes = " or ".join(
            _format_selector(route.destination_selector, request_labels) for route in match.routes
        )
        count = len(_route(match, labelled_for, request_labels, endpoints_considered))
        found = f"{count} endpoint(s) fit" if count else "no endpoint has those labels"
        return f"routes to {routes}: {found}", not count

    walk = _walk(ns, request_labels, applied) if ns.matches else "it has no matches"
    reason = (
        f"no endpoint of network service {service!r} fits the request labels {labels}: {walk}. "
        + _format_candidates(endpoints_considered, labelled_for, "endpoint")
    )
    return _error(reason, hop=hop, service=service)


def no_forwarder_error(
    service: str,
    request_labels: Mapping[str, str],
    ns: NetworkService | None,
    forwarders_considered: Sequence[NetworkServiceEndpoint],
    hop: str | None = None,
) -> NotFound:
    """The NotFound for "no forwarder for this request", saying why (as :func:`no_endpoint_error`,
    with each forwarder's ``forwarder`` labels)."""
    if not forwarders_considered:
        reason = f"no forwarder is registered at this nsmgr (for network service {service!r})"
        return _error(reason, hop=hop, service=service)

    def applied(match: Match) -> tuple[str, bool]:
        wanted = _wanted_by(match)
        default = " (the default)" if wanted is DEFAULT_FORWARDER_LABELS else ""
        count = sum(_fits_forwarder(f, wanted, request_labels) for f in forwarders_considered)
        found = f"{count} forwarder(s) fit" if count else "no forwarder has them"
        wants = _format_selector(wanted, request_labels)
        return f"wants forwarder labels {wants}{default}: {found}", not count

    walk = _walk(ns, request_labels, applied) if ns and ns.matches else "any forwarder fits"
    reason = (
        f"no forwarder fits network service {service!r} for the request labels "
        f"{_format_labels(request_labels)}: {walk}. "
        + _format_candidates(forwarders_considered, FORWARDER_SERVICE, "forwarder")
    )
    return _error(reason, hop=hop, service=service)


def all_failed_error(
    service: str,
    failures: Sequence[tuple[str, BaseException]],
    *,
    hop: str | None = None,
    kind: str = "endpoint",
) -> TrionsmError:
    """The error when every candidate was tried and failed: each one's name and error.

    Args:
        service: the network service.
        failures: ``(candidate name, its error)`` in the order tried.
        hop: this hop.
        kind: ``"endpoint"`` or ``"forwarder"``.

    Returns:
        An error of the failures' class when they all share one trionsm class (every endpoint
        refused the same way), else :class:`~trionsm.errors.Unavailable` (the path's fault).
    """
    cls: type[TrionsmError] = Unavailable
    classes = {type(error) for _, error in failures}
    if len(classes) == 1:
        (only,) = classes
        if issubclass(only, TrionsmError):
            cls = only
    # Each candidate's error gets an equal share of the room, so the nested errors of a path
    # (nsmgr -> forwarder -> remote nsmgr -> ...) still name every candidate and its reason.
    shown = failures[:_MAX_SHOWN]
    share = max(300, (_MAX_REASON - 200) // max(len(shown), 1))
    listed = "; ".join(f"{name}: {_short(str(error), share)}" for name, error in shown)
    more = f"; and {len(failures) - _MAX_SHOWN} more" if len(failures) > _MAX_SHOWN else ""
    reason = f"all {len(failures)} {kind} candidate(s) failed: {listed}{more}"
    return cls(_short(reason, _MAX_REASON), hop=hop, service=service)


def select_endpoints(
    service: str,
    request_labels: Mapping[str, str],
    ns: NetworkService | None,
    endpoints: Sequence[NetworkServiceEndpoint],
    *,
    hop: str | None = None,
) -> list[NetworkServiceEndpoint]:
    """:func:`match_endpoints`, raising :func:`no_endpoint_error` instead of returning none."""
    found = match_endpoints(request_labels, ns, endpoints) if ns is not None else None
    if not found:
        raise no_endpoint_error(service, request_labels, ns, endpoints, hop)
    return found


def select_forwarders(
    service: str,
    request_labels: Mapping[str, str],
    ns: NetworkService | None,
    forwarders: Sequence[NetworkServiceEndpoint],
    *,
    hop: str | None = None,
) -> list[NetworkServiceEndpoint]:
    """:func:`match_forwarders`, raising :func:`no_forwarder_error` instead of returning none."""
    found = match_forwarders(request_labels, ns, forwarders)
    if not found:
        raise no_forwarder_error(service, request_labels, ns, forwarders, hop)
    return found

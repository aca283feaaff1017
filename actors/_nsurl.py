"""The network service URL a workload asks with: ``kernel://icmp-responder/nsm-1?app=foo`` (pure).

NSM's ``nsurl`` format, ``<mechanism>://<network-service>[/<interface>][?<label>=<value>&...]``:

* the mechanism, case-insensitive, becomes the requested LOCAL mechanism type (``KERNEL``). Only
  the LOCAL types are accepted (kernel, memif, vfio, noop): a workload asks for how the wire
  reaches *it*; vxlan, wireguard, ipsec, vlan and srv6 are REMOTE mechanisms that forwarders
  choose between themselves, so ``vxlan://svc`` is refused with that explanation instead of
  failing later with "cannot support any of the requested mechanisms";
* the network service: letters, digits and ``-._~``. Interdomain services are written as the
  userinfo: ``kernel://icmp-responder@my.cluster2/nsm-1`` names ``icmp-responder@my.cluster2``
  (as Go's ``url.URL.User`` and ``Hostname()`` read it). Ports and passwords are refused;
* the interface, optional: one path segment, percent-decoded, a valid Linux interface name
  (at most 15 bytes; see :func:`~trionsm.actors._mechanisms.check_interface_name`). NSM takes
  the last of several segments; here ``/a/b`` is an error;
* labels, optional: the query string, decoded as Go's ``url.ParseQuery`` does (``+`` is a space,
  percent-escapes, a repeated key's values joined with ``,``, empty pieces skipped), except that
  what Go drops silently is an error here: a bad escape, ``;``, an empty key, a piece without ``=``.

Anything wrong raises :class:`~trionsm.errors.InvalidArgument` quoting the URL and naming what is
wrong. Every :class:`NsUrl`, however built, satisfies ``parse_nsurl(u.format()) == u``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import NoReturn
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import attrs

from trionsm.api.connection import Mechanism
from trionsm.errors import InvalidArgument

from ._mechanisms import LOCAL, LOCAL_TYPES, TYPES, Param, check_interface_name

__all__ = ["NsUrl", "parse_nsurl"]

_MAX_URL = 4096
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-._~")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORM = "<mechanism>://<network-service>[/<interface>][?label=value&...]"


def _labels(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@attrs.frozen
class NsUrl:
    """A parsed network service URL; :func:`parse_nsurl` builds one, :meth:`format` writes it.

    Attributes:
        mechanism: the requested LOCAL mechanism type, upper case (``KERNEL``).
        network_service: the service, ``svc`` or ``svc@domain``.
        interface: the interface name the workload wants, or None to let the mesh pick one.
        labels: the request's labels (``Connection.labels``), a copy of what was given.

    The constructor raises InvalidArgument unless every field is valid.
    """

    mechanism: str
    network_service: str
    interface: str | None = None
    labels: dict[str, str] = attrs.field(factory=dict, converter=_labels, hash=False)

    def __attrs_post_init__(self) -> None:
        where = f"NsUrl({self.mechanism!r}, {self.network_service[:100]!r})"
        _check_mechanism(self.mechanism.lower(), where)
        if self.mechanism != self.mechanism.upper():
            _fail(where, f"mechanism {self.mechanism!r} must be upper case")
        _check_service(self.network_service, where)
        if self.interface is not None:
            _check_interface(self.interface, where, self.network_service)
        for key, value in self.labels.items():
            _check_label(key, value, where)

    def format(self) -> str:
        """The canonical URL: lower-case mechanism, percent-escaped, labels sorted by key."""
        url = f"{self.mechanism.lower()}://{self.network_service}"
        if self.interface is not None:
            url += "/" + quote(self.interface, safe="")
        if self.labels:
            pairs = sorted(self.labels.items())
            url += "?" + "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)
        return url

    def __str__(self) -> str:
        return self.format()

    def to_mechanism(self) -> Mechanism:
        """The mechanism preference this URL asks for: cls LOCAL, the type, ``name`` if given."""
        parameters = {Param.NAME: self.interface} if self.interface is not None else {}
        return Mechanism(cls=LOCAL, type=self.mechanism, parameters=parameters)


def parse_nsurl(url: str) -> NsUrl:
    """Parse a network service URL (see the module docstring for the format).

    Raises:
        InvalidArgument: the reason quotes the URL and names what is wrong and how to write it.
    """
    where = repr(url if len(url) <= 200 else url[:200] + "...")
    if len(url) > _MAX_URL:
        _fail(where, f"{len(url)} characters, at most {_MAX_URL}")
    bad = next((c for c in url if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        _fail(where, f"contains {bad!r}; whitespace and control characters are not allowed")
    scheme, separator, rest = url.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        head = url.partition(":")[0]
        if ":" in url and _SCHEME.fullmatch(head):
            _fail(where, f"expected '{head}://' after the mechanism; write {_FORM}")
        _fail(where, f"no mechanism; write {_FORM}, e.g. kernel://{url[:40] or 'my-service'}")
    _check_mechanism(scheme.lower(), where)
    if "#" in rest:
        _fail(where, "fragments ('#...') are not allowed")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    service = _parse_service(authority, where)
    interface = _parse_interface(path, where, service) if slash and path else None
    return NsUrl(scheme.upper(), service, interface, _parse_labels(query, where))


def _fail(where: str, problem: str, service: str | None = None) -> NoReturn:
    raise InvalidArgument(f"network service URL {where}: {problem}", service=service)


def _check_mechanism(name: str, where: str) -> None:
    if name.upper() in LOCAL_TYPES:
        return
    local = ", ".join(kind.lower() for kind in LOCAL_TYPES)
    if name.upper() in TYPES:
        _fail(
            where,
            f"{name} is a REMOTE mechanism, chosen between forwarders; "
            f"a workload asks for a LOCAL one: {local}",
        )
    _fail(where, f"unknown mechanism {name[:40]!r}; use one of {local}")


def _check_name(part: str, what: str, where: str) -> None:
    if not part:
        _fail(where, f"empty {what}; write {_FORM}")
    bad = next((c for c in part if c not in _NAME_CHARS), None)
    if bad is not None:
        hint = " (ports have no meaning here)" if bad == ":" else ""
        _fail(where, f"{bad!r} in the {what} {part[:100]!r}{hint}; use letters, digits and -._~")


def _check_service(service: str, where: str) -> None:
    name, at, domain = service.partition("@")
    _check_name(name, "network service", where)
    if at:
        _check_name(domain, "domain after '@'", where)


def _parse_service(authority: str, where: str) -> str:
    user, at, host = authority.rpartition("@")
    if at and ":" in user:
        _fail(where, "a password (':' before '@') is not allowed")
    service = f"{user}@{host}" if at else authority
    _check_service(service, where)
    return service


def _decode(text: str, what: str, where: str, *, plus: bool) -> str:
    match = _BAD_ESCAPE.search(text)
    if match is not None:
        _fail(where, f"bad percent-escape {text[match.start() : match.start() + 3]!r} in {what}")
    try:
        return unquote_plus(text, errors="strict") if plus else unquote(text, errors="strict")
    except UnicodeDecodeError:
        _fail(where, f"{what} {text[:100]!r} does not decode to UTF-8")


def _check_interface(interface: str, where: str, service: str) -> None:
    try:
        check_interface_name(interface)
    except InvalidArgument as exc:
        _fail(where, exc.reason, service)


def _parse_interface(path: str, where: str, service: str) -> str:
    if "/" in path:
        _fail(where, f"the path is one interface name, got {path[:100]!r}", service)
    interface = _decode(path, "the interface name", where, plus=False)
    _check_interface(interface, where, service)
    return interface


def _check_label(key: str, value: str, where: str) -> None:
    if not key:
        _fail(where, f"a label with an empty key (value {value[:100]!r})")
    for text in (key, value):
        if any(not c.isprintable() for c in text):
            _fail(where, f"label {key[:100]!r} contains control characters")


def _parse_labels(query: str, where: str) -> dict[str, str]:
    if ";" in query:
        _fail(where, "';' between labels; separate them with '&'")
    labels: dict[str, str] = {}
    for piece in query.split("&"):
        if not piece:
            continue
        raw_key, equals, raw_value = piece.partition("=")
        if not equals:
            _fail(where, f"label {raw_key[:100]!r} has no '=value' (write {raw_key[:100]}=)")
        key = _decode(raw_key, "a label key", where, plus=True)
        value = _decode(raw_value, f"label {key[:100]!r}", where, plus=True)
        _check_label(key, value, where)
        labels[key] = f"{labels[key]},{value}" if key in labels else value
    return labels

"""Transport URLs: the one URL parser of trionsm (pure, no I/O). Nothing else parses them.

A URL names where a server listens and the carrier that reaches it:

* ``inproc://NAME``: a server in this process, reached by direct calls (tests, scenarios, embedded
  nodes). The name is opaque: letters, digits and ``-._~!$&'()*+,;=:/``.
* ``unix:///ABS/PATH``, ``tcp://HOST:PORT``: gRPC in NSM's wire format (workload to nsmgr, node to
  node, registry). NSM's default socket is ``unix:///var/lib/networkservicemesh/nsm.io.sock``.
* ``zmq+tcp://HOST:PORT``, ``zmq+ipc:///ABS/PATH``: ZeroMQ ROUTER/DEALER hops.
* ``inode://DEV/INO``: NSM's name for a file whose descriptor travels out of band (grpcfd turns a
  netns's ``file:///proc/<pid>/ns/net`` inodeURL into it). Never dialed.

HOST is IPv4, IPv6 in brackets or a DNS name, never empty (for NSM's ``tcp://:5001`` write
``tcp://0.0.0.0:5001`` or ``tcp://[::]:5001``). PORT is required; 0 means "any free port" (the
server reports the port it bound with :meth:`Address.with_port`). Socket paths are absolute and
fit in ``sun_path`` (107 bytes, as Go and libzmq require). gRPC and NSM's ``TargetToNetAddr`` also
read ``unix:/abs/path`` as ``unix:///abs/path``: accepted, written back with three slashes.
``unix://var/x.sock`` is refused (Go's ``url.Parse`` takes ``var`` for a host).

Query strings, fragments, userinfo, percent-escapes, whitespace and control characters are
refused, so a URL has one reading. Canonical form: lowercase scheme and DNS names, compressed
IPv6, no leading zeros. Every :class:`Address`, however built, satisfies
``parse_url(str(a)) == a``: its constructor applies :func:`parse_url`'s checks. Anything invalid
raises :class:`~trionsm.errors.InvalidArgument` quoting the URL.
"""

from __future__ import annotations

import enum
import ipaddress
import string
from typing import NoReturn

import attrs

from trionsm.errors import InvalidArgument

__all__ = ["Address", "Scheme", "parse_url"]

_MAX_URL = 4096
_MAX_SOCKET_PATH = 107  # bytes: sun_path is 108 and Go and libzmq keep one for the NUL
_MAX_INODE = 2**64 - 1
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:/")
_PATH_CHARS = _NAME_CHARS | {"@"}
_HOST_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_.")
_ALLOWED = "use inproc://, unix://, tcp://, zmq+tcp://, zmq+ipc:// or inode://"


class Scheme(enum.Enum):
    """The URL schemes trionsm understands."""

    INPROC = "inproc"
    UNIX = "unix"
    TCP = "tcp"
    ZMQ_TCP = "zmq+tcp"
    ZMQ_IPC = "zmq+ipc"
    INODE = "inode"


# carrier, form (for error messages)
_SCHEMES: dict[Scheme, tuple[str | None, str]] = {
    Scheme.INPROC: ("inproc", "inproc://NAME"),
    Scheme.UNIX: ("grpc", "unix:///ABSOLUTE/PATH"),
    Scheme.TCP: ("grpc", "tcp://HOST:PORT"),
    Scheme.ZMQ_TCP: ("zmq", "zmq+tcp://HOST:PORT"),
    Scheme.ZMQ_IPC: ("zmq", "zmq+ipc:///ABSOLUTE/PATH"),
    Scheme.INODE: (None, "inode://DEV/INO with two decimal numbers"),
}
_BY_NAME = {scheme.value: scheme for scheme in Scheme}
_NET = (Scheme.TCP, Scheme.ZMQ_TCP)
_SOCKET = (Scheme.UNIX, Scheme.ZMQ_IPC)


@attrs.frozen
class Address:
    """A transport address; :func:`parse_url` builds one and ``str()`` gives its canonical URL.

    Attributes:
        scheme: which transport.
        host: tcp and zmq+tcp only: IPv4, IPv6 (without brackets) or a lowercase DNS name.
        port: tcp and zmq+tcp only: 0..65535, 0 meaning any free port.
        path: the absolute socket path (unix, zmq+ipc), the name (inproc) or ``"DEV/INO"`` (inode).

    The constructor raises InvalidArgument unless the fields are valid and in canonical form.
    """

    scheme: Scheme
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __attrs_post_init__(self) -> None:
        _check(self.scheme, self.host, self.port, self.path, _shorten(repr(self), 200))

    @property
    def dialable(self) -> bool:
        """Whether a client can connect to it (every scheme but inode)."""
        return self.scheme is not Scheme.INODE

    @property
    def carrier(self) -> str | None:
        """``"inproc"``, ``"grpc"`` (unix, tcp), ``"zmq"`` (zmq+*), or None for inode."""
        return _SCHEMES[self.scheme][0]

    @property
    def url(self) -> str:
        """The canonical URL."""
        if self.scheme in _NET:
            host = f"[{self.host}]" if ":" in (self.host or "") else self.host
            return f"{self.scheme.value}://{host}:{self.port}"
        return f"{self.scheme.value}://{self.path}"

    def __str__(self) -> str:
        return self.url

    @property
    def inode_numbers(self) -> tuple[int, int]:
        """``(dev, ino)`` of an inode address; InvalidArgument for any other scheme."""
        if self.scheme is not Scheme.INODE or self.path is None:
            raise InvalidArgument(f"{self.url!r} is not an inode:// address")
        dev, ino = self.path.split("/")
        return int(dev), int(ino)

    def with_port(self, port: int) -> Address:
        """The same tcp or zmq+tcp address on ``port`` (a server reporting the port it bound)."""
        if self.scheme not in _NET:
            raise InvalidArgument(f"{self.url!r} has no port; only tcp:// and zmq+tcp:// do")
        return attrs.evolve(self, port=port)


def parse_url(url: str) -> Address:
    """Parse a transport URL into its canonical :class:`Address`.

    Raises:
        InvalidArgument: ``url`` is not a str, or not one of the forms in this module's docstring;
            the message quotes it, says what is wrong and what is allowed.
    """
    if not isinstance(url, str):
        raise InvalidArgument(f"expected the URL as a str, got {type(url).__name__}; {_ALLOWED}")
    if not url:
        raise InvalidArgument(f"empty URL; {_ALLOWED}")
    where = _quote(url)
    if len(url) > _MAX_URL:
        _fail(f"URL of {len(url)} characters", where, f"at most {_MAX_URL} are allowed")
    for index, char in enumerate(url):
        if char.isspace() or not char.isprintable():
            kind = "NUL" if char == "\0" else "whitespace" if char.isspace() else "non-printable"
            _fail(f"{kind} character {char!r} at index {index}", where)
    name, colon, rest = url.partition(":")
    scheme = _BY_NAME.get(name.lower()) if colon else None
    if scheme is None:
        problem = f"unsupported scheme {_shorten(name, 40)!r}" if colon else "no scheme"
        _fail(problem, where, _ALLOWED)
    for char, what in (("?", "query strings"), ("#", "fragments"), ("%", "percent-escapes")):
        if char in rest:
            _fail(f"{what} ('{char}') are not allowed", where, _form(scheme))
    host = port = path = None
    if scheme is Scheme.UNIX and not rest.startswith("//"):
        path = rest  # gRPC's and NSM's unix:/abs/path; _check refuses a relative path
    elif not rest.startswith("//"):
        _fail(f"expected '{scheme.value}://'", where, _form(scheme))
    elif scheme in _NET:
        host, port = _split_host_port(rest[2:], scheme, where)
    elif scheme in _SOCKET and rest[2:3] not in ("/", ""):  # Go would read a host there
        hint = f"write {scheme.value}:///{_shorten(rest[2:], 100)} (three slashes)"
        _fail(f"{scheme.value} socket path must be absolute", where, hint)
    elif scheme is Scheme.INODE:
        dev, slash, ino = rest[2:].partition("/")
        if not (slash and _is_digits(dev) and _is_digits(ino)):
            _fail("malformed inode URL", where, _form(scheme))
        path = f"{int(dev)}/{int(ino)}"
    else:
        path = rest[2:]
    _check(scheme, host, port, path, where)
    return Address(scheme, host, port, path)


def _split_host_port(authority: str, scheme: Scheme, where: str) -> tuple[str, int]:
    for char, what in (("@", "userinfo ('user@')"), ("/", "a path")):
        if char in authority:
            _fail(f"{what} is not allowed", where, _form(scheme))
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            _fail("malformed [IPv6] host", where, _form(scheme))
        host, port = _canonical_host(host, where, ipv6=True), port[1:]
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
        if ":" in host:
            _fail("IPv6 address without brackets", where, f"write {scheme.value}://[{host}]:PORT")
        host = _canonical_host(host, where, ipv6=False)
    if not port:
        _fail("missing port", where, _form(scheme) + ", port 0 meaning any free port")
    if not _is_digits(port):
        _fail(f"port {_shorten(port, 20)!r} is not a decimal number", where, _form(scheme))
    return host, int(port)


def _canonical_host(host: str, where: str, *, ipv6: bool) -> str:
    """``host`` in canonical form (IPv6 compressed, names lowercase); InvalidArgument if invalid."""
    shown, name = _shorten(host, 100), host.lower()
    if not host:
        _fail("missing host", where, "to listen on every interface use 0.0.0.0 or [::]")
    try:
        if (ipv6 or ":" in host) and "%" not in host:  # no zone ids ("%eth0")
            return str(ipaddress.IPv6Address(host))
        if name.rpartition(".")[2].isdigit():  # no top-level domain is numeric: meant as IPv4
            return str(ipaddress.IPv4Address(name))
    except ValueError:
        _fail(f"invalid IP address {shown!r}", where)
    if not set(name) <= _HOST_CHARS:
        _fail(f"invalid host {shown!r}", where, "use an IP address or a DNS name (a-z, 0-9, -, _)")
    labels = name.split(".")
    if len(name) > 253 or not all(0 < len(x) <= 63 and "-" not in (x[0], x[-1]) for x in labels):
        hint = "labels of 1..63 characters that do not start or end with '-', 253 in all"
        _fail(f"invalid DNS name {shown!r}", where, hint)
    return name


def _check(scheme: object, host: object, port: object, path: object, where: str) -> None:
    """Raise InvalidArgument unless the fields are a valid address in canonical form."""
    if not isinstance(scheme, Scheme):
        _fail(f"scheme must be a Scheme, not {type(scheme).__name__}", where)
    for field, value, kind in (("host", host, str), ("port", port, int), ("path", path, str)):
        if (field == "path") == (scheme in _NET):
            if value is not None:
                _fail(f"{scheme.value} addresses have no {field}", where, _form(scheme))
        elif type(value) is not kind:
            _fail(f"{field} must be of type {kind.__name__}, not {type(value).__name__}", where)
    if isinstance(host, str) and (canonical := _canonical_host(host, where, ipv6=False)) != host:
        _fail(f"host {host!r} is not in canonical form", where, f"use {canonical!r}")
    if isinstance(port, int) and not 0 <= port <= 65535:
        _fail(f"port {_shorten(str(port), 20)} out of range 0..65535", where)
    if not isinstance(path, str):
        return
    if scheme is Scheme.INODE:
        for number in path.partition("/")[::2]:
            if not _is_digits(number) or (number.startswith("0") and number != "0"):
                _fail("inode path must be 'DEV/INO', decimals without leading zeros", where)
            if len(number) > 20 or int(number) > _MAX_INODE:  # int() refuses 4300+ digits
                _fail(f"inode number {_shorten(number, 25)} does not fit in 64 bits", where)
        return
    chars, what = (_NAME_CHARS, "inproc name") if scheme is Scheme.INPROC else (_PATH_CHARS, "path")
    if not path:
        _fail(f"missing {what}", where, _form(scheme))
    if not set(path) <= chars:
        others = "".join(sorted(chars - set(string.ascii_letters + string.digits)))
        bad = min(set(path) - chars)
        _fail(f"character {bad!r} in {what}", where, f"use letters, digits and {others}")
    if scheme in _SOCKET:
        if not path.startswith("/"):
            _fail(f"{scheme.value} socket path must be absolute", where, _form(scheme))
        if path.endswith("/"):
            _fail("socket path ends with '/'", where, "name the socket file, not its directory")
        if (size := len(path.encode())) > _MAX_SOCKET_PATH:
            _fail(f"socket path of {size} bytes", where, f"at most {_MAX_SOCKET_PATH} fit")


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _form(scheme: Scheme) -> str:
    return f"the form is {_SCHEMES[scheme][1]}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _quote(url: str) -> str:
    return repr(url) if len(url) <= 200 else f"{url[:200]!r}... ({len(url)} characters)"


def _fail(problem: str, where: str, hint: str = "") -> NoReturn:
    raise InvalidArgument(f"{problem} in {where}" + (f"; {hint}" if hint else ""))

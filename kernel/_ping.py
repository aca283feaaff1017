"""ICMP echo from inside a network namespace: data-plane liveness for heal.

Each :func:`ping` opens a raw ICMP (or ICMPv6) socket inside the namespace through a handle thread
of the :class:`~trionsm.kernel.Netlink` executor (which sits in that namespace; Trio's threads
never change namespace), hands it to Trio, and waits for a matching echo reply: same ICMP id,
one of our sequence numbers and our random payload (a raw socket sees every ICMP packet of its
namespace). ``connect()`` limits it to the destination, ``bind()`` to the source address when one
is given. The socket is closed before :func:`ping` returns or raises, on every path (an answer,
silence, no route, a cancellation): an open socket would keep its namespace, and every interface
in it, alive. Raw sockets need ``CAP_NET_RAW`` in the namespace: the kernel's unprivileged ICMP
sockets are off in every new namespace (``net.ipv4.ping_group_range = 1 0``).

:func:`check_liveness` is NSM's kernel liveness check: every (src, dst) pair of the same family
in the ``IPContext`` is pinged, ``packets`` echoes spread over ``timeout``; the wire is dead if
any pair gets no reply. Unlike NSM it returns as soon as every pair has answered once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import struct

import trio

from trionsm.api.connectioncontext import IpContext
from trionsm.errors import InvalidArgument

from ._netlink import Netlink, current_netlink
from ._netns import Namespace, resolve_namespace
from ._wireplan import Address

__all__ = ["LIVENESS_INTERVAL", "LIVENESS_PACKETS", "LIVENESS_TIMEOUT", "check_liveness", "ping"]

LIVENESS_INTERVAL = 0.2  # cmd-nsc's NSM_LIVENESS_CHECK_INTERVAL
LIVENESS_TIMEOUT = 1.0  # cmd-nsc's NSM_LIVENESS_CHECK_TIMEOUT
LIVENESS_PACKETS = 4  # sdk-kernel's KernelLivenessCheck: 4 echoes per pair

_ECHO = {4: (8, 0), 6: (128, 129)}  # (request, reply) ICMP types per family
_HEADER = struct.Struct("!BBHHH")


async def ping(
    namespace: Namespace | str,
    address: str | Address,
    *,
    timeout: float = LIVENESS_TIMEOUT,  # noqa: ASYNC109 - the echo's budget, NSM's contract
    packets: int = 1,
    source: str | Address | None = None,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> bool:
    """Whether ``address`` answers an ICMP echo sent from inside ``namespace``.

    Sends ``packets`` echoes spread evenly over ``timeout`` (the first at once) and returns True at
    the first matching reply, False when ``timeout`` passes without one or the destination is
    unreachable from the namespace (no route). Cancellable; the socket is closed either way.

    Raises:
        InvalidArgument: a malformed address, mixed families, ``packets < 1``, ``timeout <= 0``.
        NotFound, PermissionDenied: the namespace is missing or cannot be entered.
    """
    target = _address(address, "address", hop)
    origin = None if source is None else _address(source, "source", hop)
    if origin is not None and origin.version != target.version:
        raise InvalidArgument(
            f"ping: source {origin} and {target} are of different families", hop=hop
        )
    if packets < 1 or timeout <= 0:
        raise InvalidArgument("ping: packets must be >= 1 and timeout > 0", hop=hop)
    netlink = netlink or current_netlink()
    resolved = await resolve_namespace(namespace, hop=hop)
    family = socket.AF_INET if target.version == 4 else socket.AF_INET6
    proto = socket.IPPROTO_ICMP if target.version == 4 else socket.IPPROTO_ICMPV6
    raw = await netlink.socket(resolved, family, socket.SOCK_RAW, proto, hop=hop)
    with trio.socket.from_stdlib_socket(raw) as sock:
        with trio.move_on_after(timeout):
            try:
                if origin is not None:
                    await sock.bind((str(origin), 0))
                await sock.connect((str(target), 0))
            except OSError:  # no route from here, or the source is not ours
                return False
            return await _exchange(sock, target.version, timeout / packets, packets)
    return False


async def check_liveness(
    namespace: Namespace | str,
    ip_context: IpContext | None,
    *,
    timeout: float = LIVENESS_TIMEOUT,  # noqa: ASYNC109 - NSM's liveness timeout
    packets: int = LIVENESS_PACKETS,
    hop: str | None = None,
    netlink: Netlink | None = None,
) -> bool:
    """NSM's kernel liveness check, from inside the client's namespace.

    True when every (src, dst) pair of one family in ``ip_context`` answers within ``timeout``;
    a context without such pairs counts as alive (as in NSM). The pairs run concurrently, so the
    check takes at most ``timeout``. Cancellable.

    Raises:
        InvalidArgument: a malformed address in ``ip_context``.
        NotFound, PermissionDenied: the namespace is missing or cannot be entered.
    """
    ctx = ip_context or IpContext()
    sources = [_address(a.split("/")[0], "src_ip_addrs", hop) for a in ctx.src_ip_addrs]
    targets = [_address(a.split("/")[0], "dst_ip_addrs", hop) for a in ctx.dst_ip_addrs]
    pairs = [(s, d) for s in sources for d in targets if s.version == d.version]
    if not pairs:
        return True
    netlink = netlink or current_netlink()
    resolved = await resolve_namespace(namespace, hop=hop)
    answers: list[bool] = []

    async def probe(source: Address, target: Address) -> None:
        answers.append(
            await ping(
                resolved,
                target,
                timeout=timeout,
                packets=packets,
                source=source,
                hop=hop,
                netlink=netlink,
            )
        )

    async with trio.open_nursery() as nursery:
        for source, target in pairs:
            nursery.start_soon(probe, source, target)
    return all(answers)


async def _exchange(
    sock: trio.socket.SocketType, version: int, interval: float, packets: int
) -> bool:
    """Send up to ``packets`` echoes ``interval`` apart; True at the first matching reply."""
    ident = secrets.randbits(16)
    payload = secrets.token_bytes(16)
    request, reply = _ECHO[version]
    got_reply = trio.Event()

    async def send_all() -> None:
        for seq in range(packets):
            with contextlib.suppress(OSError):  # unreachable or no neighbour: try the next one
                await sock.send(_echo(request, ident, seq, payload, checksum=version == 4))
            await trio.sleep(interval)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        while not got_reply.is_set():
            data = await sock.recv(65535)
            if version == 4:
                data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets get the IP header
            if _is_reply(data, reply, ident, packets, payload):
                got_reply.set()
        nursery.cancel_scope.cancel()
    return True


def _echo(kind: int, ident: int, seq: int, payload: bytes, *, checksum: bool) -> bytes:
    """An ICMP echo request; the kernel fills in ICMPv6's checksum itself."""
    packet = _HEADER.pack(kind, 0, 0, ident, seq) + payload
    if not checksum:
        return packet
    return _HEADER.pack(kind, 0, _checksum(packet), ident, seq) + payload


def _is_reply(data: bytes, reply: int, ident: int, packets: int, payload: bytes) -> bool:
    if len(data) < _HEADER.size:
        return False
    kind, code, _, their_ident, seq = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    return (kind, code, their_ident) == (reply, 0, ident) and seq < packets and body == payload


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _address(text: str | Address, field: str, hop: str | None) -> Address:
    if not isinstance(text, str):
        return text
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidArgument(f"ping: {field} {text!r} is not an IP address", hop=hop) from None

"""VXLAN network identifiers: NSM's choice rule, and a forwarder's book of VNIs in use (pure).

NSM's ``vxlan/vni`` server element picks the VNI of a remote connection: at random in 24 bits,
**even** when the client side's tunnel address is at most the server side's (a byte comparison
of the addresses, the ``orig_*`` ones when NAT swapped them) and **odd** otherwise, so the two
forwarders of a pair never pick the same VNI for connections in opposite directions; and unique
per ``(src_ip, vni)``, so one client-side forwarder never gets the same VNI twice from us.

Linux adds one constraint of its own: a namespace holds one vxlan device per VNI and UDP port,
whichever addresses it has, so the kernel may still refuse a VNI this book thinks free (another
forwarder in the same underlay took it). The caller then asks again with the refused VNIs in
``excluded``. :class:`VniBook` keeps the VNIs a forwarder handed out, per connection;
:func:`choose_vni` and :func:`reusable_vni` are the rules. Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Collection

import attrs

from trionsm.errors import InvalidArgument, ResourceExhausted

__all__ = ["MAX_VNI", "VniBook", "choose_vni", "parity", "reusable_vni"]

MAX_VNI = 2**24 - 1
"""The largest VNI (24 bits); 0 is never chosen."""


def _bytes(ip: str, what: str) -> bytes:
    """The 16-byte form Go's ``net.ParseIP`` compares (IPv4 as ``::ffff:a.b.c.d``)."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        raise InvalidArgument(f"VXLAN {what} {ip!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv4Address):
        return bytes(10) + b"\xff\xff" + address.packed
    return address.packed


def parity(src_ip: str, dst_ip: str, *, orig_src_ip: str = "", orig_dst_ip: str = "") -> int:
    """0 (even VNIs) when the source tunnel address is at most the destination's, else 1.

    The ``orig_*`` addresses, when given, are compared instead (NSM's ``swapip`` keeps the
    internal addresses there). Raises InvalidArgument for an address that is not one.
    """
    src = _bytes(orig_src_ip or src_ip, "src_ip")
    dst = _bytes(orig_dst_ip or dst_ip, "dst_ip")
    return 0 if src <= dst else 1


def choose_vni(
    src_ip: str,
    dst_ip: str,
    *,
    taken: Collection[int] = (),
    excluded: Collection[int] = (),
    orig_src_ip: str = "",
    orig_dst_ip: str = "",
    rng: random.Random | None = None,
) -> int:
    """A random VNI of the right :func:`parity`, in neither ``taken`` nor ``excluded``.

    Args:
        src_ip, dst_ip: the tunnel's addresses (the mechanism's ``src_ip`` and ``dst_ip``).
        taken: VNIs already handed out for this ``src_ip``.
        excluded: VNIs the kernel refused (another device of the underlay has them).
        orig_src_ip, orig_dst_ip: the addresses before NAT, when there was one.
        rng: the source of randomness (tests pass a seeded one).

    Raises:
        InvalidArgument: an address that is not one.
        ResourceExhausted: every VNI of that parity is taken or excluded.
    """
    odd = parity(src_ip, dst_ip, orig_src_ip=orig_src_ip, orig_dst_ip=orig_dst_ip)
    count = (MAX_VNI + 1) // 2 - (1 - odd)  # even ones start at 2: 0 is not a VNI
    first = 2 - odd  # 2, 4, ... or 1, 3, ...
    start = (rng or random).randrange(count)
    # A random start, then the next free one of the same parity: one draw as a rule.
    for step in range(count):
        vni = first + 2 * ((start + step) % count)
        if vni not in taken and vni not in excluded:
            return vni
    kind = "odd" if odd else "even"
    raise ResourceExhausted(f"every {kind} VNI from {src_ip} to {dst_ip} is in use")


def reusable_vni(
    text: str,
    src_ip: str,
    dst_ip: str,
    *,
    taken: Collection[int] = (),
    excluded: Collection[int] = (),
    orig_src_ip: str = "",
    orig_dst_ip: str = "",
) -> int | None:
    """The VNI ``text`` (a mechanism's ``vni``) if it may be kept: a refresh or re-request keeps
    its VNI when it is a number in 1..2**24-1 of the right parity, not ``taken`` by another
    connection and not ``excluded``. None otherwise (the caller chooses a new one)."""
    text = text.strip()
    if not text.isdigit() or len(text) > 8:
        return None
    vni = int(text)
    odd = parity(src_ip, dst_ip, orig_src_ip=orig_src_ip, orig_dst_ip=orig_dst_ip)
    if not 1 <= vni <= MAX_VNI or vni % 2 != odd or vni in taken or vni in excluded:
        return None
    return vni


@attrs.define
class VniBook:
    """The VNIs one forwarder handed out: ``(src_ip, vni)`` per connection id (mutable, no I/O).

    :meth:`assign` keeps a connection's VNI when the request carries a reusable one, else picks
    a new one; :meth:`release` frees a connection's VNI (Close, expiry, a failed wire).
    """

    _by_connection: dict[str, tuple[str, int]] = attrs.Factory(dict)
    _by_source: dict[str, set[int]] = attrs.Factory(dict)

    def taken(self, src_ip: str, *, besides: str = "") -> set[int]:
        """The VNIs handed out for ``src_ip`` (except connection ``besides``'s)."""
        own = self._by_connection.get(besides)
        used = set(self._by_source.get(src_ip, ()))
        if own is not None and own[0] == src_ip:
            used.discard(own[1])
        return used

    def assign(
        self,
        connection_id: str,
        src_ip: str,
        dst_ip: str,
        *,
        requested: str = "",
        excluded: Collection[int] = (),
        orig_src_ip: str = "",
        orig_dst_ip: str = "",
        rng: random.Random | None = None,
    ) -> int:
        """The connection's VNI: ``requested`` when :func:`reusable_vni`, else a new one from
        :func:`choose_vni`; recorded (replacing the connection's earlier one). A restarted
        forwarder's empty book thus re-learns each connection's VNI from its re-request (the
        mechanism carries it), and no later connection from that ``src_ip`` is given it.

        Raises:
            InvalidArgument, ResourceExhausted: as :func:`choose_vni`.
        """
        taken = self.taken(src_ip, besides=connection_id)
        origs = {"orig_src_ip": orig_src_ip, "orig_dst_ip": orig_dst_ip}
        vni = reusable_vni(requested, src_ip, dst_ip, taken=taken, excluded=excluded, **origs)
        if vni is None:
            vni = choose_vni(src_ip, dst_ip, taken=taken, excluded=excluded, rng=rng, **origs)
        self.release(connection_id)
        self._by_connection[connection_id] = (src_ip, vni)
        self._by_source.setdefault(src_ip, set()).add(vni)
        return vni

    def release(self, connection_id: str) -> None:
        """Forget the connection's VNI (idempotent)."""
        held = self._by_connection.pop(connection_id, None)
        if held is None:
            return
        src_ip, vni = held
        used = self._by_source.get(src_ip)
        if used is not None:
            used.discard(vni)
            if not used:
                del self._by_source[src_ip]

    def __len__(self) -> int:
        return len(self._by_connection)

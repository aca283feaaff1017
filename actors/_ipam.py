"""NSM's point-to-point IPAM (``point2pointipam``) as a pure, synchronous state machine.

An endpoint gives each connection a pair of host addresses (``/32`` or ``/128``) from its CIDRs:
the first free address goes to the destination (``dst_ip_addrs``, the NSE side), the next one to
the source (``src_ip_addrs``, the NSC side), with a route to each other's address
(``src_routes`` = the dst address, ``dst_routes`` = the src address). No I/O, no time: the
endpoint's actor calls :meth:`PointToPointIpam.assign` on Request and
:meth:`PointToPointIpam.release` on Close (and when a *first* Request fails further down its
chain; a failed refresh keeps the addresses, as NSM does).

Theory of operation:

* **Pools.** Each CIDR is a pool of integers kept as sorted, disjoint ranges of *free* addresses
  (NSM's ``ippool`` keeps the same ranges in a red-black tree), so a ``/16`` or a ``/64`` is never
  enumerated: taking or giving back an address is a bisection plus at most one range split or
  merge. The whole CIDR is usable, network address included (``.0`` is the first dst, as in NSM).
* **Families.** CIDRs are grouped by family. A connection gets one pair per family, taken from the
  first pool of that family with room (the others are overflow): NSM's ``point2pointipam`` within
  one group of pools, and ``groupipam``'s chain across families (``169.254.0.0/16,fd00::/64`` gives
  an IPv4 pair and an IPv6 pair). If any family has no room, the request fails and nothing changes.
* **Lowest free.** A fresh pair is the two lowest free addresses outside the request's
  ``excluded_prefixes``, so they need not be adjacent, and a released pair is the next one handed
  out (NSM's tests rely on both).
* **Refresh.** A connection id that already holds a pair keeps it (idempotent), unless the
  request now excludes one of its addresses: then the pair is released and a new one chosen.
* **Recovery** (sdk#1358). A connection id this instance does not know (the NSE restarted) keeps
  the addresses its request already carries when they belong to one pool, are free and are not
  excluded; otherwise (e.g. another connection holds them) it gets a fresh pair.
* **The returned IpContext** is a new message: unrelated fields and addresses or routes outside
  our pools are kept as they came; addresses and host routes inside our pools are replaced by the
  connection's own. Unlike NSM (sdk#1680) a stale address from our pools, such as a recovered one
  held by another connection, is dropped rather than handed out twice. With ``strict=True``,
  addresses outside our pools are dropped too, with their routes (NSM's ``strictipam``): a client
  healed onto this endpoint from another one does not keep the old endpoint's addresses.
"""

from __future__ import annotations

import bisect
import copy
import ipaddress
import itertools
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs

from trionsm.api.connectioncontext import IpContext, Route
from trionsm.errors import InvalidArgument, ResourceExhausted

__all__ = ["AddressPair", "PointToPointIpam"]

_Host = tuple[int, int]
"""An address as ``(version, integer)``: 4 or 6, then the address as an int."""


@attrs.frozen
class AddressPair:
    """One connection's addresses in one family, as they appear on the wire.

    Attributes:
        cidr: the pool they come from, normalised (``169.254.0.0/16``).
        dst: the NSE side's address, ``a.b.c.d/32`` or ``x::y/128``.
        src: the NSC side's address, same form.
    """

    cidr: str
    dst: str
    src: str


class PointToPointIpam:
    """Point-to-point address pairs from one or more CIDRs (IPv4, IPv6 or both).

    Args:
        cidrs: the pools, in order of preference within a family; host bits are ignored
            (``169.254.3.4/16`` is ``169.254.0.0/16``), as in NSM.
        hop: the name errors carry (the endpoint's name).
        strict: drop addresses outside every pool from the returned context, with their routes.

    Raises:
        InvalidArgument: no CIDR, a malformed one, two that overlap, or one too small for a pair.
    """

    def __init__(self, cidrs: Sequence[str], *, hop: str = "nse", strict: bool = False) -> None:
        self._hop = hop
        self._strict = strict
        if isinstance(cidrs, str) or not cidrs:
            raise InvalidArgument(
                "point-to-point IPAM needs one or more CIDRs (not one string)", hop=hop
            )
        self._families: dict[int, list[_Pool]] = {}
        for text in cidrs:
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError as exc:
                raise InvalidArgument(f"bad CIDR {text!r}: {exc}", hop=hop) from exc
            if network.num_addresses < 2:
                raise InvalidArgument(
                    f"CIDR {text!r} holds one address; a point-to-point pair needs two", hop=hop
                )
            family = self._families.setdefault(network.version, [])
            for other in family:
                if other.network.overlaps(network):
                    raise InvalidArgument(f"CIDRs {other.cidr} and {text!r} overlap", hop=hop)
            family.append(_Pool(network))
        self._leases: dict[str, dict[int, _Lease]] = {}
        self._pairs: dict[str, tuple[AddressPair, ...]] = {}

    @property
    def cidrs(self) -> tuple[str, ...]:
        """The pools, normalised, grouped by family in order of first appearance."""
        return tuple(pool.cidr for pools in self._families.values() for pool in pools)

    @property
    def allocated(self) -> Mapping[str, tuple[AddressPair, ...]]:
        """A read-only live view: connection id to its pairs, one per family (in pool order)."""
        return types.MappingProxyType(self._pairs)

    def free_count(self, cidr: str | None = None) -> int:
        """Addresses not held by any connection: in one pool, or in all of them.

        Raises:
            InvalidArgument: ``cidr`` is not one of the pools.
        """
        pools = [pool for family in self._families.values() for pool in family]
        if cidr is None:
            return sum(pool.free for pool in pools)
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            network = None
        for pool in pools:
            if pool.network == network:
                return pool.free
        raise InvalidArgument(f"{cidr!r} is not one of the pools {list(self.cidrs)}", hop=self._hop)

    def assign(
        self,
        connection_id: str,
        context: IpContext | None,
        excluded_prefixes: Sequence[str] = (),
    ) -> IpContext:
        """The connection's addresses and routes: kept on refresh, recovered, or freshly taken.

        Args:
            connection_id: the connection as this endpoint sees it (its path segment id).
            context: the request's IpContext (``None`` is an empty one); never modified.
            excluded_prefixes: prefixes to avoid on top of ``context.excluded_prefixes``
                (e.g. the endpoint's own cluster prefixes).

        Returns:
            A new IpContext: ``context``'s fields, with this connection's pairs in
            ``dst_ip_addrs``/``src_ip_addrs`` and host routes in ``src_routes``/``dst_routes``.

        Raises:
            InvalidArgument: an empty connection id or a malformed excluded prefix.
            ResourceExhausted: a family has no free, non-excluded pair left; nothing changed.
        """
        if not connection_id:
            raise InvalidArgument("a connection id is required for IPAM", hop=self._hop)
        incoming = context if context is not None else IpContext()
        excluded = self._parse_excluded(
            itertools.chain(incoming.excluded_prefixes, excluded_prefixes)
        )
        current = self._leases.get(connection_id, {})
        leases: dict[int, _Lease] = {}
        changes: list[tuple[_Lease | None, _Lease | None]] = []
        try:
            for version, pools in self._families.items():
                ranges = excluded.get(version, _NOTHING)
                old = current.get(version)
                if old is not None and old.dst not in ranges and old.src not in ranges:
                    leases[version] = old
                    continue
                if old is not None:
                    old.give_back()
                changes.append((old, None))
                new = self._recover(pools, incoming, version, ranges, old)
                if new is None:
                    new = self._fresh(pools, ranges, connection_id)
                new.take()
                changes[-1] = (old, new)
                leases[version] = new
        except BaseException:
            for old, new in reversed(changes):
                if new is not None:
                    new.give_back()
                if old is not None:
                    old.take()
            raise
        self._leases[connection_id] = leases
        self._pairs[connection_id] = tuple(lease.pair() for lease in leases.values())
        return self._render(incoming, list(leases.values()))

    def release(self, connection_id: str) -> None:
        """Give the connection's addresses back (Close); an unknown id is a no-op."""
        self._pairs.pop(connection_id, None)
        for lease in self._leases.pop(connection_id, {}).values():
            lease.give_back()

    # ---- choosing -------------------------------------------------------------------------------

    def _parse_excluded(self, prefixes: Iterable[str]) -> dict[int, _Ranges]:
        spans: dict[int, list[tuple[int, int]]] = {}
        for text in prefixes:
            if not text.strip():
                continue
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError as exc:
                raise InvalidArgument(
                    f"bad excluded prefix {text!r}: {exc}", hop=self._hop
                ) from exc
            start = int(network.network_address)
            spans.setdefault(network.version, []).append((start, start + network.num_addresses))
        return {version: _Ranges(found) for version, found in spans.items()}

    def _recover(
        self,
        pools: Sequence[_Pool],
        incoming: IpContext,
        version: int,
        excluded: _Ranges,
        old: _Lease | None,
    ) -> _Lease | None:
        """The first src and dst of ``incoming`` that are free in one pool, or None."""
        stale = {old.dst, old.src} if old is not None else set()
        srcs = _values(incoming.src_ip_addrs, version)
        dsts = _values(incoming.dst_ip_addrs, version)
        for pool in pools:

            def usable(value: int, pool: _Pool = pool) -> bool:
                return value not in stale and value not in excluded and pool.is_free(value)

            src = next((value for value in srcs if usable(value)), None)
            if src is None:
                continue
            dst = next((value for value in dsts if value != src and usable(value)), None)
            if dst is not None:
                return _Lease(pool, dst, src)
        return None

    def _fresh(self, pools: Sequence[_Pool], excluded: _Ranges, connection_id: str) -> _Lease:
        for pool in pools:
            pair = list(itertools.islice(pool.lowest_free(excluded), 2))
            if len(pair) == 2:
                return _Lease(pool, pair[0], pair[1])
        states = "; ".join(pool.describe(excluded) for pool in pools)
        raise ResourceExhausted(
            f"no free address pair for connection {connection_id!r} ({states})", hop=self._hop
        )

    # ---- the returned context --------------------------------------------------------------------

    def _covers(self, host: _Host) -> bool:
        return any(pool.contains(host[1]) for pool in self._families.get(host[0], ()))

    def _render(self, incoming: IpContext, leases: list[_Lease]) -> IpContext:
        out = copy.deepcopy(incoming)
        dsts = [(lease.pool.version, lease.dst) for lease in leases]
        srcs = [(lease.pool.version, lease.src) for lease in leases]
        out.dst_ip_addrs, dropped_dsts = self._merge_addresses(out.dst_ip_addrs, dsts)
        out.src_ip_addrs, dropped_srcs = self._merge_addresses(out.src_ip_addrs, srcs)
        out.src_routes = self._merge_routes(out.src_routes, dsts, dropped_dsts)
        out.dst_routes = self._merge_routes(out.dst_routes, srcs, dropped_srcs)
        return out

    def _merge_addresses(
        self, entries: list[str], wanted: list[_Host]
    ) -> tuple[list[str], set[_Host]]:
        """``entries`` with ours in place (or appended), stale pool addresses dropped."""
        kept: list[str] = []
        emitted: set[_Host] = set()
        dropped: set[_Host] = set()
        for text in entries:
            host = _address_host(text)
            if host is None or not self._covers(host):
                if not self._strict:
                    kept.append(text)
                elif host is not None:
                    dropped.add(host)
            elif host in wanted and host not in emitted:
                kept.append(_format(host))
                emitted.add(host)
        kept.extend(_format(host) for host in wanted if host not in emitted)
        return kept, dropped

    def _merge_routes(
        self, routes: list[Route], wanted: list[_Host], dropped: set[_Host]
    ) -> list[Route]:
        """``routes`` with a host route to each wanted address; stale host routes dropped."""
        kept: list[Route] = []
        emitted: set[_Host] = set()
        for route in routes:
            host = _route_host(route.prefix)
            if host is None or (host not in dropped and not self._covers(host)):
                kept.append(route)
            elif host in wanted and host not in emitted:
                kept.append(Route(prefix=_format(host), next_hop=route.next_hop))
                emitted.add(host)
        kept.extend(Route(prefix=_format(host)) for host in wanted if host not in emitted)
        return kept


# ---- pools and ranges ---------------------------------------------------------------------------


class _Ranges:
    """Sorted, disjoint, non-adjacent half-open integer ranges (one family's excluded prefixes)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(spans):
            if self._ends and start <= self._ends[-1]:
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    def skip(self, value: int) -> int:
        """The smallest integer ``>= value`` outside every range."""
        index = bisect.bisect_right(self._starts, value) - 1
        if index >= 0 and value < self._ends[index]:
            return self._ends[index]  # merged ranges never touch, so this one is outside
        return value

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.skip(value) != value

    def overlap(self, start: int, end: int) -> int:
        """How many integers of ``[start, end)`` the ranges cover."""
        index = max(bisect.bisect_right(self._starts, start) - 1, 0)
        covered = 0
        while index < len(self._starts) and self._starts[index] < end:
            covered += max(0, min(end, self._ends[index]) - max(start, self._starts[index]))
            index += 1
        return covered


_NOTHING = _Ranges(())


class _Pool:
    """One CIDR's free addresses, as sorted, disjoint half-open ranges of integers."""

    __slots__ = ("_ends", "_first", "_starts", "cidr", "free", "network", "size", "version")

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self.network = network
        self.cidr = str(network)
        self.version: int = network.version
        self.size = network.num_addresses
        self.free = self.size
        self._first = int(network.network_address)
        self._starts = [self._first]
        self._ends = [self._first + self.size]

    def contains(self, value: int) -> bool:
        return self._first <= value < self._first + self.size

    def is_free(self, value: int) -> bool:
        index = bisect.bisect_right(self._starts, value) - 1
        return index >= 0 and value < self._ends[index]

    def lowest_free(self, excluded: _Ranges) -> Iterator[int]:
        """Free, non-excluded addresses in ascending order (do not take while iterating)."""
        for start, end in zip(self._starts, self._ends, strict=True):
            value = excluded.skip(start)
            while value < end:
                yield value
                value = excluded.skip(value + 1)

    def describe(self, excluded: _Ranges) -> str:
        """How full the pool is, for an error: in use, and free but hidden by ``excluded``."""
        hidden = sum(map(excluded.overlap, self._starts, self._ends))
        text = f"{self.cidr}: {self.size - self.free} of {self.size} in use"
        return f"{text}, {hidden} free but excluded by the request" if hidden else text

    def take(self, value: int) -> None:
        index = bisect.bisect_right(self._starts, value) - 1
        start, end = self._starts[index], self._ends[index]
        assert start <= value < end, f"{value} is not free in {self.cidr}"
        if start == value and end == value + 1:
            del self._starts[index], self._ends[index]
        elif start == value:
            self._starts[index] = value + 1
        elif end == value + 1:
            self._ends[index] = value
        else:
            self._ends[index] = value
            self._starts.insert(index + 1, value + 1)
            self._ends.insert(index + 1, end)
        self.free -= 1

    def give_back(self, value: int) -> None:
        index = bisect.bisect_right(self._starts, value)
        assert not (index > 0 and value < self._ends[index - 1]), f"{value} is already free"
        joins_left = index > 0 and self._ends[index - 1] == value
        joins_right = index < len(self._starts) and self._starts[index] == value + 1
        if joins_left and joins_right:
            self._ends[index - 1] = self._ends[index]
            del self._starts[index], self._ends[index]
        elif joins_left:
            self._ends[index - 1] = value + 1
        elif joins_right:
            self._starts[index] = value
        else:
            self._starts.insert(index, value)
            self._ends.insert(index, value + 1)
        self.free += 1


@attrs.frozen
class _Lease:
    """A pair held by one connection: integers inside ``pool``."""

    pool: _Pool
    dst: int
    src: int

    def take(self) -> None:
        self.pool.take(self.dst)
        self.pool.take(self.src)

    def give_back(self) -> None:
        self.pool.give_back(self.dst)
        self.pool.give_back(self.src)

    def pair(self) -> AddressPair:
        version = self.pool.version
        return AddressPair(
            self.pool.cidr, _format((version, self.dst)), _format((version, self.src))
        )


def _format(host: _Host) -> str:
    version, value = host
    if version == 4:
        return f"{ipaddress.IPv4Address(value)}/32"
    return f"{ipaddress.IPv6Address(value)}/128"


def _address_host(text: str) -> _Host | None:
    """The address of an ``*_ip_addrs`` entry (any prefix length), or None if malformed."""
    try:
        address = ipaddress.ip_interface(text.strip()).ip
    except ValueError:
        return None
    return address.version, int(address)


def _values(entries: Iterable[str], version: int) -> list[int]:
    """The addresses of one family among ``*_ip_addrs`` entries, in order."""
    return [host[1] for host in map(_address_host, entries) if host and host[0] == version]


def _route_host(prefix: str) -> _Host | None:
    """The address of a host route (``/32``, ``/128``), or None for a wider or malformed one."""
    try:
        network = ipaddress.ip_network(prefix.strip(), strict=False)
    except ValueError:
        return None
    if network.prefixlen != network.max_prefixlen:
        return None
    return network.version, int(network.network_address)

"""Per-hop counters of Requests and Closes (NSM's ``count`` server, always on).

Every server hop counts what its connection actors did, in the order they did it: each Request
a connection actor took (the first, refreshes, heals, and the ones that failed), and each Close it
carried out (a Close from the previous hop, an expiry, the Close of the old downstream connection
that a ``RESELECT_REQUESTED`` Request causes). ``unique_*`` count distinct connections: the first
Request and the first Close of each connection actor (NSM counts distinct connection ids). A Close
for a connection the hop does not know is not counted, as NSM's ``begin`` drops it before the
chain. Scenarios report them; the heal tests assert on them as NSM's sandbox tests do.

Memory follows the live connections, not every connection a hop ever had (NSM's sandbox keeps
every connection id it saw): each connection actor remembers whether it was counted yet, and the
hop remembers that only for the last :data:`REMEMBERED_ENDED` connections whose actor ended (a
reselect or a restart upstream may bring the same id back to a new actor soon after). An id that
comes back later than that counts again.
"""

from __future__ import annotations

import attrs

__all__ = ["CLOSED", "REMEMBERED_ENDED", "REQUESTED", "HopCounts"]

REMEMBERED_ENDED = 1024
"""Ended connections whose counted flags a hop remembers (the oldest are forgotten first)."""

REQUESTED, CLOSED = 1, 2
"""The flags of a connection: counted in ``unique_requests``, in ``unique_closes``."""


@attrs.define
class HopCounts:
    """Requests and Closes carried out at one hop (read them; the hop writes them).

    Attributes:
        requests: Requests taken by a connection actor (successful or not).
        closes: Closes carried out (Close, expiry, reselect).
        unique_requests: connections that took at least one Request.
        unique_closes: connections that were closed at least once.
    """

    requests: int = 0
    closes: int = 0
    unique_requests: int = 0
    unique_closes: int = 0
    _ended: dict[str, int] = attrs.field(factory=dict, repr=False, eq=False)

    def resume(self, connection_id: str) -> int:
        """The flags a new actor of ``connection_id`` starts with (0, or its ended one's)."""
        return self._ended.pop(connection_id, 0)

    def request(self, flags: int) -> int:
        """Count a Request of a connection with ``flags``; returns its new flags."""
        self.requests += 1
        self.unique_requests += not flags & REQUESTED
        return flags | REQUESTED

    def close(self, flags: int) -> int:
        """Count a Close of a connection with ``flags``; returns its new flags."""
        self.closes += 1
        self.unique_closes += not flags & CLOSED
        return flags | CLOSED

    def ended(self, connection_id: str, flags: int) -> None:
        """A connection's actor ended with ``flags``: remember them for a while."""
        if flags:
            self._ended[connection_id] = flags
            if len(self._ended) > REMEMBERED_ENDED:
                del self._ended[next(iter(self._ended))]

    @property
    def remembered(self) -> int:
        """How many ended connections' flags are remembered (at most REMEMBERED_ENDED)."""
        return len(self._ended)

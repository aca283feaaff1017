"""Per-hop counters of Requests and Closes (NSM's ``count`` server, always on).

Every server hop counts what its connection actors did, in the order they did it: each Request
a connection actor took (the first, refreshes, heals, and the ones that failed), and each Close it
carried out (a Close from the previous hop, an expiry, the Close of the old downstream connection
that a ``RESELECT_REQUESTED`` Request causes). ``unique_*`` count distinct connection ids. A Close
for a connection the hop does not know is not counted, as NSM's ``begin`` drops it before the
chain. Scenarios report them; the heal tests assert on them as NSM's sandbox tests do.
"""

from __future__ import annotations

import attrs

__all__ = ["HopCounts"]


@attrs.define
class HopCounts:
    """Requests and Closes carried out at one hop (read them; the hop writes them).

    Attributes:
        requests: Requests taken by a connection actor (successful or not).
        closes: Closes carried out (Close, expiry, reselect).
        request_ids: the connection ids that were requested.
        close_ids: the connection ids that were closed.
    """

    requests: int = 0
    closes: int = 0
    request_ids: set[str] = attrs.field(factory=set)
    close_ids: set[str] = attrs.field(factory=set)

    @property
    def unique_requests(self) -> int:
        return len(self.request_ids)

    @property
    def unique_closes(self) -> int:
        return len(self.close_ids)

    def request(self, connection_id: str) -> None:
        self.requests += 1
        self.request_ids.add(connection_id)

    def close(self, connection_id: str) -> None:
        self.closes += 1
        self.close_ids.add(connection_id)

"""The one clock: ``trio.current_time()`` mapped onto wall time.

NSM puts wall-clock Timestamps on the wire (a path segment's ``expires``, an endpoint's
``expiration_time``) while every timer in trionsm is a Trio deadline. A :class:`Clock` ties the two
together: wall time = the wall time at the clock's origin + elapsed Trio time. Under Trio's
``MockClock`` (``autojump_clock`` in tests) expiry, refresh and wall time therefore all move
together, and a Timestamp read off the wire turns into a Trio deadline that the same clock fires.

:func:`current_clock` gives one clock per Trio run (made on first use), so every actor of a run
agrees on "now"; pass a :class:`Clock` explicitly to pin the origin (tests, replays).
"""

from __future__ import annotations

import datetime
import time

import attrs
import trio
from trio.lowlevel import RunVar

__all__ = ["Clock", "current_clock"]

_UTC = datetime.UTC


@attrs.frozen
class Clock:
    """Maps Trio time to wall time and back.

    Attributes:
        wall_at_zero: the wall time (seconds since the epoch, UTC) at ``trio.current_time() == 0``.
    """

    wall_at_zero: float

    @classmethod
    def from_system(cls) -> Clock:
        """A clock whose "now" is the system's wall time now (call it inside a Trio run)."""
        return cls(time.time() - trio.current_time())

    def wall(self, trio_time: float | None = None) -> float:
        """Wall seconds since the epoch at ``trio_time`` (default: now)."""
        if trio_time is None:
            trio_time = trio.current_time()
        return self.wall_at_zero + trio_time

    def trio_time(self, wall: float) -> float:
        """The Trio time at which the wall clock reads ``wall``."""
        return wall - self.wall_at_zero

    def timestamp(self, trio_time: float | None = None) -> datetime.datetime:
        """An aware UTC datetime (betterproto2's Timestamp) for ``trio_time`` (default: now)."""
        return datetime.datetime.fromtimestamp(self.wall(trio_time), tz=_UTC)

    def deadline(self, timestamp: datetime.datetime) -> float:
        """The Trio deadline of a wire Timestamp (a naive datetime is taken as UTC)."""
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=_UTC)
        return self.trio_time(timestamp.timestamp())

    def remaining(self, timestamp: datetime.datetime) -> float:
        """Seconds from now until ``timestamp`` (negative once it has passed)."""
        return self.deadline(timestamp) - trio.current_time()


_CURRENT: RunVar[Clock] = RunVar("trionsm_clock")


def current_clock() -> Clock:
    """The run's clock, made from the system's wall time on first use in each Trio run."""
    try:
        return _CURRENT.get()
    except LookupError:
        clock = Clock.from_system()
        _CURRENT.set(clock)
        return clock

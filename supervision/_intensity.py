"""Maximum restart intensity: OTP's ``add_restart/1`` as a pure sliding window.

One window per supervisor (never per child). On each restart attempt, at time ``now``:

1. keep the timestamps ``t`` with ``t >= now - period``;
2. prepend ``now``;
3. if more than ``intensity`` timestamps remain, give up.

So more than ``intensity`` restarts within ``period`` seconds make the supervisor give up, and
``intensity = 0`` gives up on the first restart. The check comes *before* the restart attempt, and a
failed restart that is tried again goes through the window again. Time is whatever the caller passes
(``trio.current_time()`` in the supervisor), so tests drive it with a mock clock.
"""

from __future__ import annotations

from collections import deque

import attrs

__all__ = ["RestartIntensity"]


@attrs.define
class RestartIntensity:
    """The restart window of one supervisor.

    Args:
        intensity: restarts tolerated within ``period`` (MaxR).
        period: window length in seconds (MaxT).
    """

    intensity: int
    period: float
    _stamps: deque[float] = attrs.field(factory=deque, init=False)

    def add_restart(self, now: float) -> bool:
        """Record a restart attempt at ``now``; return False when the supervisor must give up."""
        threshold = now - self.period
        while self._stamps and self._stamps[0] < threshold:
            self._stamps.popleft()
        self._stamps.append(now)
        return len(self._stamps) <= self.intensity

    def recent(self, now: float) -> int:
        """How many recorded restarts are still inside the window at ``now`` (for status pages)."""
        threshold = now - self.period
        return sum(1 for stamp in self._stamps if stamp >= threshold)

"""Actors without background tasks (``background_tasks = False``): one cancel scope, no nursery,
and the same behaviour as any actor: replies, error replies, crashes, stop, deadline, shutdown."""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

import pytest
import trio

from tests.supervision.test_actor import Add, Counter, Fail, Lease, Slow, wait_until
from trionsm.supervision import (
    ActorRef,
    ChildState,
    Restart,
    actor_spec,
    open_supervisor,
)


class Lean(Counter):
    background_tasks: ClassVar[bool] = False


class LeanLease(Lease):
    background_tasks: ClassVar[bool] = False


async def test_a_lean_actor_replies_and_errors_as_any_actor(autojump_clock: object) -> None:
    log: list[Any] = []
    ref = ActorRef("lean")
    async with open_supervisor([actor_spec("lean", Lean, log, ref=ref)]) as sup:
        assert await ref.call(Add(2)) == 2
        with pytest.raises(KeyError):
            await ref.call(Fail("expected"))
        assert await ref.call(Add(3)) == 5
        with pytest.raises(Exception, match="stopped"):
            await ref.call(Fail("crash"))  # crashes: restarted with a fresh state
        await wait_until(lambda: ref.alive)
        assert await ref.call(Add(1)) == 1
        assert sup.which_children()[0].restarts == 1
    assert ("terminate", "RuntimeError") in log  # the crash itself, not a group
    assert log[-1] == ("terminate", "Cancelled")  # the supervisor stopped it


async def test_a_lean_actor_stops_normally(autojump_clock: object) -> None:
    log: list[Any] = []
    ref = ActorRef("lean")
    async with open_supervisor(
        [actor_spec("lean", Lean, log, ref=ref, restart=Restart.TRANSIENT)]
    ) as sup:
        assert await ref.call(Fail("stop")) == "stopping"
        await wait_until(lambda: sup.which_children()[0].state is ChildState.STOPPED)
        assert sup.which_children()[0].restarts == 0
    assert ("terminate", None) in log


async def test_a_lean_actor_has_its_deadline_and_no_nursery(autojump_clock: object) -> None:
    log: list[Any] = []
    ref = ActorRef("lease")
    async with open_supervisor(
        [actor_spec("lease", LeanLease, log, ref=ref, restart=Restart.TEMPORARY)]
    ):
        start = trio.current_time()
        assert await ref.call(Slow(10.0)) == start + 10.0
        await trio.sleep(5.0)
        await ref.call(Slow(10.0))  # renewed at +5: expires at +15
        await wait_until(lambda: not ref.alive)
    assert log[-1] == ("expired", start + 15.0)
    with pytest.raises(AttributeError):
        LeanLease(log).nursery  # noqa: B018


async def test_a_lean_actor_queued_renewal_wins_over_its_deadline(autojump_clock: object) -> None:
    log: list[Any] = []
    ref = ActorRef("lease")
    async with open_supervisor(
        [actor_spec("lease", LeanLease, log, ref=ref, restart=Restart.TEMPORARY)]
    ):
        start = trio.current_time()
        await ref.call(Slow(1.0))
        ref.cast(Add(5))  # busy past the deadline...
        ref.cast(Slow(10.0))  # ...with a renewal queued behind it: not expired
        await wait_until(lambda: not ref.alive)
    assert [entry[0] for entry in log] == ["renewed", "busy", "renewed", "expired"]
    assert log[-1] == ("expired", start + 15.0)


class Ticker(Lean):
    """Re-arms its deadline three times, then stops re-arming; still answers calls."""

    def __init__(self, log: list[Any]) -> None:
        super().__init__(log)
        self.ticks = 0

    async def init(self) -> None:
        self.set_deadline(trio.current_time() + 1.0)

    async def on_deadline(self) -> None:
        self.ticks += 1
        self.log.append(("tick", trio.current_time()))
        if self.ticks < 3:
            self.set_deadline(trio.current_time() + 1.0)


async def test_a_lean_actor_goes_on_after_each_deadline(autojump_clock: object) -> None:
    log: list[Any] = []
    ref = ActorRef("ticker")
    async with open_supervisor([actor_spec("ticker", Ticker, log, ref=ref)]):
        start = trio.current_time()
        await wait_until(lambda: len(log) == 3)
        assert await ref.call(Add(4)) == 4
        assert ref.alive
    assert log[:3] == [("tick", start + 1.0), ("tick", start + 2.0), ("tick", start + 3.0)]
    assert log[-1] == ("terminate", "Cancelled")


@pytest.mark.parametrize("actor", [Counter, Lean])
async def test_an_idle_actor_keeps_no_message_alive(actor: type[Counter]) -> None:
    """A node holds thousands of idle connection actors: each kept its last Request."""
    log: list[Any] = []
    ref = ActorRef("counter")
    async with open_supervisor([actor_spec("counter", actor, log, ref=ref)]):
        message = Add(7)
        gone = weakref.ref(message)
        assert await ref.call(message) == 7
        del message
        assert gone() is None

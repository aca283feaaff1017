"""Entries and their locks, under ``autojump_clock``: the expiry timer is the entry's deadline.

The tests start at trio time 0 with whole-second deadlines, so the virtual clock lands on them
exactly and "expired at its deadline" is an equality.
"""

from __future__ import annotations

import itertools
import math

import pytest
import trio
import trio.testing

from trionsm.actors.registry._entry import Entry, KeyedLock, run_entry


class Expirer:
    """An ``expire`` callback that records when it ran and answers like the registry does.

    It returns True (removed) unless the deadline was moved while it ran. With ``pause`` set it
    waits on ``release`` before looking, so a test can move or end the entry meanwhile.
    """

    def __init__(self, *, pause: bool = False) -> None:
        self.calls: list[float] = []
        self.answers: list[bool] = []
        self.pause = pause
        self.entered = trio.Event()
        self.release = trio.Event()

    async def __call__(self, entry: Entry) -> bool:
        self.calls.append(trio.current_time())
        if self.pause:
            self.pause = False
            self.entered.set()
            await self.release.wait()
        answer = entry.ended or trio.current_time() >= entry.deadline
        self.answers.append(answer)
        return answer


async def test_an_entry_expires_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    entry = Entry("endpoint", "nse-1", deadline=trio.current_time() + 10)
    expirer = Expirer()
    async with trio.open_nursery() as nursery:
        started = await nursery.start(run_entry, entry, expirer)
        assert started is entry
        assert entry.scope is not None
        assert entry.scope.deadline == 10
        assert not entry.done.is_set()
        await entry.done.wait()
        assert trio.current_time() == 10
    assert expirer.calls == [10]
    assert expirer.answers == [True]
    assert entry.scope is None


async def test_an_already_passed_deadline_expires_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await trio.sleep(5)
    entry = Entry("endpoint", "nse-1", deadline=1)
    expirer = Expirer()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
    assert expirer.calls == [5]
    assert entry.done.is_set()


async def test_move_pushes_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)
    expirer = Expirer()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
        await trio.sleep(6)
        entry.move(25)  # a re-Register
        assert entry.deadline == 25
        await trio.sleep(10)  # past the old deadline
        assert expirer.calls == []
        entry.move(30)
    assert expirer.calls == [30]
    assert entry.done.is_set()


async def test_move_can_also_shorten(autojump_clock: trio.testing.MockClock) -> None:
    entry = Entry("endpoint", "nse-1", deadline=60)
    expirer = Expirer()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
        await trio.sleep(1)
        entry.move(3)
    assert expirer.calls == [3]


async def test_a_move_while_expire_runs_keeps_the_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)
    expirer = Expirer(pause=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
        await expirer.entered.wait()
        assert trio.current_time() == 10
        between = entry.scope
        assert between is None  # between deadlines: move() only records the new one
        entry.move(40)  # a re-Register arrived while the entry was waking up
        expirer.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert expirer.answers == [False]
        assert not entry.done.is_set()
        assert entry.scope is not None
        assert entry.scope.deadline == 40
    assert expirer.calls == [10, 40]
    assert expirer.answers == [False, True]
    assert entry.done.is_set()


async def test_end_stops_without_expire(autojump_clock: trio.testing.MockClock) -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)
    expirer = Expirer()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
        await trio.sleep(3)
        entry.end()  # an Unregister
        await entry.done.wait()
        assert trio.current_time() == 3
    assert entry.ended
    assert expirer.calls == []


async def test_end_while_expire_runs_stops_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)

    async def refreshed(entry: Entry) -> bool:
        entry.end()  # taken over meanwhile, and the expiry lost the race
        return False

    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, refreshed)
    assert entry.done.is_set()
    assert trio.current_time() == 10


async def test_an_ended_entry_never_calls_expire_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)
    expirer = Expirer(pause=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
        await expirer.entered.wait()
        entry.move(20)
        entry.end()
        expirer.release.set()
    assert expirer.calls == [10]
    assert entry.done.is_set()


async def test_a_service_entry_never_expires(autojump_clock: trio.testing.MockClock) -> None:
    entry = Entry("service", "vpn")
    assert entry.deadline == math.inf
    expirer = Expirer()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
        await trio.sleep(365 * 24 * 3600)
        assert expirer.calls == []
        assert not entry.done.is_set()
        entry.end()
    assert entry.done.is_set()


async def test_done_is_set_when_cancelled_from_outside(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)
    expirer = Expirer()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_entry, entry, expirer)
        nursery.cancel_scope.cancel()  # its supervisor stops
    assert entry.done.is_set()
    assert expirer.calls == []
    assert not entry.ended


async def test_done_is_set_when_expire_crashes(autojump_clock: trio.testing.MockClock) -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)

    async def broken(entry: Entry) -> bool:
        raise RuntimeError("store lost")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="store lost")):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_entry, entry, broken)
    assert entry.done.is_set()


def test_move_and_end_before_running_only_record() -> None:
    entry = Entry("endpoint", "nse-1", deadline=10)
    entry.move(20)
    assert entry.deadline == 20
    assert entry.scope is None
    entry.end()
    assert entry.ended


# -- KeyedLock ------------------------------------------------------------------------------------


async def test_keyed_lock_serialises_one_key(autojump_clock: trio.testing.MockClock) -> None:
    locks = KeyedLock()
    spans: dict[str, tuple[float, float]] = {}

    async def hold(who: str, seconds: float) -> None:
        async with locks.hold("nse-1"):
            entered = trio.current_time()
            await trio.sleep(seconds)
            spans[who] = (entered, trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "first", 5)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "second", 2)
        nursery.start_soon(hold, "third", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert len(locks) == 1  # one lock for the holder and both waiters
    first_in, first_out = spans["first"]
    assert (first_in, first_out) == (0, 5)
    ordered = sorted(spans.values())
    for earlier, later in itertools.pairwise(ordered):
        assert later[0] == earlier[1]  # each one in as the previous one left, never two at once
    assert ordered[-1][1] == 8
    assert len(locks) == 0


async def test_keyed_lock_lets_different_keys_run_concurrently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    locks = KeyedLock()
    entered: dict[str, float] = {}

    async def hold(key: str) -> None:
        async with locks.hold(key):
            entered[key] = trio.current_time()
            await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        for key in ("nse-1", "nse-2", "nse-3"):
            nursery.start_soon(hold, key)
        await trio.testing.wait_all_tasks_blocked()
        assert len(locks) == 3
    assert entered == {"nse-1": 0, "nse-2": 0, "nse-3": 0}
    assert trio.current_time() == 5
    assert len(locks) == 0


async def test_keyed_lock_drops_idle_locks() -> None:
    locks = KeyedLock()
    assert len(locks) == 0
    async with locks.hold("a"):
        assert len(locks) == 1
        async with locks.hold("b"):
            assert len(locks) == 2
        assert len(locks) == 1
    assert len(locks) == 0

    with pytest.raises(RuntimeError, match="inside"):
        await _crash_inside(locks, "a")
    assert len(locks) == 0


async def _crash_inside(locks: KeyedLock, key: str) -> None:
    async with locks.hold(key):
        raise RuntimeError("inside")


async def test_keyed_lock_drops_a_lock_whose_waiter_was_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    locks = KeyedLock()
    waiter_got_in = False

    async def wait_briefly() -> None:
        nonlocal waiter_got_in
        with trio.move_on_after(1):
            async with locks.hold("a"):
                waiter_got_in = True

    async with locks.hold("a"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_briefly)
            await trio.testing.wait_all_tasks_blocked()
            assert len(locks) == 1
        assert trio.current_time() == 1  # the waiter gave up while we held it
        assert len(locks) == 1
    assert not waiter_got_in
    assert len(locks) == 0
    async with locks.hold("a"):  # and the key works again
        assert len(locks) == 1
    assert len(locks) == 0

"""Actors: call and cast, ordering, timeouts, error replies, crashes and refs across restarts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trionsm.supervision import (
    Actor,
    ActorRef,
    ActorStopped,
    CallTimeout,
    ChildState,
    MailboxFull,
    Restart,
    StartError,
    Strategy,
    actor_spec,
    open_supervisor,
    serve_actor,
)


@attrs.frozen
class Add:
    amount: int


@attrs.frozen
class Slow:
    seconds: float


@attrs.frozen
class Fail:
    kind: str


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a condition under the autojump clock; fail after a virtual minute, never hang."""
    with trio.fail_after(60):
        while not predicate():  # noqa: ASYNC110 - polling supervisor state, virtual time
            await trio.sleep(0.01)


class Counter(Actor):
    """Adds numbers; ``Fail("expected")`` is an error reply, ``Fail("crash")`` crashes it."""

    mailbox_size = 4
    expected_errors = (KeyError,)

    def __init__(self, log: list[Any], start: int = 0) -> None:
        self.log = log
        self.total = start
        self.busy = 0
        self.max_busy = 0

    async def handle(self, message: Any) -> Any:
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            if isinstance(message, Add):
                await trio.lowlevel.checkpoint()
                self.total += message.amount
                self.log.append(message.amount)
                return self.total
            if isinstance(message, Slow):
                await trio.sleep(message.seconds)
                return "slept"
            if isinstance(message, Fail) and message.kind == "expected":
                raise KeyError("no such thing")
            if isinstance(message, Fail) and message.kind == "stop":
                self.stop()
                return "stopping"
            raise RuntimeError(f"cannot handle {message!r}")
        finally:
            self.busy -= 1

    async def terminate(self, reason: BaseException | None) -> None:
        await trio.sleep(0.1)  # cleanup may wait: it runs in the child's cleanup window
        self.log.append(("terminate", type(reason).__name__ if reason else None))


async def test_calls_are_handled_one_at_a_time_in_arrival_order() -> None:
    log: list[Any] = []
    ref = ActorRef("counter")
    counters: list[Counter] = []

    def make() -> Counter:
        counters.append(Counter(log))
        return counters[-1]

    async with open_supervisor([actor_spec("counter", make, ref=ref)]):
        for n in range(3):
            ref.cast(Add(n))
        async with trio.open_nursery() as nursery:
            for n in range(10, 20):
                nursery.start_soon(ref.call, Add(n))
                await trio.testing.wait_all_tasks_blocked()  # fixes the arrival order
        assert await ref.call(Add(0)) == sum(range(3)) + sum(range(10, 20))
        assert log[:3] == [0, 1, 2]
        assert log[3:13] == list(range(10, 20))
        assert counters[0].max_busy == 1


async def test_an_expected_error_is_a_reply_and_the_actor_keeps_running() -> None:
    log: list[Any] = []
    ref = ActorRef("counter")
    async with open_supervisor([actor_spec("counter", Counter, log, ref=ref)]) as sup:
        with pytest.raises(KeyError, match="no such thing"):
            await ref.call(Fail("expected"))
        assert await ref.call(Add(1)) == 1
        assert sup.which_children()[0].restarts == 0


async def test_a_crash_fails_the_call_restarts_the_actor_and_the_ref_stays_valid(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[Any] = []
    ref = ActorRef("counter")
    async with open_supervisor([actor_spec("counter", Counter, log, 100, ref=ref)]) as sup:
        assert await ref.call(Add(1)) == 101
        with pytest.raises(ActorStopped, match="RuntimeError: cannot handle") as info:
            await ref.call(Fail("crash"))
        assert isinstance(info.value.reason, RuntimeError)
        await wait_until(lambda: sup.which_children()[0].restarts > 0)
        assert await ref.call(Add(1)) == 101  # a fresh incarnation: clean initial state
        assert sup.which_children()[0].value is ref
    assert ("terminate", "RuntimeError") in log


async def test_calls_queued_behind_a_crash_get_actor_stopped(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[Any] = []
    ref = ActorRef("counter")
    outcomes: list[str] = []

    async def call(message: Any) -> None:
        try:
            await ref.call(message, timeout=60)
            outcomes.append("reply")
        except ActorStopped:
            outcomes.append("stopped")

    async with open_supervisor(
        [actor_spec("counter", Counter, log, ref=ref, restart=Restart.TEMPORARY)]
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, Slow(1.0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, Fail("crash"))
            await trio.testing.wait_all_tasks_blocked()
            for n in range(3):
                nursery.start_soon(call, Add(n))
                await trio.testing.wait_all_tasks_blocked()
        assert outcomes == ["reply", "stopped", "stopped", "stopped", "stopped"]
        assert not ref.alive
        with pytest.raises(ActorStopped):
            await ref.call(Add(1))
        ref.cast(Add(1))  # a cast to a dead actor is dropped, as in Erlang


async def test_call_timeout(autojump_clock: trio.abc.Clock) -> None:
    log: list[Any] = []
    ref = ActorRef("counter")
    async with open_supervisor([actor_spec("counter", Counter, log, ref=ref)]):
        with pytest.raises(CallTimeout, match="within 1 s"):
            await ref.call(Slow(10.0), timeout=1.0)
        # the actor still handles the message that timed out, then the next one
        assert await ref.call(Add(2), timeout=60) == 2


async def test_cast_never_blocks_and_reports_a_full_mailbox(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[Any] = []
    ref = ActorRef("counter")
    async with open_supervisor([actor_spec("counter", Counter, log, ref=ref)]):
        ref.cast(Slow(5.0))
        await trio.testing.wait_all_tasks_blocked()  # the actor is now busy with it
        for n in range(Counter.mailbox_size):
            ref.cast(Add(n))
        with pytest.raises(MailboxFull, match="full"):
            ref.cast(Add(99))
        # a call waits for room, within its timeout
        assert await ref.call(Add(0), timeout=60) == sum(range(Counter.mailbox_size))


async def test_stop_ends_the_incarnation_normally(autojump_clock: trio.abc.Clock) -> None:
    log: list[Any] = []
    ref = ActorRef("counter")
    async with open_supervisor(
        [actor_spec("counter", Counter, log, ref=ref, restart=Restart.TRANSIENT)]
    ) as sup:
        assert await ref.call(Fail("stop")) == "stopping"
        # terminate() takes 0.1 s of virtual time
        await wait_until(lambda: sup.which_children()[0].state is ChildState.STOPPED)
        assert sup.which_children()[0].restarts == 0  # a normal exit: not restarted
    assert ("terminate", None) in log


async def test_terminate_runs_within_the_grace_when_the_supervisor_stops_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[Any] = []
    async with open_supervisor([actor_spec("counter", Counter, log, shutdown=1.0)]):
        pass
    assert log == [("terminate", "Cancelled")]


class Ticker(Actor):
    """Runs a background task that crashes on request."""

    def __init__(self) -> None:
        self.fail = trio.Event()

    async def init(self) -> None:
        self.nursery.start_soon(self._tick)

    async def _tick(self) -> None:
        await self.fail.wait()
        raise OSError("the watched stream broke")

    async def handle(self, message: Any) -> Any:
        self.fail.set()
        return "ok"


async def test_a_background_task_crash_crashes_the_actor(autojump_clock: trio.abc.Clock) -> None:
    ref = ActorRef("ticker")
    async with open_supervisor([actor_spec("ticker", Ticker, ref=ref)], intensity=2) as sup:
        assert await ref.call("fail") == "ok"
        await wait_until(lambda: sup.which_children()[0].restarts > 0)
        assert ref.alive


class BadInit(Actor):
    async def init(self) -> None:
        raise PermissionError("cannot open the netlink socket")


async def test_an_init_failure_is_a_start_error() -> None:
    with pytest.raises(StartError, match="PermissionError") as info:
        async with open_supervisor([actor_spec("bad", BadInit)]):
            raise AssertionError("unreachable")
    assert isinstance(info.value.__cause__, PermissionError)


async def test_a_ref_from_the_supervisor_stays_valid_across_restarts(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[Any] = []
    async with open_supervisor([actor_spec("counter", Counter, log)], intensity=5) as sup:
        ref = sup.which_children()[0].value
        assert ref.name == "counter"  # named after the child id
        for _ in range(3):
            with pytest.raises(ActorStopped):
                await ref.call(Fail("crash"))
            await wait_until(lambda: ref.alive)
            assert sup.which_children()[0].value is ref
        assert await ref.call(Add(7)) == 7
        assert sup.which_children()[0].restarts == 3


async def test_simple_one_for_one_actors_get_their_own_refs() -> None:
    log: list[Any] = []
    async with open_supervisor(
        [actor_spec("conn", Counter, log, restart=Restart.TEMPORARY)],
        strategy=Strategy.SIMPLE_ONE_FOR_ONE,
    ) as sup:
        first = (await sup.start_child(10)).value
        second = (await sup.start_child(20)).value
        assert first is not second
        assert await first.call(Add(1)) == 11
        assert await second.call(Add(1)) == 21
        await sup.terminate_child(sup.which_children()[0].id)
        assert not first.alive
        assert second.alive


async def test_serve_actor_runs_without_a_supervisor() -> None:
    log: list[Any] = []
    async with trio.open_nursery() as nursery:
        ref = await nursery.start(serve_actor, Counter, log)
        assert ref.name == "Counter"
        assert await ref.call(Add(5)) == 5
        nursery.cancel_scope.cancel()
    assert not ref.alive


class Lease(Actor):
    """Expires at its deadline unless renewed (OTP's gen_server timeout)."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Slow):  # renew: the deadline moves ``seconds`` from now
            self.set_deadline(trio.current_time() + message.seconds)
            self.log.append(("renewed", trio.current_time()))
            return self.deadline
        if isinstance(message, Add):  # busy, past the deadline: queued messages still go first
            await trio.sleep(message.amount)
            self.log.append(("busy", trio.current_time()))
            return None
        raise RuntimeError(f"cannot handle {message!r}")

    async def on_deadline(self) -> None:
        self.log.append(("expired", trio.current_time()))
        self.stop()


async def run_lease(log: list[Any], script: Callable[[ActorRef], Any]) -> float:
    """Run a Lease actor, drive it with ``script(ref)`` until it stops; the start time."""
    ref = ActorRef("lease")
    async with open_supervisor(
        [actor_spec("lease", Lease, log, ref=ref, restart=Restart.TEMPORARY)]
    ):
        start = trio.current_time()
        await script(ref)
        await wait_until(lambda: not ref.alive)
    return start


async def test_the_deadline_runs_on_deadline_in_the_actor_and_moves_with_each_renewal(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[Any] = []

    async def script(ref: ActorRef) -> None:
        assert await ref.call(Slow(10.0)) == trio.current_time() + 10.0
        await trio.sleep(5.0)
        await ref.call(Slow(10.0))  # renewed at +5: expires at +15

    start = await run_lease(log, script)
    assert log[-1] == ("expired", start + 15.0)


async def test_a_message_queued_before_the_deadline_goes_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: list[Any] = []

    async def script(ref: ActorRef) -> None:
        await ref.call(Slow(1.0))
        ref.cast(Add(5))  # busy past the deadline...
        ref.cast(Slow(10.0))  # ...with a renewal queued behind it: not expired

    start = await run_lease(log, script)
    assert [entry[0] for entry in log] == ["renewed", "busy", "renewed", "expired"]
    assert log[-1] == ("expired", start + 15.0)

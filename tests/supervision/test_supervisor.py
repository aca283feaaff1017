"""The named OTP supervisor edge cases, one test each.

Timer logic runs under ``autojump_clock``; order is checked on recorded events, never with sleeps.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trionsm.supervision import (
    BRUTAL_KILL,
    IGNORE,
    INFINITY,
    AlreadyPresent,
    AlreadyStarted,
    AutoShutdown,
    ChildNotFound,
    ChildRunning,
    ChildSpec,
    ChildState,
    ChildType,
    Restart,
    RestartIntensityExceeded,
    Shutdown,
    ShutdownTime,
    SimpleOneForOneError,
    StartError,
    Strategy,
    SupervisorStopped,
    cleanup_scope,
    open_supervisor,
    supervisor_spec,
)

Log = list[tuple[str, str]]


class Kid:
    """A controllable child. Each incarnation logs ``start``/``stop`` and waits for a command."""

    def __init__(
        self,
        log: Log,
        name: str,
        *,
        cleanup: float = 0.0,
        fail_starts: int = 0,
        ignore: bool = False,
    ) -> None:
        self.log = log
        self.name = name
        self.cleanup = cleanup
        self.fail_starts = fail_starts
        self.ignore = ignore
        self.starts = 0
        self.args: tuple[object, ...] = ()
        self.cleanup_finished_at: float | None = None
        self._inbox: trio.MemorySendChannel[str] | None = None

    def spec(self, **kwargs: object) -> ChildSpec:
        return ChildSpec(self.name, self, **kwargs)  # type: ignore[arg-type]

    async def __call__(self, *args: object, task_status: trio.TaskStatus[object]) -> None:
        self.starts += 1
        self.args = args
        await trio.lowlevel.checkpoint()
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise RuntimeError(f"{self.name} failed to start")
        if self.ignore:
            task_status.started(IGNORE)
            return
        send, receive = trio.open_memory_channel[str](1)
        self._inbox = send
        self.log.append(("start", self.name))
        task_status.started(f"{self.name}-{self.starts}")
        try:
            command = await receive.receive()
            if command == "crash":
                raise RuntimeError(f"{self.name} crashed")
            if command == "shutdown":
                raise Shutdown("asked to")
        finally:
            with cleanup_scope():
                self.log.append(("stop", self.name))
                if self.cleanup:
                    await trio.sleep(self.cleanup)
                    self.cleanup_finished_at = trio.current_time()

    def tell(self, command: str) -> None:
        assert self._inbox is not None, f"{self.name} never started"
        self._inbox.send_nowait(command)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def until_cancelled() -> None:
    """Wait for the supervisor to cancel this block; fail after a virtual hour, never hang."""
    with trio.fail_after(3600):
        await trio.sleep_forever()


def states(sup: object) -> list[tuple[str, ChildState]]:
    return [(info.id, info.state) for info in sup.which_children()]  # type: ignore[attr-defined]


# ---- start and stop order ------------------------------------------------------------------


async def test_children_start_in_order_and_stop_in_reverse_one_at_a_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    kids = [Kid(log, name, cleanup=1.0) for name in ("a", "b", "c")]
    async with open_supervisor([k.spec() for k in kids]) as sup:
        assert log == [("start", "a"), ("start", "b"), ("start", "c")]
        assert [i.value for i in sup.which_children()] == ["a-1", "b-1", "c-1"]
        log.clear()
    assert log == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    finished = [k.cleanup_finished_at for k in reversed(kids)]
    assert all(t is not None for t in finished)
    # one at a time: each cleanup (1 s) finished before the next child was asked to stop
    assert finished == sorted(finished)
    assert finished[2] - finished[0] == pytest.approx(2.0)  # type: ignore[operator]


async def test_a_start_error_stops_the_children_already_started() -> None:
    log: Log = []
    a, b, c = Kid(log, "a"), Kid(log, "b", fail_starts=1), Kid(log, "c")
    with pytest.raises(StartError, match="'b' failed to start") as info:
        async with open_supervisor([a.spec(), b.spec(), c.spec()]):
            raise AssertionError("unreachable")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert log == [("start", "a"), ("stop", "a")]
    assert c.starts == 0


async def test_returning_before_started_is_a_start_error() -> None:
    async def lazy(*, task_status: trio.TaskStatus[None]) -> None:
        return

    with pytest.raises(StartError, match=r"without calling task_status\.started"):
        async with open_supervisor([ChildSpec("lazy", lazy)]):
            raise AssertionError("unreachable")


async def test_ignore_keeps_the_spec_unless_temporary() -> None:
    log: Log = []
    kept = Kid(log, "kept", ignore=True)
    dropped = Kid(log, "dropped", ignore=True)
    async with open_supervisor(
        [kept.spec(), dropped.spec(restart=Restart.TEMPORARY), Kid(log, "x").spec()]
    ) as sup:
        assert states(sup) == [("kept", ChildState.STOPPED), ("x", ChildState.RUNNING)]
        handle = await sup.restart_child("kept")
        assert handle.ignored


# ---- restart types under each exit reason ---------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "command", "restarted"),
    [
        (Restart.PERMANENT, "crash", True),
        (Restart.PERMANENT, "exit", True),
        (Restart.PERMANENT, "shutdown", True),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TRANSIENT, "exit", False),
        (Restart.TRANSIENT, "shutdown", False),
        (Restart.TEMPORARY, "crash", False),
        (Restart.TEMPORARY, "exit", False),
        (Restart.TEMPORARY, "shutdown", False),
    ],
)
@pytest.mark.parametrize(
    "strategy", [Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE]
)
async def test_restart_type_decides(
    autojump_clock: trio.abc.Clock,
    strategy: Strategy,
    restart: Restart,
    command: str,
    restarted: bool,
) -> None:
    log: Log = []
    first, kid, last = Kid(log, "first"), Kid(log, "kid"), Kid(log, "last")
    async with open_supervisor(
        [first.spec(), kid.spec(restart=restart), last.spec()], strategy=strategy, intensity=5
    ) as sup:
        kid.tell(command)
        await settle()
        ids = [i.id for i in sup.which_children()]
        assert kid.starts == (2 if restarted else 1)
        if restart is Restart.TEMPORARY:
            assert "kid" not in ids  # a temporary child's spec is forgotten
        elif not restarted:
            assert dict(states(sup))["kid"] is ChildState.STOPPED
        # siblings are only touched when the child is restarted and the strategy says so
        touched_first = restarted and strategy is Strategy.ONE_FOR_ALL
        touched_last = restarted and strategy is not Strategy.ONE_FOR_ONE
        assert first.starts == (2 if touched_first else 1)
        assert last.starts == (2 if touched_last else 1)


async def test_one_for_all_stops_the_others_in_reverse_then_starts_all_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    a, b, c, t = Kid(log, "a"), Kid(log, "b"), Kid(log, "c"), Kid(log, "t")
    async with open_supervisor(
        [a.spec(), b.spec(), t.spec(restart=Restart.TEMPORARY), c.spec()],
        strategy=Strategy.ONE_FOR_ALL,
    ) as sup:
        log.clear()
        b.tell("crash")
        await settle()
        assert log == [
            ("stop", "b"),  # its own cleanup as it crashed
            ("stop", "c"),
            ("stop", "t"),
            ("stop", "a"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
        ]
        # the temporary sibling was terminated by the strategy and removed, not restarted
        assert [i.id for i in sup.which_children()] == ["a", "b", "c"]
        assert t.starts == 1


async def test_rest_for_one_restarts_the_child_and_those_after_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    a, b, c, d = Kid(log, "a"), Kid(log, "b"), Kid(log, "c"), Kid(log, "d")
    async with open_supervisor(
        [a.spec(), b.spec(), c.spec(), d.spec()], strategy=Strategy.REST_FOR_ONE
    ):
        log.clear()
        b.tell("crash")
        await settle()
        assert log == [
            ("stop", "b"),
            ("stop", "d"),
            ("stop", "c"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]
        assert (a.starts, b.starts, c.starts, d.starts) == (1, 2, 2, 2)


# ---- intensity -------------------------------------------------------------------------------


async def test_more_restarts_than_intensity_within_period_gives_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    steady, flappy = Kid(log, "steady"), Kid(log, "flappy")

    async def crash_three_times() -> None:
        async with open_supervisor([steady.spec(), flappy.spec()], intensity=2, period=5.0):
            for _ in range(3):
                await trio.sleep(1.0)
                flappy.tell("crash")
                await settle()
            raise AssertionError("the supervisor should have given up and cancelled this block")

    with pytest.raises(RestartIntensityExceeded) as info:
        await crash_three_times()
    # unwrapped (not an ExceptionGroup), with the supervisor's numbers
    assert type(info.value) is RestartIntensityExceeded
    assert info.value.child_id == "flappy"
    assert flappy.starts == 3  # two restarts allowed, the third attempt refused
    assert log[-1] == ("stop", "steady")  # every child was stopped before it raised


async def test_restarts_spread_beyond_the_period_never_give_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    kid = Kid(log, "kid")
    async with open_supervisor([kid.spec()], intensity=1, period=5.0):
        for _ in range(10):
            await trio.sleep(5.5)
            kid.tell("crash")
            await settle()
    assert kid.starts == 11


async def test_intensity_is_counted_per_supervisor_not_per_child(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    a, b = Kid(log, "a"), Kid(log, "b")

    async def crash_each_once() -> None:
        async with open_supervisor([a.spec(), b.spec()], intensity=1, period=5.0):
            a.tell("crash")
            await settle()
            b.tell("crash")  # one crash each: two restarts for the supervisor
            await settle()
            raise AssertionError("unreachable")

    with pytest.raises(RestartIntensityExceeded):
        await crash_each_once()


async def test_intensity_is_checked_before_the_restart(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    kid = Kid(log, "kid")

    async def crash_once() -> None:
        async with open_supervisor([kid.spec()], intensity=0):
            kid.tell("crash")
            await settle()
            raise AssertionError("unreachable")

    with pytest.raises(RestartIntensityExceeded):
        await crash_once()
    assert kid.starts == 1  # never restarted: the check came first


# ---- try-again restart -----------------------------------------------------------------------


async def test_a_failed_restart_is_tried_again_through_the_mailbox(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    kid = Kid(log, "kid")
    async with open_supervisor([kid.spec()], intensity=10) as sup:
        kid.fail_starts = 3
        kid.tell("crash")
        await settle()
        assert kid.starts == 5  # the crash, three failed tries, one success
        assert states(sup) == [("kid", ChildState.RUNNING)]
        assert sup.tree().recent_restarts == 4  # every try counted against the intensity


async def test_a_request_slips_in_between_two_restart_attempts(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    kid, other = Kid(log, "kid"), Kid(log, "other")
    async with open_supervisor([kid.spec(), other.spec()], intensity=10**6) as sup:
        kid.fail_starts = 10**9  # never starts again
        kid.tell("crash")
        await trio.lowlevel.checkpoint()
        await sup.terminate_child("kid")  # served between two try-again messages
        assert dict(states(sup)) == {"kid": ChildState.STOPPED, "other": ChildState.RUNNING}
        tries = kid.starts
        await settle()
        assert kid.starts == tries  # no more attempts after the terminate


async def test_a_restart_that_keeps_failing_uses_up_the_intensity(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    kid = Kid(log, "kid")

    async def never_restarts() -> None:
        async with open_supervisor([kid.spec()], intensity=3):
            kid.fail_starts = 10**9
            kid.tell("crash")
            await settle()
            raise AssertionError("unreachable")

    with pytest.raises(RestartIntensityExceeded):
        await never_restarts()
    assert kid.starts == 4  # 1 + three tries; the fourth try is refused by the window


# ---- shutdown grace --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shutdown", "cleanup", "finished"),
    [
        (2.0, 1.0, True),  # cleanup fits in the grace
        (1.0, 10.0, False),  # cleanup cut at the grace
        (BRUTAL_KILL, 0.5, False),  # no window at all
        (INFINITY, 1000.0, True),  # waits however long it takes
    ],
)
async def test_shutdown_grace(
    autojump_clock: trio.abc.Clock, shutdown: ShutdownTime, cleanup: float, finished: bool
) -> None:
    log: Log = []
    kid = Kid(log, "kid", cleanup=cleanup)
    async with open_supervisor([kid.spec(shutdown=shutdown)]) as sup:
        begin = trio.current_time()
        await sup.terminate_child("kid")
        took = trio.current_time() - begin
    assert ("stop", "kid") in log
    assert (kid.cleanup_finished_at is not None) is finished
    if finished:
        assert took == pytest.approx(cleanup)
    elif shutdown is BRUTAL_KILL:
        assert took == 0
    else:
        assert took == pytest.approx(shutdown)


async def test_simple_one_for_one_children_stop_concurrently(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    kid = Kid(log, "conn", cleanup=1.0)
    async with open_supervisor(
        [kid.spec(restart=Restart.TEMPORARY)], strategy=Strategy.SIMPLE_ONE_FOR_ONE
    ) as sup:
        handles = [await sup.start_child(n) for n in range(5)]
        assert [h.id for h in handles] == [f"conn#{n}" for n in range(1, 6)]
        assert kid.args == (4,)
        begin = trio.current_time()
    assert trio.current_time() - begin == pytest.approx(1.0)  # not 5.0: concurrently
    assert log.count(("stop", "conn")) == 5


# ---- dynamic children ------------------------------------------------------------------------


async def test_dynamic_children(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    a, b = Kid(log, "a"), Kid(log, "b")
    async with open_supervisor([a.spec()]) as sup:
        handle = await sup.start_child(b.spec())
        assert (handle.id, handle.value) == ("b", "b-1")
        with pytest.raises(AlreadyStarted) as started:
            await sup.start_child(Kid(log, "b").spec())
        assert started.value.value == "b-1"
        await sup.terminate_child("b")
        assert states(sup) == [("a", ChildState.RUNNING), ("b", ChildState.STOPPED)]
        with pytest.raises(AlreadyPresent):
            await sup.start_child(Kid(log, "b").spec())
        with pytest.raises(ChildRunning, match="running"):
            await sup.delete_child("a")
        with pytest.raises(ChildRunning):
            await sup.restart_child("a")
        assert (await sup.restart_child("b")).value == "b-2"
        await sup.terminate_child("b")
        await sup.delete_child("b")
        assert [i.id for i in sup.which_children()] == ["a"]
        with pytest.raises(ChildNotFound):
            await sup.terminate_child("b")
        with pytest.raises(ChildNotFound):
            await sup.restart_child("nope")
        with pytest.raises(ValueError, match="one ChildSpec"):
            await sup.start_child("not a spec")
        with pytest.raises(StartError):
            await sup.start_child(Kid(log, "bad", fail_starts=1).spec())
        assert [i.id for i in sup.which_children()] == ["a"]  # a failed start keeps nothing
        # a dynamic child is appended last, so it stops first
        await sup.start_child(Kid(log, "z").spec())
        log.clear()
    assert log == [("stop", "z"), ("stop", "a")]


async def test_terminating_a_temporary_child_forgets_it() -> None:
    log: Log = []
    async with open_supervisor([Kid(log, "t").spec(restart=Restart.TEMPORARY)]) as sup:
        await sup.terminate_child("t")
        assert sup.which_children() == []


async def test_simple_one_for_one_rules(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    kid = Kid(log, "w")
    async with open_supervisor(
        [kid.spec(restart=Restart.TRANSIENT)], strategy=Strategy.SIMPLE_ONE_FOR_ONE
    ) as sup:
        assert sup.which_children() == []  # no children at init
        first = await sup.start_child("x")
        second = await sup.start_child("y")
        with pytest.raises(SimpleOneForOneError):
            await sup.restart_child(first.id)
        with pytest.raises(SimpleOneForOneError):
            await sup.delete_child(first.id)
        await sup.terminate_child(first)  # by handle (OTP: by pid)
        assert [i.id for i in sup.which_children()] == [second.id]
        kid.tell("exit")  # a transient child exiting normally is removed, not restarted
        await settle()
        assert sup.which_children() == []
        count = sup.count_children()
        assert (count.specs, count.active, count.workers) == (1, 0, 0)  # OTP: the template


async def test_ignore_on_restart_drops_a_simple_child(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    kid = Kid(log, "w")
    async with open_supervisor(
        [kid.spec(restart=Restart.PERMANENT)], strategy=Strategy.SIMPLE_ONE_FOR_ONE, intensity=3
    ) as sup:
        await sup.start_child()
        kid.ignore = True
        kid.tell("crash")
        await settle()
        assert sup.which_children() == []


# ---- auto shutdown ---------------------------------------------------------------------------


async def test_any_significant_child_exiting_shuts_the_supervisor_down(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    worker, job = Kid(log, "worker"), Kid(log, "job")
    reached_end = False
    async with open_supervisor(
        [worker.spec(), job.spec(restart=Restart.TRANSIENT, significant=True)],
        auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
    ):
        job.tell("exit")
        await until_cancelled()  # cancelled by the auto shutdown
    reached_end = True
    assert reached_end
    assert log[-1] == ("stop", "worker")


async def test_all_significant_waits_for_the_last_one(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    one, two = Kid(log, "one"), Kid(log, "two")
    async with open_supervisor(
        [
            one.spec(restart=Restart.TEMPORARY, significant=True),
            two.spec(restart=Restart.TRANSIENT, significant=True),
        ],
        auto_shutdown=AutoShutdown.ALL_SIGNIFICANT,
    ) as sup:
        one.tell("exit")
        await settle()
        assert not sup.stopped
        two.tell("crash")  # abnormal: a transient child is restarted, no shutdown
        await settle()
        assert not sup.stopped
        two.tell("shutdown")
        await until_cancelled()
    assert sup.stopped


async def test_a_supervisor_caused_termination_does_not_count(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    job = Kid(log, "job")
    async with open_supervisor(
        [job.spec(restart=Restart.TRANSIENT, significant=True)],
        auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
    ) as sup:
        await sup.terminate_child("job")
        await settle()
        assert not sup.stopped


# ---- nesting and escalation ------------------------------------------------------------------


async def test_a_permanent_child_supervisor_that_gives_up_is_restarted_by_its_parent(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    leaf = Kid(log, "leaf")
    sub = supervisor_spec("sub", [leaf.spec()], intensity=0)

    async def crash_twice() -> None:
        async with open_supervisor([sub], intensity=1, name="root") as root:
            leaf.tell("crash")  # sub gives up at once (intensity 0); root restarts it
            await settle()
            assert leaf.starts == 2
            assert root.which_children()[0].restarts == 1
            leaf.tell("crash")  # sub gives up again; root's second restart exceeds its intensity
            await until_cancelled()

    with pytest.raises(RestartIntensityExceeded) as info:
        await crash_twice()
    assert info.value.supervisor == "root"


async def test_escalation_reaches_the_root(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    leaf = Kid(log, "leaf")
    sub = supervisor_spec("sub", [leaf.spec()], intensity=0)

    async def crash_once() -> None:
        async with open_supervisor([sub], intensity=0, name="root"):
            leaf.tell("crash")
            await until_cancelled()

    with pytest.raises(RestartIntensityExceeded) as info:
        await crash_once()
    assert info.value.supervisor == "root"
    assert info.value.child_id == "sub"


async def test_a_transient_child_supervisor_that_gives_up_stays_down(
    autojump_clock: trio.abc.Clock,
) -> None:
    """OTP's gotcha: giving up exits with reason `shutdown`, which is not abnormal."""
    log: Log = []
    leaf = Kid(log, "leaf")
    sub = supervisor_spec("sub", [leaf.spec()], intensity=0, restart=Restart.TRANSIENT)
    async with open_supervisor([sub, Kid(log, "sibling").spec()], name="root") as root:
        leaf.tell("crash")
        await settle()
        assert dict(states(root)) == {"sub": ChildState.STOPPED, "sibling": ChildState.RUNNING}
        assert leaf.starts == 1


async def test_tree_snapshot_recurses_into_child_supervisors() -> None:
    log: Log = []
    sub = supervisor_spec(
        "conns",
        [Kid(log, "conn").spec(restart=Restart.TEMPORARY)],
        strategy=Strategy.SIMPLE_ONE_FOR_ONE,
    )
    async with open_supervisor([Kid(log, "kernel").spec(), sub], name="node") as node:
        conns = node.which_children()[1].value
        await conns.start_child()
        tree = node.tree()
        paths = [path for path, _ in tree.walk()]
        assert paths == ["node/kernel", "node/conns", "node/conns/conn#1"]
        found = tree.find("node/conns/conn#1")
        assert found is not None
        assert found.state is ChildState.RUNNING
        assert tree.to_dict()["children"][1]["supervisor"]["strategy"] == "simple_one_for_one"
        count = node.count_children()
        assert (count.specs, count.active, count.supervisors, count.workers) == (2, 2, 1, 1)
        assert node.which_children()[1].type is ChildType.SUPERVISOR


# ---- what is never swallowed -----------------------------------------------------------------


async def test_outer_cancellation_stops_children_in_order_and_propagates(
    autojump_clock: trio.abc.Clock,
) -> None:
    log: Log = []
    kids = [Kid(log, name, cleanup=0.5) for name in ("a", "b", "c")]
    after_block = False
    with trio.move_on_after(10) as scope:
        async with open_supervisor([k.spec() for k in kids]):
            log.clear()
            await until_cancelled()
        after_block = True
    assert scope.cancelled_caught
    assert not after_block
    assert log == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    assert all(k.cleanup_finished_at is not None for k in kids)  # each got its grace


@pytest.mark.parametrize("error", [ValueError("from the block"), KeyboardInterrupt()])
async def test_an_error_in_the_block_propagates_unwrapped(error: BaseException) -> None:
    log: Log = []
    with pytest.raises(type(error)) as info:
        async with open_supervisor([Kid(log, "a").spec(), Kid(log, "b").spec()]):
            raise error
    assert info.value is error
    assert log[-2:] == [("stop", "b"), ("stop", "a")]


async def test_requests_after_the_supervisor_stopped_are_refused() -> None:
    log: Log = []
    async with open_supervisor([Kid(log, "a").spec()]) as sup:
        pass
    assert sup.stopped
    with pytest.raises(SupervisorStopped):
        await sup.start_child(Kid(log, "b").spec())


async def test_a_restart_starts_from_a_clean_initial_state(autojump_clock: trio.abc.Clock) -> None:
    log: Log = []
    kid = Kid(log, "kid")
    async with open_supervisor([kid.spec()], intensity=3) as sup:
        values = [sup.which_children()[0].value]
        for _ in range(2):
            kid.tell("crash")
            await settle()
            values.append(sup.which_children()[0].value)
        assert values == ["kid-1", "kid-2", "kid-3"]
        assert sup.which_children()[0].restarts == 2

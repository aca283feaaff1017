"""Fault injection: ``Supervisor.crash_child`` by id or by path, and the tree it navigates."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from trionsm.supervision import (
    ChildNotFound,
    ChildNotRunning,
    ChildSpec,
    ChildState,
    Restart,
    RestartIntensityExceeded,
    Strategy,
    Supervisor,
    cleanup_scope,
    open_supervisor,
)


@attrs.define
class Worker:
    """A child that counts its starts and the cleanups it ran."""

    starts: int = 0
    cleanups: int = 0

    async def run(self, *, task_status: trio.TaskStatus[Any]) -> None:
        self.starts += 1
        task_status.started(f"incarnation {self.starts}")
        try:
            await trio.sleep_forever()
        finally:
            with cleanup_scope():
                await trio.lowlevel.checkpoint()
                self.cleanups += 1


@attrs.frozen
class RoleHandle:
    """What a role's start function passes to ``started()``: a handle with its supervisor."""

    name: str
    supervisor: Supervisor


async def serve_role(worker: Worker, *, task_status: trio.TaskStatus[RoleHandle]) -> None:
    """A child running its own supervisor (a connections supervisor of TEMPORARY workers)."""
    template = ChildSpec("conn", worker.run, restart=Restart.TEMPORARY)
    conns = ChildSpec("connections", partial_supervisor([template]))
    async with open_supervisor([conns], name="role-1") as supervisor:
        task_status.started(RoleHandle("role-1", supervisor))
        await trio.sleep_forever()


def partial_supervisor(children: list[ChildSpec]) -> Any:
    async def run(*, task_status: trio.TaskStatus[Supervisor]) -> None:
        async with open_supervisor(
            children, strategy=Strategy.SIMPLE_ONE_FOR_ONE, intensity=10, name="connections"
        ) as supervisor:
            task_status.started(supervisor)
            await trio.sleep_forever()

    return run


async def test_a_crashed_permanent_child_is_restarted_after_its_cleanup() -> None:
    worker = Worker()
    with trio.fail_after(10):
        async with open_supervisor([ChildSpec("kernel", worker.run)], name="node") as node:
            before = await node.crash_child("kernel", "drill")
            assert before.restarts == 0
            assert worker.cleanups == 1  # the incarnation ended, its cleanup done
            (row,) = node.which_children()  # restarted by the time crash_child returns
            assert (row.state, row.restarts, row.value) == (ChildState.RUNNING, 1, "incarnation 2")
            (tree_row,) = node.tree().children
            assert tree_row.last_exit == "abnormal: Crashed: child 'kernel': drill"


async def test_crash_by_path_descends_through_handles_and_child_supervisors() -> None:
    worker = Worker()
    with trio.fail_after(10):
        spec = ChildSpec("role", lambda *, task_status: serve_role(worker, task_status=task_status))
        async with open_supervisor([spec], name="node") as node:
            handle = node.which_children()[0].value
            conns = handle.supervisor.which_children()[0].value
            await conns.start_child()
            paths = [path for path, _ in node.tree().walk()]
            assert paths == ["node/role", "node/role/connections", "node/role/connections/conn#1"]
            await node.crash_child("node/role/connections/conn#1")
            assert conns.which_children() == []  # TEMPORARY: not restarted
            assert worker.cleanups == 1
            # A child supervisor crashed by path is restarted by its own supervisor.
            await node.crash_child("node/role/connections")
            (row,) = handle.supervisor.which_children()
            assert (row.state, row.restarts) == (ChildState.RUNNING, 1)


async def test_unknown_paths_and_stopped_children_are_refused_by_name() -> None:
    worker = Worker()
    with trio.fail_after(10):
        async with open_supervisor([ChildSpec("kernel", worker.run)], name="node") as node:
            for path in ["nope", "node/nope", "other/kernel", "node/kernel/deeper"]:
                with pytest.raises(ChildNotFound, match=repr(path)):
                    await node.crash_child(path)
            await node.terminate_child("kernel")
            with pytest.raises(ChildNotRunning, match="'node/kernel' is stopped"):
                await node.crash_child("node/kernel")
            assert worker.starts == 1


async def test_crashes_count_against_the_restart_intensity() -> None:
    worker = Worker()

    async def crash_once() -> None:
        async with open_supervisor(
            [ChildSpec("kernel", worker.run)], intensity=0, name="node"
        ) as node:
            await node.crash_child("kernel")
            await trio.sleep_forever()  # cancelled when the supervisor gives up

    with trio.fail_after(10), pytest.raises(RestartIntensityExceeded, match="'kernel'"):
        await crash_once()
    assert worker.starts == 1


async def test_child_ids_may_contain_slashes() -> None:
    worker = Worker()
    with trio.fail_after(10):
        spec = ChildSpec("listen:unix:///run/x.sock", worker.run)
        async with open_supervisor([spec], name="node") as node:
            await node.crash_child("node/listen:unix:///run/x.sock")
            assert node.which_children()[0].restarts == 1
            with pytest.raises(ChildNotFound):
                await node.crash_child("node/listen:unix:///run")

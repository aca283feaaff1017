"""Validation of child specs and supervisor options: a clear ValueError naming the field, before
anything starts."""

from __future__ import annotations

import math

import pytest
import trio

from trionsm.supervision import (
    BRUTAL_KILL,
    INFINITY,
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    RestartIntensity,
    Strategy,
    open_supervisor,
    supervisor_spec,
)


async def _never_started(*, task_status: trio.TaskStatus[None]) -> None:
    raise AssertionError("a child started although the specification was invalid")


def test_shutdown_defaults_follow_the_child_type() -> None:
    assert ChildSpec("w", _never_started).shutdown == 5.0
    assert ChildSpec("s", _never_started, type=ChildType.SUPERVISOR).shutdown is INFINITY
    assert ChildSpec("i", _never_started, shutdown=math.inf).shutdown is INFINITY
    assert ChildSpec("b", _never_started, shutdown=BRUTAL_KILL).shutdown is BRUTAL_KILL
    assert ChildSpec("z", _never_started, shutdown=0).shutdown == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": ""}, "ChildSpec.id"),
        ({"id": 3}, "ChildSpec.id"),
        ({"start": "not callable"}, "ChildSpec.start"),
        ({"restart": "permanent"}, "ChildSpec.restart"),
        ({"type": "worker"}, "ChildSpec.type"),
        ({"shutdown": -1.0}, "ChildSpec.shutdown"),
        ({"shutdown": math.nan}, "ChildSpec.shutdown"),
        ({"shutdown": "5"}, "ChildSpec.shutdown"),
        ({"shutdown": True}, "ChildSpec.shutdown"),
        ({"significant": 1, "restart": Restart.TRANSIENT}, "ChildSpec.significant"),
        ({"significant": True}, "ChildSpec.significant"),  # PERMANENT cannot be significant
    ],
)
def test_invalid_child_spec_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"id": "child", "start": _never_started, **kwargs}
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ChildSpec(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("children", "options", "field"),
    [
        ([ChildSpec("a", _never_started), ChildSpec("a", _never_started)], {}, "duplicate"),
        ([ChildSpec("a", _never_started)], {"strategy": "one_for_one"}, "strategy"),
        ([ChildSpec("a", _never_started)], {"intensity": -1}, "intensity"),
        ([ChildSpec("a", _never_started)], {"intensity": 1.5}, "intensity"),
        ([ChildSpec("a", _never_started)], {"period": 0}, "period"),
        ([ChildSpec("a", _never_started)], {"period": math.inf}, "period"),
        ([ChildSpec("a", _never_started)], {"auto_shutdown": "never"}, "auto_shutdown"),
        (
            [ChildSpec("a", _never_started, restart=Restart.TEMPORARY, significant=True)],
            {},
            "significant",
        ),
        (
            [ChildSpec("a", _never_started), ChildSpec("b", _never_started)],
            {"strategy": Strategy.SIMPLE_ONE_FOR_ONE},
            "exactly one template",
        ),
        ([], {"strategy": Strategy.SIMPLE_ONE_FOR_ONE}, "exactly one template"),
        (["not a spec"], {}, r"children\[0\]"),
    ],
)
async def test_invalid_supervisor_options_fail_before_anything_starts(
    children: list[ChildSpec], options: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        async with open_supervisor(children, **options):  # type: ignore[arg-type]
            raise AssertionError("the supervisor started")


def test_supervisor_spec_validates_now() -> None:
    with pytest.raises(ValueError, match="intensity"):
        supervisor_spec("sub", [ChildSpec("a", _never_started)], intensity=-3)
    spec = supervisor_spec(
        "sub",
        [ChildSpec("a", _never_started, restart=Restart.TRANSIENT, significant=True)],
        auto_shutdown=AutoShutdown.ANY_SIGNIFICANT,
        restart=Restart.TRANSIENT,
    )
    assert spec.type is ChildType.SUPERVISOR
    assert spec.shutdown is INFINITY


class TestRestartIntensity:
    def test_zero_intensity_gives_up_on_the_first_restart(self) -> None:
        assert RestartIntensity(0, 5.0).add_restart(0.0) is False

    def test_more_than_intensity_within_period_gives_up(self) -> None:
        window = RestartIntensity(2, 5.0)
        assert window.add_restart(0.0)
        assert window.add_restart(1.0)
        assert not window.add_restart(2.0)

    def test_the_window_slides(self) -> None:
        window = RestartIntensity(1, 5.0)
        assert window.add_restart(0.0)
        assert window.add_restart(5.5)  # 0.0 has left the window
        assert not window.add_restart(6.0)

    def test_the_boundary_is_inclusive(self) -> None:
        window = RestartIntensity(1, 5.0)
        assert window.add_restart(0.0)
        assert not window.add_restart(5.0)

    def test_recent_counts_only_the_window(self) -> None:
        window = RestartIntensity(10, 5.0)
        for stamp in (0.0, 1.0, 7.0):
            window.add_restart(stamp)
        assert window.recent(7.0) == 1
        assert window.recent(12.5) == 0

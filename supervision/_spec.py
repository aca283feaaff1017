"""Child specifications and supervisor options (OTP's ``child_spec()`` and ``sup_flags()``).

Everything here is validated at construction: a bad value raises :class:`ValueError` naming the
field and what is allowed, before anything starts.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, TypeAlias

import attrs

__all__ = [
    "BRUTAL_KILL",
    "DEFAULT_WORKER_SHUTDOWN",
    "IGNORE",
    "INFINITY",
    "AutoShutdown",
    "ChildSpec",
    "ChildType",
    "Restart",
    "ShutdownTime",
    "Strategy",
]


class Strategy(enum.Enum):
    """What a supervisor restarts when a child terminates and is to be restarted."""

    ONE_FOR_ONE = "one_for_one"
    """Only that child."""
    ONE_FOR_ALL = "one_for_all"
    """All children: the others are stopped in reverse start order, then all start in order."""
    REST_FOR_ONE = "rest_for_one"
    """That child and every child started after it."""
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"
    """One template spec; children only through ``start_child(*args)``; otherwise ONE_FOR_ONE."""


class Restart(enum.Enum):
    """When a terminated child is restarted."""

    PERMANENT = "permanent"
    """Always, even after a normal exit."""
    TRANSIENT = "transient"
    """Only after an abnormal exit (not a return, :class:`Shutdown` or a supervisor stop)."""
    TEMPORARY = "temporary"
    """Never; its spec is forgotten once it terminates."""


class ChildType(enum.Enum):
    """A worker, or a supervisor (whose default shutdown is INFINITY)."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


class AutoShutdown(enum.Enum):
    """Whether a supervisor stops itself when significant children exit on their own (OTP 24+)."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


class _Special(enum.Enum):
    BRUTAL_KILL = "brutal_kill"
    INFINITY = "infinity"
    IGNORE = "ignore"

    def __repr__(self) -> str:
        return self.value.upper()


BRUTAL_KILL: Final = _Special.BRUTAL_KILL
"""Shutdown with no cleanup window: the child's ``cleanup_scope()`` starts already cancelled.

Best effort: code blocked in a thread or shielded by itself cannot be interrupted."""
INFINITY: Final = _Special.INFINITY
"""Shutdown that waits for the child's cleanup however long it takes (supervisors' default)."""
IGNORE: Final = _Special.IGNORE
"""Pass to ``task_status.started(IGNORE)`` to start no process (OTP's ``ignore``)."""

DEFAULT_WORKER_SHUTDOWN: Final = 5.0

ShutdownTime: TypeAlias = float | Literal[_Special.BRUTAL_KILL, _Special.INFINITY]
StartFunction: TypeAlias = Callable[..., Awaitable[Any]]


def _check_id(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"ChildSpec.id must be a non-empty str, got {value!r}")


def _check_start(_inst: Any, _attr: Any, value: Any) -> None:
    if not callable(value):
        raise ValueError(
            f"ChildSpec.start must be an async callable taking task_status=, got {value!r}"
        )


def _enum_checker(field: str, kind: type[enum.Enum]) -> Callable[[Any, Any, Any], None]:
    allowed = ", ".join(f"{kind.__name__}.{m.name}" for m in kind)

    def check(_inst: Any, _attr: Any, value: Any) -> None:
        if not isinstance(value, kind):
            raise ValueError(f"{field} must be one of {allowed}, got {value!r}")

    return check


def _normalise_shutdown(value: object) -> ShutdownTime | None:
    if value is None or value is BRUTAL_KILL or value is INFINITY:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            "ChildSpec.shutdown must be seconds (float >= 0), BRUTAL_KILL or INFINITY, "
            f"got {value!r}"
        )
    if math.isnan(value) or value < 0:
        raise ValueError(f"ChildSpec.shutdown must be >= 0 seconds, got {value!r}")
    if math.isinf(value):
        return INFINITY
    return float(value)


@attrs.frozen
class ChildSpec:
    """How to start, restart and stop one child.

    Args:
        id: unique among the supervisor's children (for SIMPLE_ONE_FOR_ONE, the template's name).
        start: ``async def start(*args, task_status)``; it must call ``task_status.started(value)``
            once it is ready (``value`` is what ``start_child`` returns and ``which_children``
            shows; ``IGNORE`` starts nothing), then run until done. Raising or returning before
            ``started()`` is a start error. Start-up blocks the supervisor, as in OTP: keep it
            short.
        restart: PERMANENT, TRANSIENT or TEMPORARY.
        shutdown: seconds of cleanup window granted on stop, ``BRUTAL_KILL`` or ``INFINITY``;
            ``None`` picks 5.0 for a worker and INFINITY for a supervisor.
        type: WORKER or SUPERVISOR.
        significant: counts for the supervisor's ``auto_shutdown`` (TRANSIENT or TEMPORARY only).
    """

    id: str = attrs.field(validator=_check_id)
    start: StartFunction = attrs.field(validator=_check_start)
    restart: Restart = attrs.field(
        default=Restart.PERMANENT, validator=_enum_checker("ChildSpec.restart", Restart)
    )
    shutdown: ShutdownTime = attrs.field(default=None, converter=_normalise_shutdown)
    type: ChildType = attrs.field(
        default=ChildType.WORKER, validator=_enum_checker("ChildSpec.type", ChildType)
    )
    significant: bool = attrs.field(default=False)

    def __attrs_post_init__(self) -> None:
        raw_shutdown: object = self.shutdown  # None until the default for the type is picked
        if raw_shutdown is None:
            default: ShutdownTime = (
                INFINITY if self.type is ChildType.SUPERVISOR else DEFAULT_WORKER_SHUTDOWN
            )
            object.__setattr__(self, "shutdown", default)
        significant: object = self.significant  # typed bool, but callers may pass anything
        if not isinstance(significant, bool):
            raise ValueError(f"ChildSpec.significant must be a bool, got {self.significant!r}")
        if self.significant and self.restart is Restart.PERMANENT:
            raise ValueError(
                f"ChildSpec.significant: child {self.id!r} is PERMANENT; "
                "a significant child must be TRANSIENT or TEMPORARY"
            )


@attrs.frozen
class SupervisorOptions:
    """Validated supervisor flags (OTP's ``sup_flags()``)."""

    strategy: Strategy = attrs.field(validator=_enum_checker("strategy", Strategy))
    intensity: int
    period: float
    auto_shutdown: AutoShutdown = attrs.field(
        validator=_enum_checker("auto_shutdown", AutoShutdown)
    )
    name: str

    def __attrs_post_init__(self) -> None:
        if isinstance(self.intensity, bool) or not isinstance(self.intensity, int):
            raise ValueError(f"intensity must be an int >= 0, got {self.intensity!r}")
        if self.intensity < 0:
            raise ValueError(f"intensity must be >= 0, got {self.intensity!r}")
        if isinstance(self.period, bool) or not isinstance(self.period, int | float):
            raise ValueError(f"period must be seconds (float > 0), got {self.period!r}")
        if not (self.period > 0) or math.isinf(self.period):
            raise ValueError(f"period must be finite seconds > 0, got {self.period!r}")

    def check_children(self, children: list[ChildSpec]) -> None:
        """Validate a child list against these options; raises ValueError naming the field."""
        for index, spec in enumerate(children):
            if not isinstance(spec, ChildSpec):
                raise ValueError(f"children[{index}] must be a ChildSpec, got {spec!r}")
        if self.strategy is Strategy.SIMPLE_ONE_FOR_ONE and len(children) != 1:
            raise ValueError(
                "children: a SIMPLE_ONE_FOR_ONE supervisor takes exactly one template ChildSpec, "
                f"got {len(children)}"
            )
        seen: set[str] = set()
        for spec in children:
            if spec.id in seen:
                raise ValueError(f"children: duplicate child id {spec.id!r}")
            seen.add(spec.id)
            self.check_spec(spec)

    def check_spec(self, spec: ChildSpec) -> None:
        """Validate one spec against these options (significance needs an auto_shutdown)."""
        if spec.significant and self.auto_shutdown is AutoShutdown.NEVER:
            raise ValueError(
                f"ChildSpec.significant: child {spec.id!r} is significant but the supervisor's "
                "auto_shutdown is NEVER (use ANY_SIGNIFICANT or ALL_SIGNIFICANT)"
            )

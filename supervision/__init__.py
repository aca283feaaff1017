"""OTP-style supervision for Trio: supervisors, child specs and actors.

A faithful port of Erlang/OTP's ``supervisor`` and the core of ``gen_server`` onto Trio nurseries,
with no knowledge of anything else (it depends on trio and attrs only).

Map:

* :class:`ChildSpec`, :class:`Restart`, :class:`ChildType`, :data:`BRUTAL_KILL`, :data:`INFINITY`,
  :data:`IGNORE`: what a child is and how it restarts and stops.
* :func:`open_supervisor` / :func:`serve_supervisor` / :func:`supervisor_spec`, :class:`Strategy`,
  :class:`AutoShutdown`: supervisors (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE, SIMPLE_ONE_FOR_ONE),
  and the :class:`Supervisor` handle with ``start_child``, ``terminate_child``, ``restart_child``,
  ``delete_child``, ``which_children``, ``count_children``, ``tree`` and ``crash_child`` (fault
  injection: an abnormal exit with :class:`Crashed`, by id or by path down the tree;
  :func:`nested_supervisor` says which child values the tree descends into).
* :class:`Actor`, :class:`ActorRef`, :func:`serve_actor`, :func:`actor_spec`: one task with a
  bounded mailbox, ``call`` (with a timeout) and ``cast``.
* :func:`cleanup_scope`: the shielded window a child's cleanup runs in when it is stopped.
* :class:`RestartIntensity`: the pure sliding window behind ``intensity``/``period``.

Guarantees:

* Children start synchronously, left to right: a child is running when ``start_child`` (or
  ``open_supervisor``) returns. A child that fails before ``task_status.started()`` is a start
  error.
* Children stop right to left, one at a time, each with its shutdown grace (SIMPLE_ONE_FOR_ONE
  children stop concurrently), whatever ended the supervisor: normal exit, an error in its block,
  outer cancellation or KeyboardInterrupt, none of which is swallowed.
* Restart intensity is counted per supervisor on a sliding window of ``trio.current_time()`` (so
  ``MockClock`` drives it), checked before each restart attempt. A supervisor that gives up stops
  its children and raises :class:`RestartIntensityExceeded`, never wrapped in an ExceptionGroup.
* An actor handles one message at a time, in arrival order. Its ref stays valid across restarts;
  calls pending on a dead incarnation fail with :class:`ActorStopped`.

Caveats: Trio cancellation is cooperative. A child blocked in a worker thread, or shielding itself,
cannot be stopped before it reaches a checkpoint, so BRUTAL_KILL is best effort, and start-up
(before ``started()``) blocks the supervisor, as in OTP. OTP's gotcha holds: a TRANSIENT child
supervisor that gives up exits with reason ``shutdown`` and is not restarted by its parent.
"""

from __future__ import annotations

from ._actor import DEFAULT_CALL_TIMEOUT, Actor, ActorRef, actor_spec, serve_actor
from ._intensity import RestartIntensity
from ._run import Exit, ExitKind, cleanup_scope
from ._spec import (
    BRUTAL_KILL,
    DEFAULT_WORKER_SHUTDOWN,
    IGNORE,
    INFINITY,
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    ShutdownTime,
    Strategy,
)
from ._supervisor import (
    ChildHandle,
    Supervisor,
    nested_supervisor,
    open_supervisor,
    serve_supervisor,
    supervisor_spec,
)
from ._tree import ChildCount, ChildInfo, ChildNode, ChildState, SupervisorTree
from .errors import (
    ActorStopped,
    AlreadyPresent,
    AlreadyStarted,
    CallTimeout,
    ChildNotFound,
    ChildNotRunning,
    ChildRunning,
    Crashed,
    MailboxFull,
    RestartIntensityExceeded,
    Shutdown,
    SimpleOneForOneError,
    StartError,
    SupervisionError,
    SupervisorStopped,
)

__all__ = [
    "BRUTAL_KILL",
    "DEFAULT_CALL_TIMEOUT",
    "DEFAULT_WORKER_SHUTDOWN",
    "IGNORE",
    "INFINITY",
    "Actor",
    "ActorRef",
    "ActorStopped",
    "AlreadyPresent",
    "AlreadyStarted",
    "AutoShutdown",
    "CallTimeout",
    "ChildCount",
    "ChildHandle",
    "ChildInfo",
    "ChildNode",
    "ChildNotFound",
    "ChildNotRunning",
    "ChildRunning",
    "ChildSpec",
    "ChildState",
    "ChildType",
    "Crashed",
    "Exit",
    "ExitKind",
    "MailboxFull",
    "Restart",
    "RestartIntensity",
    "RestartIntensityExceeded",
    "Shutdown",
    "ShutdownTime",
    "SimpleOneForOneError",
    "StartError",
    "Strategy",
    "SupervisionError",
    "Supervisor",
    "SupervisorStopped",
    "SupervisorTree",
    "actor_spec",
    "cleanup_scope",
    "nested_supervisor",
    "open_supervisor",
    "serve_actor",
    "serve_supervisor",
    "supervisor_spec",
]

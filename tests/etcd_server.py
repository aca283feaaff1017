"""A real etcd for tests: one member on 127.0.0.1, two free ports, a temporary data directory.

Usage, from any test directory (pytest's importlib mode makes ``tests`` importable)::

    from tests.etcd_server import EtcdServer, open_etcd_server

    async with open_etcd_server(tmp_path) as server:
        ...  # server.endpoint == "127.0.0.1:<port>"

or ask for the ``etcd_server`` fixture (tests/conftest.py), which wraps exactly that.

Readiness is event-driven, not polled: etcd's log goes through a pipe that a task of ours reads,
and the server counts as up when etcd logs that it serves client traffic (it logs that once raft
has a leader and the member is published, after the client port is listening). Every wait
is bounded with ``trio.fail_after`` and fails with etcd's last log lines. The process is only
ever signalled by its own PID: :meth:`EtcdServer.kill` sends SIGKILL, leaving the block sends
SIGTERM and then SIGKILL if etcd has not exited within :data:`STOP_GRACE` seconds. Should the
test process itself die, the kernel kills etcd too (``PR_SET_PDEATHSIG``).

Why etcd is forked from the Trio thread itself and not with ``trio.lowlevel.open_process``: the
kernel sends the parent-death signal when the *thread* that forked the child exits, not the
process. ``open_process`` forks in one of Trio's cached worker threads, and Trio ends a worker
thread after 10 s idle, so etcd was SIGKILLed about 10 s after it started, in the middle of
whatever test or benchmark was using it ("the connection to etcd broke: Connection lost"). The
Trio thread lives as long as the test process, which is what the death signal is meant to follow.
"""

from __future__ import annotations

import collections
import ctypes
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

__all__ = ["READY_TIMEOUT", "STOP_GRACE", "EtcdServer", "free_ports", "open_etcd_server"]

READY_TIMEOUT = 30.0
"""Seconds etcd may take to start (or restart) and say it serves clients."""

STOP_GRACE = 10.0
"""Seconds etcd may take to exit after SIGTERM before it gets SIGKILL."""

# What etcd 3.4 logs once it serves clients: with --logger=zap, and with the older capnslog.
_READY = (b"serving client traffic", b"ready to serve client requests")
_LOG_LINES = 40  # lines of etcd's log kept for error messages
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGKILL etcd if the test process dies without stopping it.

    The signal follows the thread that forked the child (see the module docstring); ``parent``
    closes the race of a parent that died before the ``prctl``.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


class _Child:
    """etcd's process, forked from the Trio thread: the parts of ``trio.Process`` used here.

    Attributes:
        stderr: the read end of etcd's stderr pipe.
    """

    def __init__(self, popen: subprocess.Popen[bytes], stderr: trio.lowlevel.FdStream) -> None:
        self._popen = popen
        self.stderr = stderr

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once etcd has exited (and is reaped), else None."""
        return self._popen.poll()

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal etcd by its PID (nothing once it has been reaped: the PID may be reused)."""
        self._popen.send_signal(sig)

    async def wait(self) -> int:
        """Wait until etcd has exited (a pidfd, no polling); its exit status."""
        while (code := self._popen.poll()) is None:
            pidfd = os.pidfd_open(self._popen.pid)  # one per waiter: waits may overlap
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                trio.lowlevel.notify_closing(pidfd)
                os.close(pidfd)
        return code


def _spawn(command: list[str], env: dict[str, str]) -> _Child:
    """Fork and exec ``command`` from the calling (Trio) thread, its stderr into a pipe."""
    read_end, write_end = os.pipe()
    try:
        # Blocking, in the Trio thread, on purpose: the death signal follows this thread.
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=write_end,
            env=env,
            preexec_fn=partial(_die_with_parent, os.getpid()),
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return _Child(popen, trio.lowlevel.FdStream(read_end))


class EtcdServer:
    """One etcd process (and its restarts) with fixed ports and data directory.

    Attributes:
        endpoint: ``127.0.0.1:<client port>``, as :func:`trionsm.transport.open_etcd` takes it.
        client_port, peer_port: the two ports etcd listens on.
        data_dir: etcd's data directory (kept across :meth:`restart`).
        name: the member's ``--name``.
        pid: the running process's PID, or None when etcd is not running.
    """

    def __init__(self, nursery: trio.Nursery, directory: Path, name: str = "trionsm-test") -> None:
        self._nursery = nursery
        self.client_port, self.peer_port = free_ports(2)
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.data_dir = directory / "etcd-data"
        self.name = name
        self._process: _Child | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._serving = False

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def _command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            "etcd",
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{self.name}={peer}",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]

    async def start(self) -> None:
        """Start etcd and wait until it serves clients (bounded by :data:`READY_TIMEOUT`)."""
        if self.pid is not None:
            raise RuntimeError(f"etcd is already running as PID {self.pid}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        process = _spawn(self._command(), env)
        await trio.lowlevel.checkpoint()
        self._process = process
        ready = trio.Event()  # set on etcd's "ready" line, or when its log ends (it exited)
        self._nursery.start_soon(self._read_log, process, ready)
        try:
            try:
                with trio.fail_after(READY_TIMEOUT):
                    await ready.wait()
            except trio.TooSlowError:
                raise RuntimeError(
                    f"etcd was not ready within {READY_TIMEOUT} s:\n{self.log_tail()}"
                ) from None
            if process.returncode is not None or not self._serving:
                raise RuntimeError(f"etcd exited before it was ready:\n{self.log_tail()}")
        except BaseException:
            await self._stop(process)
            raise

    async def _read_log(self, process: _Child, ready: trio.Event) -> None:
        self._serving = False
        pending = b""
        try:
            async with process.stderr:
                async for chunk in process.stderr:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._log.append(line.decode(errors="replace"))
                        if any(marker in line for marker in _READY):
                            self._serving = True
                            ready.set()
        finally:
            ready.set()

    def log_tail(self) -> str:
        """etcd's last log lines (for failure messages)."""
        return "\n".join(self._log)

    async def kill(self) -> None:
        """SIGKILL etcd by its PID and wait until it is gone (no-op if it is not running)."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        with trio.fail_after(STOP_GRACE):
            await process.wait()

    async def stop(self) -> None:
        """SIGTERM etcd by its PID; SIGKILL after :data:`STOP_GRACE` seconds (no-op if stopped)."""
        if self._process is not None:
            await self._stop(self._process)

    async def restart(self) -> None:
        """Stop etcd if it runs, then start it again on the same ports and data directory."""
        await self.stop()
        await self.start()

    async def _stop(self, process: _Child) -> None:
        with trio.CancelScope(shield=True):
            if process.returncode is not None:
                return
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
                return
            process.send_signal(signal.SIGKILL)
            with trio.fail_after(STOP_GRACE):
                await process.wait()


@asynccontextmanager
async def open_etcd_server(
    directory: Path, name: str = "trionsm-test"
) -> AsyncIterator[EtcdServer]:
    """A started :class:`EtcdServer` using ``directory`` for its data; stopped on exit.

    Skips the test when no ``etcd`` binary is installed (under CI a skip is a failure).
    """
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    async with trio.open_nursery() as nursery:
        server = EtcdServer(nursery, directory, name)
        try:
            await server.start()
            yield server
        finally:
            await server.stop()

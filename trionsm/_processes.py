"""A process-level mesh builder: every role a real ``python -m trionsm.cli`` process.

The process topology of DESIGN §7 on one host: each role (registry, nsmgr, forwarder,
endpoint, NSC) runs as its own process, serving NSM's gRPC API on a unix socket in a temporary
directory of the mesh, so heal tests can SIGKILL a process, restart it on the same socket and
watch the path heal through real sockets and a real clock.

With ``kernel=True`` the forwarders program KERNEL wires (``--mechanism kernel --mechanism
noop``; the mesh's process must have CAP_NET_ADMIN, i.e. be root) and the workloads' interfaces
live in network namespaces the mesh makes with :meth:`ProcessMesh.add_netns`
(``tnsm-<random>``, deleted by their exact names when the mesh exits, or at once with
:meth:`ProcessMesh.remove_netns`, as when a pod dies): ``add_endpoint(..., netns=url)`` serves an
ICMP responder whose ends of the wires go into that namespace, ``add_nsc(..., netns=url)`` a
client whose interface goes into its namespace. Without it the forwarders program NOOP only.

>>> async with open_process_mesh() as mesh:                       # doctest: +SKIP
...     await mesh.add_nsmgr("nsmgr-0")                              # embedded registry
...     await mesh.add_forwarder("forwarder-0", nsmgr="nsmgr-0")
...     await mesh.add_endpoint("nse-1", "icmp", nsmgr="nsmgr-0", cidr="169.254.1.0/24")
...     async with open_connection("noop://icmp/nsm-1", nsmgr=mesh.url("nsmgr-0")) as conn:
...         await mesh.kill("forwarder-0")                           # SIGKILL: no cleanup
...         await mesh.restart("forwarder-0")                        # same socket path
...         await conn.wait_for(EventKind.HEALED)
>>> mesh.leaks()                                                   # doctest: +SKIP
[]
>>> async with open_process_mesh(kernel=True) as mesh:             # doctest: +SKIP
...     pod, nse_pod = await mesh.add_netns(), await mesh.add_netns()
...     await mesh.add_nsmgr("nsmgr-0")
...     await mesh.add_forwarder("forwarder-0", nsmgr="nsmgr-0")
...     await mesh.add_endpoint("nse-1", "icmp", nsmgr="nsmgr-0", cidr="169.254.1.0/24",
...                             netns=nse_pod)
...     await mesh.add_nsc("nsc-1", "kernel://icmp/nsm-1", nsmgr="nsmgr-0", netns=pod)
...     # nsm-1 in pod pings 169.254.1.0 in nse_pod; mesh.stop("nsc-1") removes the wire

Guarantees. A role is started with :meth:`ProcessMesh.start` (or an ``add_*`` helper) and is
ready once it printed its ``serving URL`` lines (``connected`` for an NSC); a process that exits
first raises :class:`~trionsm.errors.FailedPrecondition` with its exit status and stderr, one
that takes longer than ``start_timeout`` raises :class:`~trionsm.errors.DeadlineExceeded` (and
is killed). Every process is tracked by its exact PID, signalled only while it has not been
reaped, and reaped. Leaving the block stops every running process with SIGTERM (SIGKILL after
``stop_grace``), removes exactly the socket files the mesh handed out (a SIGKILLed process
leaves its socket behind) and the directory, even when the block is cancelled. NSCs stop
first (closing their connections through the whole path), then the other roles; then the
interfaces carrying a ``trionsm:`` alias in the mesh's namespaces are listed (any is a leak) and
the namespaces deleted. :meth:`ProcessMesh.leaks` then lists anything left: an unreaped process,
a path that still exists, a SIGTERM that did not end in exit status 0, a role that left its
socket after a clean stop, a wire left in a namespace, a namespace that still exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from trionsm._namespaces import (
    delete_namespaces,
    delete_netns,
    make_netns,
    netns_exists,
    netns_name,
    netns_url,
    remaining,
)
from trionsm.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument

__all__ = [
    "ProcessMesh",
    "RoleProcess",
    "aliased_links",
    "delete_netns",
    "links",
    "make_netns",
    "open_process_mesh",
]

CLI = (sys.executable, "-m", "trionsm.cli")
DEFAULT_START_TIMEOUT = 30.0
"""Seconds a role may take to print that it is ready (normally about one)."""
DEFAULT_STOP_GRACE = 10.0
"""Seconds a role may take to stop after SIGTERM before it gets SIGKILL."""
_STDERR_KEPT = 16_384
_ALIAS_PREFIX = "trionsm:"  # every interface the data plane makes carries it (kernel package)


@attrs.define(eq=False)
class _Output:
    """What one process printed: its stdout lines, the tail of its stderr, whether it closed."""

    lines: list[str] = attrs.field(factory=list)
    stderr: str = ""
    eof: bool = False
    stderr_eof: bool = False
    changed: trio.Event = attrs.field(factory=trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


@attrs.define(eq=False)
class RoleProcess:
    """One role of the mesh and its current process (a restart keeps the role, not the PID).

    Attributes:
        name: the role's name; args: its ``trionsm`` command line (without ``python -m``);
        sockets: the unix socket paths it serves on; ready: the stdout prefix saying it is
        ready; urls: what it printed after ``ready`` (its bound URLs); process: the current
        process (None before the first start); pids: every PID it had, in order; returncodes:
        the exit status of each process that ended (-9 after SIGKILL); netns: the named network
        namespace it runs in (``ip netns exec``, which execs: the PID is the role's), None: ours.
    """

    name: str
    args: list[str]
    sockets: list[Path]
    ready: str = "serving "
    netns: str | None = None
    urls: list[str] = attrs.field(factory=list)
    process: trio.Process | None = None
    pids: list[int] = attrs.field(factory=list)
    returncodes: list[int] = attrs.field(factory=list)
    output: _Output = attrs.field(factory=_Output)

    @property
    def running(self) -> bool:
        """Whether the current process has not been reaped yet."""
        return self.process is not None and self.process.returncode is None

    @property
    def url(self) -> str:
        """The first URL it serves."""
        if not self.urls:
            raise FailedPrecondition("not started yet", hop=self.name)
        return self.urls[0]

    @property
    def lines(self) -> list[str]:
        """The current process's stdout lines so far."""
        return self.output.lines

    @property
    def stderr(self) -> str:
        """The tail of the current process's stderr."""
        return self.output.stderr

    async def wait_line(self, prefix: str, count: int = 1) -> str:
        """The ``count``-th stdout line of the current process starting with ``prefix``.

        Raises:
            FailedPrecondition: the process closed its stdout (exited) before printing it.
        """
        output, process, seen = self.output, self.process, 0
        while True:
            for line in output.lines[seen:]:
                seen += 1
                if line.startswith(prefix):
                    count -= 1
                    if count == 0:
                        return line
            if output.eof and output.stderr_eof:  # (so the message has all of stderr)
                status = None
                if process is not None:
                    # Its pipes closed: it is exiting. Reap it so the status is known.
                    with trio.move_on_after(5):
                        status = await process.wait()
                raise FailedPrecondition(
                    f"exited (status {status}) before printing {prefix!r}: "
                    f"stderr: {output.stderr[-2000:].strip() or '(empty)'}",
                    hop=self.name,
                )
            await output.changed.wait()


async def _read_stdout(output: _Output, stream: trio.abc.ReceiveStream) -> None:
    buffer = b""
    async with stream:
        while chunk := await stream.receive_some():
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            output.lines += [line.decode(errors="replace") for line in complete]
            output.notify()
    if buffer:
        output.lines.append(buffer.decode(errors="replace"))
    output.eof = True
    output.notify()


async def _read_stderr(output: _Output, stream: trio.abc.ReceiveStream) -> None:
    async with stream:
        while chunk := await stream.receive_some():
            output.stderr = (output.stderr + chunk.decode(errors="replace"))[-_STDERR_KEPT:]
    output.stderr_eof = True
    output.notify()


def _pin_listen(args: Sequence[str], urls: Sequence[str]) -> list[str]:
    """``args`` with each ``--listen`` value replaced by the URL it bound (``tcp://...:0``)."""
    pinned, served = list(args), iter(urls)
    for index, arg in enumerate(pinned[:-1]):
        if arg == "--listen":
            pinned[index + 1] = next(served, pinned[index + 1])
    return pinned


class ProcessMesh:
    """A running process mesh (see :func:`open_process_mesh`)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        directory: Path,
        *,
        start_timeout: float,
        stop_grace: float,
        kernel: bool = False,
        namespaces: list[str] | None = None,
    ) -> None:
        self._nursery = nursery
        self.directory = directory
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.kernel = kernel
        self.roles: dict[str, RoleProcess] = {}
        self.unclean: list[str] = []  # what a stop or the teardown found wrong
        self.namespaces: list[str] = namespaces if namespaces is not None else []
        """The names of the namespaces :meth:`add_netns` made (deleted when the mesh exits)."""

    def __getitem__(self, name: str) -> RoleProcess:
        return self.roles[name]

    def socket(self, name: str) -> Path:
        """The unix socket path of role ``name`` in the mesh's directory."""
        return self.directory / f"{name}.sock"

    def url(self, name: str) -> str:
        """The first URL role ``name`` serves (its unix socket)."""
        return self.roles[name].url

    # -- processes -------------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        sockets: Sequence[Path] = (),
        ready: str = "serving ",
        netns: str | None = None,
    ) -> RoleProcess:
        """Start role ``name`` as ``python -m trionsm.cli <args>``; wait until it is ready.

        Ready means one line starting with ``ready`` per ``--listen`` in ``args`` (at least one).
        ``netns``: run it inside that named namespace (``/run/netns/<netns>``); a restart too.

        Raises:
            InvalidArgument: the name is taken by a running role.
            FailedPrecondition: it exited before it was ready.
            DeadlineExceeded: not ready within ``start_timeout`` (it is killed).
        """
        role = self.roles.get(name)
        if role is not None and role.running:
            raise InvalidArgument(f"role {name!r} is running", hop="process mesh")
        if role is None:
            role = RoleProcess(name, list(args), list(sockets), ready=ready, netns=netns)
            self.roles[name] = role
        await self._spawn(role)
        return role

    async def _spawn(self, role: RoleProcess) -> None:
        role.output = _Output()
        inside = ["ip", "netns", "exec", role.netns] if role.netns else []
        process = await trio.lowlevel.open_process(
            [*inside, *CLI, *role.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        role.process = process
        role.pids.append(process.pid)
        assert process.stdout is not None
        assert process.stderr is not None
        self._nursery.start_soon(_read_stdout, role.output, process.stdout)
        self._nursery.start_soon(_read_stderr, role.output, process.stderr)
        expected = max(1, role.args.count("--listen")) if role.ready == "serving " else 1
        try:
            with trio.fail_after(self.start_timeout):
                lines = [await role.wait_line(role.ready, n + 1) for n in range(expected)]
        except trio.TooSlowError:
            await self._end(role, signal.SIGKILL)
            raise DeadlineExceeded(
                f"not ready within {self.start_timeout:g}s; stderr: {role.stderr[-2000:]}",
                hop=role.name,
            ) from None
        except FailedPrecondition:
            await self._end(role, signal.SIGKILL)
            raise
        role.urls = [line.removeprefix(role.ready).strip() for line in lines]
        if role.ready == "serving ":
            role.args = _pin_listen(role.args, role.urls)

    async def _end(self, role: RoleProcess, signum: signal.Signals) -> int:
        """Signal the current process (by its own PID, while unreaped) and reap it."""
        process = role.process
        assert process is not None
        if process.returncode is None:
            process.send_signal(signum)  # trio/subprocess never signal a reaped PID
            with trio.move_on_after(self.stop_grace):
                await process.wait()
            if process.returncode is None:
                self.unclean.append(f"{role.name}: pid {process.pid} ignored {signum.name}")
                process.kill()
                await process.wait()
        assert process.returncode is not None
        role.returncodes.append(process.returncode)
        return process.returncode

    async def kill(self, name: str) -> int:
        """SIGKILL role ``name`` (a crash: it unregisters nothing, leaves its socket); reaped."""
        return await self._end(self.roles[name], signal.SIGKILL)

    async def stop(self, name: str) -> int:
        """SIGTERM role ``name`` and reap it; its exit status (0 after a clean stop).

        A non-zero status, or a socket left behind, is recorded in :attr:`unclean`.
        """
        role = self.roles[name]
        status = await self._end(role, signal.SIGTERM)
        if status != 0:
            self.unclean.append(f"{name}: exit status {status} after SIGTERM: {role.stderr[-500:]}")
        self.unclean += [
            f"{name}: left {path} after SIGTERM" for path in role.sockets if path.exists()
        ]
        return status

    async def restart(self, name: str) -> RoleProcess:
        """Start role ``name`` again with its arguments and URLs (SIGKILL it first if running)."""
        role = self.roles[name]
        if role.running:
            await self.kill(name)
        await self._spawn(role)
        return role

    async def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run ``trionsm <args>`` to completion (e.g. ``nsc --once``); stdout/stderr captured.

        Bound it with ``trio.fail_after``: cancelled, the process is terminated and reaped.
        """
        return await trio.run_process(
            [*CLI, *args], capture_stdout=True, capture_stderr=True, check=False
        )

    # -- roles -----------------------------------------------------------------------------------

    async def add_registry(self, name: str = "registry") -> RoleProcess:
        """A registry (memory store) on ``<dir>/<name>.sock``."""
        sock = self.socket(name)
        args = ["registry", "--name", name, "--listen", f"unix://{sock}"]
        return await self.start(name, args, sockets=[sock])

    async def add_nsmgr(
        self, name: str, *, registry: str | None = None, tcp: bool = False
    ) -> RoleProcess:
        """An nsmgr on ``<dir>/<name>.sock``.

        Args:
            registry: the registry role's name; None: the nsmgr's embedded registry.
            tcp: also listen on ``tcp://127.0.0.1:0`` and be dialed there by other nodes (its
                public URL); a restart keeps the port.
        """
        sock = self.socket(name)
        args = ["nsmgr", "--name", name, "--listen", f"unix://{sock}"]
        if tcp:
            args += ["--listen", "tcp://127.0.0.1:0"]
        if registry is not None:
            args += ["--registry", self.url(registry)]
        return await self.start(name, args, sockets=[sock])

    async def add_forwarder(self, name: str, *, nsmgr: str) -> RoleProcess:
        """A forwarder on ``<dir>/<name>.sock``, registered at role ``nsmgr``; it programs
        KERNEL and NOOP in a ``kernel=True`` mesh, NOOP only otherwise."""
        sock = self.socket(name)
        args = ["forwarder", "--name", name, "--listen", f"unix://{sock}"]
        args += ["--mechanism", "kernel"] if self.kernel else []
        args += ["--mechanism", "noop", "--nsmgr", self.url(nsmgr)]
        return await self.start(name, args, sockets=[sock])

    async def add_endpoint(
        self,
        name: str,
        services: str | Sequence[str],
        *,
        nsmgr: str,
        cidr: str | Sequence[str],
        labels: dict[str, str] | None = None,
        netns: str | None = None,
        mtu: int | None = None,
    ) -> RoleProcess:
        """An endpoint on ``<dir>/<name>.sock`` serving ``services``, registered at ``nsmgr``.

        Args:
            cidr: its address pool(s) (an IPv4 and an IPv6 one: dual-stack pairs).
            netns: the namespace its ends of KERNEL wires go into (an ICMP responder).
            mtu: the MTU its ends ask for.
        """
        sock = self.socket(name)
        args = ["nse", "--name", name, "--listen", f"unix://{sock}", "--nsmgr", self.url(nsmgr)]
        for service in [services] if isinstance(services, str) else services:
            args += ["--service", service]
        for pool in [cidr] if isinstance(cidr, str) else cidr:
            args += ["--cidr", pool]
        if labels:
            args += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
        args += _optional(netns=netns, mtu=mtu)
        return await self.start(name, args, sockets=[sock])

    async def add_nsc(
        self,
        name: str,
        url: str,
        *,
        nsmgr: str,
        json: bool = False,
        netns: str | None = None,
        mtu: int | None = None,
        liveness_interval: str | None = None,
        liveness_timeout: str | None = None,
    ) -> RoleProcess:
        """A ``trionsm nsc`` process connected to ``url`` through ``nsmgr`` (ready: connected).

        ``netns``, ``mtu`` and the liveness durations (``"200ms"``) are its kernel:// flags.
        """
        args = ["nsc", url, "--nsmgr", self.url(nsmgr), "--name", name]
        args += _optional(
            netns=netns,
            mtu=mtu,
            liveness_interval=liveness_interval,
            liveness_timeout=liveness_timeout,
        )
        return await self.start(
            name,
            [*args, "--json"] if json else args,
            ready='{"event": "connected"' if json else "connected ",
        )

    # -- namespaces ------------------------------------------------------------------------------

    async def add_netns(self, prefix: str = "tnsm-") -> str:
        """A new network namespace ``<prefix><random>``; returns its ``file:///run/netns/`` URL.

        The mesh deletes it by its exact name when it exits.
        """
        return netns_url(await make_netns(prefix, into=self.namespaces))

    async def remove_netns(self, url: str) -> None:
        """Delete one of the mesh's namespaces now (``file:///run/netns/<name>``), as when a pod
        dies: its interfaces go, and the veth peers of those. Idempotent.

        Raises:
            InvalidArgument: not a namespace this mesh made.
        """
        name = netns_name(url)
        if name not in self.namespaces:
            raise InvalidArgument(f"{url!r} is not a namespace of this mesh", hop="process mesh")
        await delete_netns(name)

    async def wires(self) -> list[str]:
        """The interfaces carrying a ``trionsm:`` alias in the mesh's namespaces that exist, as
        ``<namespace>: <interface> <alias>``."""
        found = []
        for name in self.namespaces:
            if netns_exists(name):  # checked just before its turn: a pod may die meanwhile
                found += [f"{name}: {link}" for link in await aliased_links(name)]
        return found

    # -- teardown --------------------------------------------------------------------------------

    async def _teardown(self) -> None:
        clients = [role for role in self.roles.values() if role.args[0] == "nsc"]
        for group in (clients, [role for role in self.roles.values() if role not in clients]):
            async with trio.open_nursery() as nursery:
                for role in group:
                    if role.running:
                        nursery.start_soon(self.stop, role.name)
        self._remove_paths()
        self.unclean += [f"left behind: {wire}" for wire in await self.wires()]
        await delete_namespaces(self.namespaces)

    def _remove_paths(self) -> None:
        """Remove the sockets SIGKILLed roles left (exact paths), the empty directories of the
        mesh's that held them (one per node), then the directory."""
        parents = set()
        for role in self.roles.values():
            for path in role.sockets:
                if path.is_socket():
                    path.unlink()
                parents.add(path.parent)
        for parent in sorted(parents, key=lambda path: len(path.parts), reverse=True):
            if parent.is_relative_to(self.directory) and parent != self.directory:
                with contextlib.suppress(OSError):  # not empty: reported as unexpected below
                    parent.rmdir()
        if self.directory.exists():
            strays = sorted(entry.name for entry in self.directory.iterdir())
            if strays:
                self.unclean.append(f"{self.directory}: unexpected files {strays}")
                shutil.rmtree(self.directory)
            else:
                self.directory.rmdir()

    def leaks(self) -> list[str]:
        """What is left: unreaped processes, paths that exist, and :attr:`unclean` findings."""
        found = list(self.unclean)
        for role in self.roles.values():
            if role.running:
                assert role.process is not None
                found.append(f"{role.name}: pid {role.process.pid} not reaped")
            found += [
                f"{role.name}: pid {pid} is still our child" for pid in role.pids if _child(pid)
            ]
            found += [f"{role.name}: {path} exists" for path in role.sockets if path.exists()]
        if self.directory.exists():
            found.append(f"{self.directory} exists")
        found += [f"namespace {name} exists" for name in remaining(self.namespaces)]
        return found


@asynccontextmanager
async def open_process_mesh(
    *,
    kernel: bool = False,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    stop_grace: float = DEFAULT_STOP_GRACE,
) -> AsyncIterator[ProcessMesh]:
    """An empty process mesh in a fresh temporary directory; torn down when the block exits.

    The directory name is short (``/tmp/trionsm-XXXX``), since a unix socket path has at most
    107 bytes. Teardown is shielded from cancellation and bounded by ``stop_grace``.

    Args:
        kernel: forwarders program KERNEL wires too (see the module docstring).
    """
    directory = Path(tempfile.mkdtemp(prefix="trionsm-"))
    namespaces: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            mesh = ProcessMesh(
                nursery,
                directory,
                start_timeout=start_timeout,
                stop_grace=stop_grace,
                kernel=kernel,
                namespaces=namespaces,
            )
            try:
                yield mesh
            finally:
                with trio.CancelScope(shield=True):
                    await mesh._teardown()
    finally:
        _remove_tree(directory)  # the nursery failed before the mesh existed
        await delete_namespaces(namespaces)


async def links(netns: str | None) -> list[dict[str, object]]:
    """The links of namespace ``netns`` (None: this process's own) as ``ip -j link show``
    gives them (``ifname``, ``ifindex``, ``ifalias``...).

    Raises:
        subprocess.CalledProcessError: ``ip`` failed (the namespace is gone, say).
    """
    inside = ["-n", netns] if netns is not None else []
    done = await trio.run_process(
        ["ip", "-j", *inside, "link", "show"], capture_stdout=True, capture_stderr=True
    )
    found: list[dict[str, object]] = json.loads(done.stdout or b"[]")
    return found


async def aliased_links(netns: str | None, owners: Sequence[str] | None = None) -> list[str]:
    """``<interface> <alias>`` of each link with a ``trionsm:`` alias in namespace ``netns``
    (None: this process's own), only those of forwarders ``owners`` when given."""
    wanted = (
        tuple(f"{_ALIAS_PREFIX}{owner}:" for owner in owners)
        if owners is not None
        else _ALIAS_PREFIX
    )
    return [
        f"{link['ifname']} {link['ifalias']}"
        for link in await links(netns)
        if str(link.get("ifalias", "")).startswith(wanted)
    ]


def _optional(**flags: object) -> list[str]:
    """``--flag value`` for each flag that is not None (``liveness_interval`` ->
    ``--liveness-interval``)."""
    args: list[str] = []
    for key, value in flags.items():
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _child(pid: int) -> bool:
    """Whether ``pid`` is (still) a child of this process, running or a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rpartition(")")[2].split()[1]) == os.getpid()


def _remove_tree(directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)

"""The mesh as real processes: every role a ``python -m trionsm.cli`` process on a unix socket.

Real gRPC over unix sockets (and TCP between nodes), the real clock, faults injected by signals
to exact PIDs (SIGKILL: a crash; SIGTERM: a clean stop). Waits are on output lines and
connection events, each bounded generously by ``trio.fail_after`` (a hang guard, not a
benchmark). Every test ends with ``mesh.leaks() == []``: every process reaped, every SIGTERM
answered by exit status 0 with the role's socket removed, the mesh's directory gone.

The NSC runs in the test process (``open_connection``) unless the test is about ``trionsm nsc``.
"""

from __future__ import annotations

import sys
from functools import partial

import pytest
import trio

from trionsm.actors.client import ClientConnection, EventKind, open_connection
from trionsm.errors import FailedPrecondition
from trionsm.scenario import ProcessMesh, open_process_mesh

BOUND = 60.0
"""Seconds any one step may take (processes start in about one; a heal takes a few)."""
CIDR = "169.254.100.0/24"


def names(conn: ClientConnection) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.path is not None
    return [segment.name for segment in conn.connection.path.path_segments]


def ids(conn: ClientConnection) -> list[str]:
    assert conn.connection is not None
    assert conn.connection.path is not None
    return [segment.id for segment in conn.connection.path.path_segments]


def addresses(conn: ClientConnection) -> tuple[list[str], list[str]]:
    assert conn.connection is not None
    assert conn.connection.context is not None
    ip = conn.connection.context.ip_context
    assert ip is not None
    return list(ip.src_ip_addrs), list(ip.dst_ip_addrs)


async def local_node(mesh: ProcessMesh, endpoint: str = "nse-1") -> None:
    """nsmgr-0 (embedded registry), forwarder-0 and an endpoint serving ``svc``."""
    await mesh.add_nsmgr("nsmgr-0")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(mesh.add_forwarder, "forwarder-0", nsmgr="nsmgr-0"))
        nursery.start_soon(partial(mesh.add_endpoint, endpoint, "svc", nsmgr="nsmgr-0", cidr=CIDR))


async def stop_all(mesh: ProcessMesh, *roles: str) -> None:
    """SIGTERM each role in turn: exit status 0 and its socket removed."""
    for role in roles:
        assert await mesh.stop(role) == 0, mesh[role].stderr
        assert not mesh.socket(role).exists()


# -- use cases -----------------------------------------------------------------------------------


async def test_local_use_case() -> None:
    """NSC -> nsmgr -> forwarder -> NSE: a path of 4 over three processes."""
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            await local_node(mesh)
            async with open_connection("noop://svc/nsm-1", nsmgr=mesh.url("nsmgr-0")) as conn:
                assert names(conn)[1:] == ["nsmgr-0", "forwarder-0", "nse-1"]
                assert addresses(conn) == (["169.254.100.1/32"], ["169.254.100.0/32"])
            assert conn.history[-1].kind is EventKind.CLOSED
            # A second nsmgr on the same socket cannot start: exit status 1, a clear reason.
            with pytest.raises(FailedPrecondition) as refused:
                await mesh.start("dup", ["nsmgr", "--name", "dup", "--listen", mesh.url("nsmgr-0")])
            assert "status 1" in str(refused.value)
            assert "trionsm nsmgr: cannot start: " in str(refused.value)
            assert "in use" in str(refused.value)
            await stop_all(mesh, "nse-1", "forwarder-0", "nsmgr-0")
        assert mesh.leaks() == []


async def test_remote_use_case() -> None:
    """Two nodes (nsmgrs on unix + TCP) and a registry process: a path of 6."""
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            await mesh.add_registry()
            async with trio.open_nursery() as nursery:
                for node in (0, 1):
                    start = partial(mesh.add_nsmgr, f"nsmgr-{node}", registry="registry", tcp=True)
                    nursery.start_soon(start)
            assert mesh["nsmgr-1"].urls[1].startswith("tcp://127.0.0.1:")
            async with trio.open_nursery() as nursery:
                for node in (0, 1):
                    start = partial(mesh.add_forwarder, f"forwarder-{node}", nsmgr=f"nsmgr-{node}")
                    nursery.start_soon(start)
                start = partial(mesh.add_endpoint, "nse-1", "svc", nsmgr="nsmgr-1", cidr=CIDR)
                nursery.start_soon(start)
            async with open_connection("noop://svc/nsm-1", nsmgr=mesh.url("nsmgr-0")) as conn:
                assert names(conn)[1:] == [
                    "nsmgr-0",
                    "forwarder-0",
                    "nsmgr-1",
                    "forwarder-1",
                    "nse-1",
                ]
                assert addresses(conn) == (["169.254.100.1/32"], ["169.254.100.0/32"])
            await stop_all(mesh, "nse-1", "forwarder-1", "forwarder-0", "nsmgr-1", "nsmgr-0")
            await stop_all(mesh, "registry")
        assert mesh.leaks() == []


# -- heal ----------------------------------------------------------------------------------------


async def test_heal_after_the_endpoint_process_is_killed() -> None:
    """SIGKILL the NSE (it stays registered until expiry): both clients, the one in this
    process and a ``trionsm nsc`` process, heal onto a second NSE."""
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            await local_node(mesh)
            nsc = await mesh.add_nsc("nsc-p", "noop://svc/nsm-1", nsmgr="nsmgr-0")
            assert nsc.lines[0].startswith("connected nse-1 src=169.254.100")
            async with open_connection("noop://svc/nsm-1", nsmgr=mesh.url("nsmgr-0")) as conn:
                first = ids(conn)[0]
                assert await mesh.kill("nse-1") == -9
                await mesh.add_endpoint("nse-2", "svc", nsmgr="nsmgr-0", cidr="169.254.101.0/24")
                healed = await conn.wait_for(EventKind.HEALED)
                assert "reselected" in healed.reason
                assert names(conn)[1:] == ["nsmgr-0", "forwarder-0", "nse-2"]
                assert ids(conn)[0] == first
                line = await nsc.wait_line("healed ")
                assert line.startswith("healed nse-2 src=")
                assert "169.254.101." in line  # (with nse-1's addresses, as NSM's p2p IPAM)
            assert await mesh.stop("nsc-p") == 0
            assert nsc.lines[-1].startswith("closed nse-2 ")
            await stop_all(mesh, "nse-2", "forwarder-0", "nsmgr-0")
        assert mesh.leaks() == []


async def test_heal_after_the_forwarder_process_is_killed_and_restarted() -> None:
    """SIGKILL the only forwarder, start it again on the same socket: the path heals through
    it (its lease re-registers, the client's reselect gets through once it is back)."""
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            await local_node(mesh)
            async with open_connection("noop://svc/nsm-1", nsmgr=mesh.url("nsmgr-0")) as conn:
                assert await mesh.kill("forwarder-0") == -9
                assert mesh.socket("forwarder-0").exists()  # a crash leaves its socket
                await mesh.restart("forwarder-0")
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[1:] == ["nsmgr-0", "forwarder-0", "nse-1"]
            pids = mesh["forwarder-0"].pids
            assert len(set(pids)) == 2
            await stop_all(mesh, "nse-1", "forwarder-0", "nsmgr-0")
        assert mesh.leaks() == []


async def test_heal_after_the_nsmgr_process_is_killed_and_restarted() -> None:
    """SIGKILL the nsmgr (its embedded registry goes with it), restart it on the same socket:
    the forwarder, the NSE and its service re-register and the client's connection heals."""
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            await local_node(mesh)
            async with open_connection("noop://svc/nsm-1", nsmgr=mesh.url("nsmgr-0")) as conn:
                before = ids(conn)
                assert await mesh.kill("nsmgr-0") == -9
                await mesh.restart("nsmgr-0")
                await conn.wait_for(EventKind.HEALED)
                assert names(conn)[1:] == ["nsmgr-0", "forwarder-0", "nse-1"]
                assert ids(conn) == before  # a reselect keeps the path segment ids
            await stop_all(mesh, "nse-1", "forwarder-0", "nsmgr-0")
        assert mesh.leaks() == []


# -- the CLI contract ----------------------------------------------------------------------------

NSE = ["nse", "--name", "e", "--service", "s", "--listen", "unix:///x", "--nsmgr", "unix:///y"]
BAD_FLAGS = [
    (["nsmgr", "--name", "n", "--listen", "http://127.0.0.1:1"], "argument --listen"),
    (["nsmgr", "--name", "n", "--listen", "unix:///x", "--registry", "inode://1/2"], "--registry"),
    (["nsmgr", "--listen", "unix:///x"], "--name"),
    (["forwarder", "--name", "a b", "--listen", "unix:///x", "--nsmgr", "unix:///y"], "--name"),
    (["forwarder", "--name", "f", "--listen", "unix:///x", "--nsmgr", "ftp://y"], "--nsmgr"),
    ([*NSE, "--cidr", "169.254.1.300/24"], "argument --cidr"),
    ([*NSE, "--cidr", CIDR, "--labels", "app"], "argument --labels"),
    ([*NSE[:-2], "--cidr", CIDR], "--nsmgr"),
    (["nsc", "svc", "--nsmgr", "unix:///x"], "argument URL"),
    (["nsc", "noop://svc", "--request-timeout", "soon"], "argument --request-timeout"),
    (["nsc", "noop://svc", "--labels", "=x"], "argument --labels"),
]


async def bad_flag_failures(cases: list[tuple[list[str], str, str]]) -> list[str]:
    """Run ``trionsm <args>`` for each ``(args, flag, value)``; the cases that did not exit 2
    with both ``flag`` and ``value`` on stderr."""
    failures: list[str] = []

    async def check(args: list[str], flag: str, value: str) -> None:
        result = await trio.run_process(
            [sys.executable, "-m", "trionsm.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        stderr = result.stderr.decode()
        if result.returncode != 2 or flag not in stderr or value not in stderr:
            failures.append(f"{args}: status {result.returncode}, stderr {stderr!r}")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for args, flag, value in cases:
                nursery.start_soon(check, args, flag, value)
    return failures


async def test_bad_flags_exit_2_naming_the_flag() -> None:
    assert await bad_flag_failures([(args, flag, "") for args, flag in BAD_FLAGS]) == []


async def test_nsc_once() -> None:
    """``trionsm nsc --once`` exits 0 after connecting; for a service nobody serves it exits 1
    with the NotFound naming the service."""
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            await local_node(mesh)
            nsmgr = mesh.url("nsmgr-0")
            ok = await mesh.run("nsc", "noop://svc/nsm-1", "--nsmgr", nsmgr, "--once", "--json")
            assert ok.returncode == 0, ok.stderr
            events = ok.stdout.decode().splitlines()
            assert events[0].startswith('{"event": "connected", "endpoint": "nse-1"')
            assert events[1].startswith('{"event": "closed", "endpoint": "nse-1"')
            missing = await mesh.run(
                "nsc", "noop://missing/nsm-1", "--nsmgr", nsmgr, "--once", "--request-timeout", "2s"
            )
            assert missing.returncode == 1
            stderr = missing.stderr.decode()
            assert stderr.startswith("trionsm nsc: NotFound: ")
            assert "service 'missing'" in stderr
            assert missing.stdout == b""
            await stop_all(mesh, "nse-1", "forwarder-0", "nsmgr-0")
        assert mesh.leaks() == []

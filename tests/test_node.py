"""``trionsm node`` as a real process, with ``trionsm nse`` and ``trionsm nsc`` processes.

Real gRPC over unix sockets, the real clock, faults by signal to exact PIDs and by the admin
service's Crash. Waits are on output lines, connection events and monitor events, each bounded
generously by ``trio.fail_after`` (a hang guard, not a benchmark). Every test ends with
``mesh.leaks() == []``: every process reaped, every SIGTERM answered by exit status 0 with the
role's sockets removed, the mesh's directory gone.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import attrs
import trio

from trionsm._cli.config import load_config
from trionsm.actors.client import EventKind, open_connection
from trionsm.actors.node import serve_node
from trionsm.api.connection import ConnectionEventType, MonitorScopeSelector
from trionsm.api.trionsm.admin.v1 import CrashRequest
from trionsm.errors import DeadlineExceeded
from trionsm.scenario import ProcessMesh, RoleProcess, open_process_mesh
from trionsm.transport import open_client

BOUND = 60.0
"""Seconds any one step may take (a process starts in about one, a heal takes a few)."""
STOP_BOUND = 30.0
"""Seconds a node may take to stop after SIGTERM: its steps are bounded (Close, Unregister)."""
CIDR = "169.254.130.0/24"


async def start_node(mesh: ProcessMesh, *extra: str, name: str = "node-1") -> RoleProcess:
    """``trionsm node`` with its sockets in the mesh's directory, NOOP only, TCP on a free port."""
    directory = mesh.directory
    args = ["node", "--name", "n1", "--dir", str(directory), "--mechanism", "noop"]
    args += ["--listen", f"unix://{directory}/nsm.io.sock", "--listen", "tcp://127.0.0.1:0"]
    sockets = [directory / f"{s}.sock" for s in ("nsm.io", "forwarder", "admin")]
    return await mesh.start(name, [*args, *extra], sockets=sockets)


def admin_url(mesh: ProcessMesh) -> str:
    return f"unix://{mesh.directory}/admin.sock"


async def status(mesh: ProcessMesh) -> dict[str, Any]:
    """``trionsm status --json`` (a process) for the mesh's node."""
    done = await mesh.run("status", "--node", admin_url(mesh), "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_a_node_serves_endpoints_and_clients_and_heals_a_crashed_forwarder() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            node = await start_node(mesh)
            assert node.urls[0] == f"unix://{mesh.directory}/nsm.io.sock"
            assert node.urls[1].startswith("tcp://127.0.0.1:")
            await mesh.add_endpoint("nse-1", "svc", nsmgr="node-1", cidr=CIDR)
            once = await mesh.run("nsc", "noop://svc/nsm-1", "--nsmgr", node.url, "--once")
            assert once.returncode == 0, once.stderr
            assert once.stdout.decode().startswith("connected nse-1 src=169.254.130.")
            nsc = await mesh.add_nsc("nsc-1", "noop://svc/nsm-1", nsmgr="node-1", json=True)
            connected = json.loads(nsc.lines[0])
            assert connected["path"] == ["nsc-1", "nsmgr-n1", "forwarder-n1", "nse-1"]

            shown = await status(mesh)
            assert shown["node"] == "n1"
            top = [a["path"] for a in shown["actors"] if a["path"].count("/") == 1]
            assert top == ["node/registry", "node/nsmgr", "node/forwarder", "node/admin"]
            assert {a["status"] for a in shown["actors"]} == {"running"}
            rows = shown["connections"]
            assert [(r["role"], r["hop"]) for r in rows] == [
                ("nsmgr", "nsmgr-n1"),
                ("forwarder", "forwarder-n1"),
            ]
            for row in rows:
                assert row["path"] == connected["path"]
                assert (row["network_service"], row["state"], row["mechanism"]) == (
                    "svc",
                    "UP",
                    "NOOP",
                )
                assert row["expires"] is not None
            table = await mesh.run("status", "--node", admin_url(mesh))
            assert table.returncode == 0, table.stderr
            assert b"forwarder-n1" in table.stdout
            assert b"supervision tree" in table.stdout

            async with open_client(admin_url(mesh), default_timeout=10) as admin:
                await admin.admin.crash(CrashRequest(path="node/forwarder"))
            healed = json.loads(await nsc.wait_line('{"event": "healed"'))
            assert healed["path"] == ["nsc-1", "nsmgr-n1", "forwarder-n1", "nse-1"]
            restarted = {a["path"]: a for a in (await status(mesh))["actors"]}
            assert restarted["node/forwarder"]["restarts"] == 1
            assert "Crashed" in restarted["node/forwarder"]["last_exit"]

            assert await mesh.stop("nsc-1") == 0
            await stop(mesh, "nse-1")
            await stop(mesh, "node-1")
        assert mesh.leaks() == []


async def stop(mesh: ProcessMesh, role: str) -> None:
    with trio.fail_after(STOP_BOUND):
        assert await mesh.stop(role) == 0, mesh[role].stderr
    assert not any(path.exists() for path in mesh[role].sockets)


async def wait_deleted(url: str, ready: trio.Event, deleted: list[str]) -> None:
    """Watch the endpoint's monitor stream until a connection is deleted (its Close)."""
    async with (
        open_client(url) as client,
        client.monitor_connection.monitor_connections(MonitorScopeSelector()) as events,
    ):
        async for event in events:
            if event.type is ConnectionEventType.INITIAL_STATE_TRANSFER:
                assert len(event.connections) == 1  # the client's connection is there
                ready.set()
            elif event.type is ConnectionEventType.DELETE:
                deleted.extend(event.connections)
                return


async def test_sigterm_closes_the_connections_downstream_and_exits_0() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            node = await start_node(mesh)
            nse = await mesh.add_endpoint("nse-1", "svc", nsmgr="node-1", cidr=CIDR)
            async with open_connection("noop://svc/nsm-1", nsmgr=node.url) as conn:
                deleted: list[str] = []
                async with trio.open_nursery() as nursery:
                    ready = trio.Event()
                    nursery.start_soon(wait_deleted, nse.url, ready, deleted)
                    await ready.wait()
                    await stop(mesh, "node-1")  # exit 0, every socket of the node removed
                assert conn.connection is not None
                assert conn.connection.path is not None
                assert deleted == [conn.connection.path.path_segments[-1].id]
                await conn.wait_for(EventKind.DOWN)
                assert "stopping on SIGTERM" in mesh["node-1"].stderr
            await stop(mesh, "nse-1")
        assert mesh.leaks() == []


async def test_a_stop_past_shutdown_timeout_exits_1_naming_what_still_runs() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            # 1 s: shorter than a Close's own timeout (5 s), so the stop cannot finish in time.
            node = await start_node(mesh, "--shutdown-timeout", "1s")
            nse = await mesh.add_endpoint("nse-1", "svc", nsmgr="node-1", cidr=CIDR)
            assert nse.process is not None
            async with open_connection("noop://svc/nsm-1", nsmgr=node.url):
                nse.process.send_signal(signal.SIGSTOP)  # it will never answer the Close
                try:
                    # Within the mesh's stop grace (10 s): exited by itself, not SIGKILLed.
                    assert await mesh.stop("node-1") == 1
                finally:
                    nse.process.send_signal(signal.SIGCONT)
            said = mesh["node-1"].stderr
            assert "trionsm node: node n1: shutdown_timeout 1s exceeded while closing the " in said
            assert "; still running: registry, nsmgr, forwarder, admin (" in said
            assert "node/forwarder/connections/connection#1" in said  # its Close in flight
            assert not any(path.exists() for path in mesh["node-1"].sockets)  # removed first
            # What the mesh noted about the non-zero exit is this test's expectation.
            assert [line.split(":")[0] for line in mesh.unclean] == ["node-1"]
            mesh.unclean.clear()
            await stop(mesh, "nse-1")
        assert mesh.leaks() == []


async def test_embedded_a_stop_past_shutdown_timeout_raises_deadline_exceeded() -> None:
    """``serve_node`` in this process: past the bound it raises DeadlineExceeded naming what
    still ran, once the roles have stopped (their sockets removed as usual)."""
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            directory = mesh.directory
            config = load_config(
                None,
                {
                    "": {"name": "n1", "dir": directory},
                    "nsmgr": {"listen": (f"unix://{directory}/nsm.io.sock",)},
                    "forwarder": {"mechanisms": ("NOOP",)},
                },
            )
            config = attrs.evolve(config, shutdown_timeout=1.0)
            raised: list[DeadlineExceeded] = []
            node_scope, stopped = trio.CancelScope(), trio.Event()

            async def run_node(*, task_status: trio.TaskStatus[Any]) -> None:
                with node_scope:
                    try:
                        await serve_node(config, task_status=task_status)
                    except DeadlineExceeded as exc:
                        raised.append(exc)
                    finally:
                        stopped.set()

            async with trio.open_nursery() as nursery:
                node = await nursery.start(run_node)
                sock = mesh.socket("nse-1")
                args = ["nse", "--name", "nse-1", "--service", "svc", "--cidr", CIDR]
                args += ["--listen", f"unix://{sock}", "--nsmgr", node.urls[0]]
                nse = await mesh.start("nse-1", args, sockets=[sock])
                assert nse.process is not None
                async with open_connection("noop://svc/nsm-1", nsmgr=node.urls[0]):
                    nse.process.send_signal(signal.SIGSTOP)
                    try:
                        node_scope.cancel()
                        with trio.fail_after(STOP_BOUND):
                            await stopped.wait()
                    finally:
                        nse.process.send_signal(signal.SIGCONT)
            assert len(raised) == 1
            assert raised[0].hop == "node n1"
            assert "shutdown_timeout 1s exceeded while closing the connections" in str(raised[0])
            assert "node/forwarder/connections/connection#1" in str(raised[0])
            assert not (directory / "nsm.io.sock").exists()
            await stop(mesh, "nse-1")
        assert mesh.leaks() == []


async def test_a_killed_node_restarts_and_its_clients_heal() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            node = await start_node(mesh)
            await mesh.add_endpoint("nse-1", "svc", nsmgr="node-1", cidr=CIDR)
            async with open_connection("noop://svc/nsm-1", nsmgr=node.url) as conn:
                first = [s.id for s in conn.connection.path.path_segments]  # type: ignore[union-attr]
                assert await mesh.kill("node-1") == -9  # no cleanup: its sockets stay behind
                await mesh.restart("node-1")  # the same sockets and TCP port
                await conn.wait_for(EventKind.HEALED)
                assert conn.connection is not None
                assert conn.connection.path is not None
                names = [s.name for s in conn.connection.path.path_segments]
                assert names[1:] == ["nsmgr-n1", "forwarder-n1", "nse-1"]
                assert conn.connection.path.path_segments[0].id == first[0]
            await stop(mesh, "nse-1")
            await stop(mesh, "node-1")
        assert mesh.leaks() == []


async def test_restart_keep_dataplane_leaves_the_endpoint_connection() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            node = await start_node(mesh, "--restart-keep-dataplane")
            nse = await mesh.add_endpoint("nse-1", "svc", nsmgr="node-1", cidr=CIDR)
            async with open_connection("noop://svc/nsm-1", nsmgr=node.url) as conn:
                await stop(mesh, "node-1")
                await conn.wait_for(EventKind.DOWN)
                async with (
                    open_client(nse.url, default_timeout=10) as client,
                    client.monitor_connection.monitor_connections(MonitorScopeSelector()) as events,
                ):
                    initial = await events.__anext__()
                assert len(initial.connections) == 1  # not closed: for the next run to adopt
                await mesh.restart("node-1")
                await conn.wait_for(EventKind.HEALED)
            await stop(mesh, "nse-1")
            await stop(mesh, "node-1")
        assert mesh.leaks() == []


def _bad_config(directory: Path) -> dict[str, tuple[list[str], str]]:
    """Bad flags and config values: the command line, and what stderr must say."""
    bad_key = directory / "bad-key.toml"
    bad_key.write_text('[forwarder]\nmode = "internal"\nmechanism = ["noop"]\n')
    bad_value = directory / "bad-value.toml"
    bad_value.write_text('[registry]\nstore = "redis://127.0.0.1:6379"\n')
    return {
        "listen": (
            ["--listen", "ftp://x"],
            "argument --listen: unsupported scheme 'ftp'",
        ),
        "registry": (
            ["--registry", "etcd://nohost"],
            "argument --registry: 'etcd://nohost': expected 'memory' or 'etcd://HOST:PORT",
        ),
        "forwarder": (
            ["--forwarder", "sidecar"],
            "argument --forwarder: invalid choice: 'sidecar' (choose from ",  # (quoting varies)
        ),
        "mechanism": (["--mechanism", "vpp"], "argument --mechanism: 'vpp': expected one of"),
        "shutdown timeout": (
            ["--shutdown-timeout", "0"],
            "argument --shutdown-timeout: '0': a duration must be positive",
        ),
        "name": (["--name", "a/b"], "argument --name: 'a/b': '/' is not allowed in a name"),
        "missing file": (
            ["--config", str(directory / "absent.toml")],
            "absent.toml: (file) = ",
        ),
        "unknown key": (
            ["--config", str(bad_key)],
            f"{bad_key}: forwarder.mechanism = ['noop']: unknown key; [forwarder] takes mode,",
        ),
        "bad value": (
            ["--config", str(bad_value)],
            f"{bad_value}: registry.store = 'redis://127.0.0.1:6379': unsupported scheme",
        ),
    }


async def test_every_bad_flag_and_config_value_exits_2_naming_it() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            directory = Path(mesh.directory)
            cases = _bad_config(directory)
            results: dict[str, Any] = {}

            async def run(case: str, args: list[str]) -> None:
                results[case] = await mesh.run("node", "--dir", str(directory), *args)

            async with trio.open_nursery() as nursery:
                for case, (args, _) in cases.items():
                    nursery.start_soon(run, case, args)
            for case, (_, expected) in cases.items():
                done = results[case]
                assert done.returncode == 2, (case, done.stderr)
                assert expected in done.stderr.decode(), (case, done.stderr)
                assert done.stdout == b"", case  # nothing started
            for path in await trio.Path(directory).iterdir():
                await path.unlink()  # the config files written here
        assert mesh.leaks() == []


async def test_a_node_with_a_remote_registry_and_an_external_forwarder() -> None:
    with trio.fail_after(BOUND):
        async with open_process_mesh() as mesh:
            await mesh.add_registry()
            registry = mesh.url("registry")
            node = await start_node(mesh, "--registry", registry, "--forwarder", "external")
            await mesh.add_forwarder("fwd-x", nsmgr="node-1")
            await mesh.add_endpoint("nse-1", "svc", nsmgr="node-1", cidr=CIDR)
            async with open_connection("noop://svc/nsm-1", nsmgr=node.url) as conn:
                assert conn.connection is not None
                assert conn.connection.path is not None
                names = [s.name for s in conn.connection.path.path_segments]
                assert names[1:] == ["nsmgr-n1", "fwd-x", "nse-1"]
                shown = await status(mesh)
                top = [a["path"] for a in shown["actors"] if a["path"].count("/") == 1]
                assert top == ["node/nsmgr", "node/admin"]  # no registry, no forwarder here
                assert [r["role"] for r in shown["connections"]] == ["nsmgr"]
            for role in ("nse-1", "fwd-x", "node-1", "registry"):
                await stop(mesh, role)
            # With the node gone, status says so: exit 1 naming the error.
            gone = await mesh.run("status", "--node", admin_url(mesh), "--timeout", "2s")
            assert gone.returncode == 1
            assert gone.stderr.decode().startswith("trionsm status: Unavailable: ")
        assert mesh.leaks() == []

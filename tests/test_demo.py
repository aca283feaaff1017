"""``trionsm demo``: the two-node mesh in network namespaces with its two faults, run as the user
runs it (a subprocess), and the leak check it ends with.

The demo's result is its last stdout line (``--json``); each field is asserted. The leak check
is tested on its own: it must find a namespace, a link with a mesh forwarder's alias, a process
and a path deliberately left, and nothing once they are removed. Real clock, bounded waits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trionsm._namespaces import create_netns, delete_netns
from trionsm._netmesh import Inventory, find_leaks, process_start_time
from trionsm._processes import aliased_links

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

DEMO_BOUND = 300.0
"""Seconds the demo may take here (about 15 on an idle machine; 2 busy cores are slower)."""


async def test_demo_connects_pings_heals_and_leaves_nothing() -> None:
    with trio.fail_after(DEMO_BOUND):
        done = await trio.run_process(
            [sys.executable, "-m", "trionsm.cli", "demo", "--json"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = done.stdout.decode()
    lines = output.strip().splitlines()
    assert lines, done.stderr.decode()[-3000:]
    result = json.loads(lines[-1])
    context = f"{output[-4000:]}\n{done.stderr.decode()[-3000:]}"
    assert result["problems"] == [], context
    assert result["connected"] is True, context
    assert result["ping_ok"] is True, context
    assert result["healed"] is True, context
    assert result["leaked"] == 0, context
    for field in ("heal_ms", "gap_ms", "forwarder_gap_ms"):
        assert isinstance(result[field], int | float), (field, context)
        assert result[field] >= 0, (field, context)
    # every gap is one of the run's gaps, the heal one is within the fault's gap
    assert result["gap_ms"] >= result["forwarder_gap_ms"], context
    # the restarted forwarder adopted the NSC's vxlan end as it was: the same interface
    assert result["wire_kept"] is True, context
    assert done.returncode == 0, context
    # readable progress came first: each phase is on screen
    for phase in ("connected to nse-", "fault 1: SIGKILL of forwarder-node-1", "fault 2: death of",
                  "reselected nse-", "leaked: 0"):  # fmt: skip
        assert phase in output, (phase, context)


async def test_demo_interrupted_by_sigterm_tears_down_and_leaves_nothing() -> None:
    """SIGTERM once the NSC is connected: the demo stops, tears down, still checks for leaks
    (none), names the signal and exits 1."""
    with trio.fail_after(DEMO_BOUND):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trionsm.cli", "demo", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        output = b""
        try:
            while b"connected to nse-" not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, output.decode()[-3000:]
                output += chunk
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stdout.receive_some():
                output += chunk
            await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:  # a failed assert: not left running
                    process.send_signal(signal.SIGTERM)
                    await process.wait()
                await process.stdout.aclose()
    result = json.loads(output.decode().strip().splitlines()[-1])
    assert result["connected"] is True
    assert result["healed"] is False
    assert result["leaked"] == 0, output.decode()[-3000:]
    assert "interrupted by SIGTERM" in result["problems"]
    assert process.returncode == 1


async def _ip(*args: str) -> None:
    await trio.run_process(["ip", *args], capture_stderr=True)


async def test_leak_check_finds_a_namespace_link_process_and_path_left_then_nothing(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        name = f"tnsm-leak-{os.getpid()}"
        inventory = Inventory(owners=["node-9-forwarder"])
        await create_netns(name, into=inventory.namespaces)
        sleeper = await trio.lowlevel.open_process(["sleep", "60"])
        try:
            await _ip("-n", name, "link", "add", "leak0", "type", "veth", "peer", "name", "other0")
            await _ip("-n", name, "link", "set", "leak0", "alias", "trionsm:node-9-forwarder:c-1")
            started = process_start_time(sleeper.pid)
            assert started is not None
            inventory.processes[sleeper.pid] = started
            inventory.processes[sleeper.pid + 10_000_000] = 1  # no such PID: never reported
            left = tmp_path / "node-9"
            left.mkdir()
            inventory.paths += [left, tmp_path / "never-made.sock"]

            assert await aliased_links(name) == ["leak0 trionsm:node-9-forwarder:c-1"]
            assert await find_leaks(inventory) == [
                f"namespace {name}",
                f"link {name}: leak0 trionsm:node-9-forwarder:c-1",
                f"process {sleeper.pid}",
                f"path {left}",
            ]
        finally:
            sleeper.kill()
            await sleeper.wait()
            await delete_netns(name)
        left.rmdir()
        assert await find_leaks(inventory) == []


async def test_leak_check_ignores_a_pid_now_held_by_another_process() -> None:
    """A PID is a leak only while the process that had it lives: its start time must match."""
    with trio.fail_after(30):
        sleeper = await trio.lowlevel.open_process(["sleep", "60"])
        try:
            started = process_start_time(sleeper.pid)
            assert started is not None
            inventory = Inventory(processes={sleeper.pid: started - 1})  # another life of it
            assert await find_leaks(inventory) == []
        finally:
            sleeper.kill()
            await sleeper.wait()


async def test_nse_ipam_policy_takes_polymorphic_or_strict_only() -> None:
    """The demo's NSEs run with ``--ipam-policy strict`` (a reselected client gets the new
    endpoint's addresses only, asserted by the demo's ``healed``); another value exits 2."""
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "trionsm.cli", "nse", "--name", "n", "--service", "s",
             "--cidr", "169.254.1.0/24", "--listen", "unix:///tmp/never.sock",
             "--nsmgr", "unix:///tmp/never-nsmgr.sock", "--ipam-policy", "loose"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert "--ipam-policy" in done.stderr.decode()
    assert "'loose'" in done.stderr.decode()


async def test_demo_without_root_exits_1_and_says_why_in_its_json() -> None:
    """Run as nobody (``setpriv``): nothing is made, the JSON line names what is missing."""
    with trio.fail_after(60):
        done = await trio.run_process(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             sys.executable, "-m", "trionsm.cli", "demo", "--json"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr.decode()
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert result["connected"] is False
    assert result["leaked"] == 0
    assert result["problems"] == ["needs root and iproute2's 'ip' (it makes network namespaces)"]
    assert "needs root" in done.stderr.decode()

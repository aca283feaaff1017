"""``trionsm registry`` as a real process: serves, stops cleanly on SIGTERM, refuses bad flags."""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from trionsm.api.registry import NetworkServiceEndpoint, NetworkServiceEndpointQuery
from trionsm.transport import open_client

COMMAND = [sys.executable, "-m", "trionsm.cli", "registry"]


async def _first_lines(process: trio.Process, count: int) -> list[str]:
    assert process.stdout is not None
    buffer = b""
    while buffer.count(b"\n") < count:
        chunk = await process.stdout.receive_some()
        assert chunk, f"the registry exited early (status {process.poll()})"
        buffer += chunk
    return buffer.decode().splitlines()[:count]


async def test_serves_until_sigterm_then_exits_zero(tmp_path: Path) -> None:
    socket = tmp_path / "registry.sock"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    [*COMMAND, "--listen", "tcp://127.0.0.1:0", "--listen", f"unix://{socket}"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            try:
                tcp_line, unix_line = await _first_lines(process, 2)
                assert tcp_line.startswith("serving tcp://127.0.0.1:")
                assert unix_line == f"serving unix://{socket}"
                for url in (tcp_line.removeprefix("serving "), f"unix://{socket}"):
                    async with open_client(url) as client:
                        stored = await client.nse_registry.register(
                            NetworkServiceEndpoint(
                                name="nse-1",
                                network_service_names=["icmp"],
                                url="tcp://127.0.0.1:5001",
                            )
                        )
                        assert stored.expiration_time is not None
                        query = NetworkServiceEndpointQuery(
                            network_service_endpoint=NetworkServiceEndpoint(name="nse-1")
                        )
                        async with client.nse_registry.find(query) as stream:
                            assert [r.network_service_endpoint.name async for r in stream] == [
                                "nse-1"
                            ]
            finally:
                process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        assert not socket.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--expiry", "soon"], "argument --expiry: 'soon' is not a duration"),
        (["--expiry", "-5s"], "argument --expiry"),
        (["--listen", "http://127.0.0.1:1"], "argument --listen: unsupported scheme 'http'"),
        (["--listen", "inode://1/2"], "cannot be listened on"),
        (["--store", "redis://x"], "argument --store: 'redis://x': expected 'memory' or 'etcd://"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flags: list[str], message: str) -> None:
    result = subprocess.run([*COMMAND, *flags], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


async def test_an_address_in_use_is_a_clear_start_error() -> None:
    with trio.fail_after(30):
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with listener:
            result = await trio.run_process(
                [*COMMAND, "--listen", f"tcp://127.0.0.1:{port}"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 1
        assert "trionsm registry: cannot start:" in result.stderr.decode()
        assert str(port) in result.stderr.decode()

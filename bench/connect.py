"""Connection-path benchmark: Request latency, heal time and memory per connection.

Prints one JSON object (last line of stdout); progress goes to stderr. No-op mechanism throughout
(the data plane has its own benchmark).

* ``local_request_p50_ms_inproc``: a new connection NSC -> nsmgr -> forwarder -> NSE, every role in
  this process over ``inproc://`` (target <= 5); ``request_p99_ms_inproc`` and
  ``connections_per_s_inproc`` with it.
* ``local_request_p50_ms_grpc``: the same with the node (nsmgr + forwarder), the NSE and the NSC
  in three processes over unix-socket gRPC (target <= 25); ``request_p99_ms_grpc``.
* ``heal_forwarder_p50_ms``: the forwarder is killed and restarted on the same URL inside the
  mesh -> the NSC's connection is UP again (reselect heal; target <= 500).
* ``conn_rss_kib``: (RSS of the node process holding N live connections - its RSS idle) / N, the
  NSCs and the NSE in other processes (target <= 40 at N = 10,000; ``--connections`` sets N).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import trio

from trionsm.actors.client import EventKind, open_connection
from trionsm.scenario import open_mesh
from trionsm.transport import Client, open_client

TARGETS = {
    "local_request_p50_ms_inproc": 5.0,
    "local_request_p50_ms_grpc": 25.0,
    "heal_forwarder_p50_ms": 500.0,
    "conn_rss_kib": 40.0,
}

NODE = """
import sys, trio
from functools import partial
from trionsm.actors.nsmgr import serve_nsmgr
from trionsm.actors.forwarder import serve_forwarder
from trionsm.actors.registry import serve_registry

async def main(directory):
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_registry, f"unix://{directory}/registry.sock")
        await nursery.start(partial(serve_nsmgr, "nsmgr-1", f"unix://{directory}/nsmgr.sock",
                                    registry=f"unix://{directory}/registry.sock"))
        await nursery.start(partial(serve_forwarder, "forwarder-1",
                                    f"unix://{directory}/forwarder.sock",
                                    nsmgr=f"unix://{directory}/nsmgr.sock"))
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""

ENDPOINT = """
import sys, trio
from functools import partial
from trionsm.actors.endpoint import serve_endpoint
from trionsm.transport import open_client
from trionsm.api.registry import NetworkService

async def main(directory):
    async with open_client(f"unix://{directory}/nsmgr.sock") as client:
        await client.ns_registry.register(NetworkService(name="bench"), timeout=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_endpoint, "nse-1", f"unix://{directory}/nse.sock",
                                    services="bench", registry=f"unix://{directory}/nsmgr.sock",
                                    cidr="169.254.0.0/16"))
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def inproc_requests(count: int) -> dict[str, float]:
    async with open_mesh(roundtrip_bytes=False) as mesh:
        await mesh.register_service("bench")
        await mesh.add_endpoint("nse-1", "bench", cidr="169.254.0.0/16")
        samples = []
        began = time.perf_counter()
        for _ in range(count):
            start = time.perf_counter()
            async with mesh.connect("noop://bench/nsm-1"):
                samples.append((time.perf_counter() - start) * 1000)
        rate = count / (time.perf_counter() - began)
    return {
        "local_request_p50_ms_inproc": round(statistics.median(samples), 3),
        "request_p99_ms_inproc": round(quantile(samples, 0.99), 3),
        "connections_per_s_inproc": round(rate, 1),
    }


async def heal_forwarder(rounds: int) -> dict[str, float]:
    samples = []
    async with open_mesh(roundtrip_bytes=False) as mesh:
        await mesh.register_service("bench")
        await mesh.add_endpoint("nse-1", "bench", cidr="169.254.0.0/16")
        async with mesh.connect("noop://bench/nsm-1") as conn:
            for round_ in range(rounds):
                began = time.perf_counter()
                await mesh.restart("forwarder-0-0")
                await conn.wait_for(EventKind.HEALED, round_ + 1)
                samples.append((time.perf_counter() - began) * 1000)
    return {
        "heal_forwarder_p50_ms": round(statistics.median(samples), 1),
        "heal_forwarder_max_ms": round(max(samples), 1),
    }


async def _start(script: str, directory: str) -> trio.Process:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", textwrap.dedent(script), directory], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(60):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError(f"a bench process exited early ({process.returncode})")
            line += chunk
    return process


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def grpc_processes(count: int, held: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="trionsm-bench-") as directory:
        node = await _start(NODE, directory)
        endpoint = await _start(ENDPOINT, directory)
        try:
            nsmgr = f"unix://{directory}/nsmgr.sock"
            async with open_client(nsmgr) as client:
                return await _grpc_figures(client, nsmgr, node.pid, count, held)
        finally:
            for process in (endpoint, node):
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()


async def _grpc_figures(
    client: Client, nsmgr: str, node_pid: int, count: int, held: int
) -> dict[str, Any]:
    """Request latency over one shared channel, then RSS per connection with ``held`` open."""
    samples = []
    for _ in range(count + 5):
        start = time.perf_counter()
        async with open_connection("noop://bench/nsm-1", nsmgr=nsmgr, client=client):
            samples.append((time.perf_counter() - start) * 1000)
    samples = samples[5:]  # the first ones warm the channel up
    results = {
        "local_request_p50_ms_grpc": round(statistics.median(samples), 2),
        "request_p99_ms_grpc": round(quantile(samples, 0.99), 2),
    }
    log(f"grpc: p50 {results['local_request_p50_ms_grpc']} ms")
    idle = _rss_kib(node_pid)
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        opened = 0
        all_open = trio.Event()
        release = trio.Event()

        limiter = trio.Semaphore(32)  # Requests in flight at once

        async def hold() -> None:
            nonlocal opened
            await limiter.acquire()
            async with open_connection("noop://bench/nsm-1", nsmgr=nsmgr, client=client):
                limiter.release()
                opened += 1
                if opened == held:
                    all_open.set()
                await release.wait()

        for _ in range(held):
            nursery.start_soon(hold)
        with trio.fail_after(held * 0.1 + 60):
            await all_open.wait()
        rate = held / (time.perf_counter() - began)
        loaded = _rss_kib(node_pid)
        release.set()
    results["conn_rss_kib"] = round((loaded - idle) / held, 2)
    results["conn_rss_connections"] = held
    results["connections_per_s_grpc"] = round(rate, 1)
    log(f"grpc: {held} connections, {results['conn_rss_kib']} KiB each, {rate:.0f}/s")
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results.update(await inproc_requests(args.requests))
    log(f"inproc: {results}")
    results.update(await heal_forwarder(args.heals))
    log(f"heal: {results['heal_forwarder_p50_ms']} ms")
    results.update(await grpc_processes(args.grpc_requests, args.connections))
    results["targets"] = TARGETS
    results["meets_targets"] = {
        key: results[key] <= target for key, target in TARGETS.items() if key in results
    }
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--heals", type=int, default=20)
    parser.add_argument("--grpc-requests", type=int, default=100)
    parser.add_argument("--connections", type=int, default=2000)
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(trio.run(main, parse_args())))

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
* ``conn_rss_kib_10k``: (RSS of the node process, nsmgr + forwarder, holding N = 10,000 live
  connections - its RSS idle after a warm-up) / N; the NSE and the NSC load generator run in
  their own processes, over unix-socket gRPC (target <= 40; ``--connections`` sets N, and the key
  becomes ``conn_rss_kib_<N>``). The NSC opens them ``--concurrency`` at a time, each with its own
  monitor stream (as NSM's NSC), every role with hour-long tokens so refresh stays out of the way;
  ``request_p50_ms_loaded``/``request_p99_ms_loaded`` and ``connections_per_s`` come with it.
  The NSC's connections share one client, hence one channel and one monitor stream to the nsmgr
  (as connections on a shared ``client=`` do). ``make bench`` holds 10,000 (about a minute and
  a half). ``node_gc_max_ms`` is the node's longest full garbage collection meanwhile: the
  loaded p99 is mostly that pause (CPython 3.11's collector walks every live object).
  ``--trace-frames N`` makes the node trace its allocations and logs where the memory per
  connection went (much slower; for looking, not for the figure).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import trio

from trionsm.actors.client import EventKind
from trionsm.scenario import open_mesh

TARGETS = {
    "local_request_p50_ms_inproc": 5.0,
    "local_request_p50_ms_grpc": 25.0,
    "heal_forwarder_p50_ms": 500.0,
    "conn_rss_kib_10k": 40.0,
}

LIFETIME = 3600.0
"""Token lifetime of every role in the process figures: refresh (at 20 %) stays out of the way."""

NODE = """
import gc, os, pickle, signal, sys, time, tracemalloc, trio
from functools import partial
from trionsm.actors.nsmgr import serve_nsmgr
from trionsm.actors.forwarder import serve_forwarder
from trionsm.identity import JwtTokenProvider

def watch_gc():
    # the longest full collection so far, in seconds, in a one-item list
    longest, began = [0.0], [0.0]
    def timed(phase, info):
        if info["generation"] == 2:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                longest[0] = max(longest[0], time.perf_counter() - began[0])
    gc.callbacks.append(timed)
    return longest

async def main(directory, lifetime, frames):
    if frames:
        tracemalloc.start(frames)
    def tokens(who):
        return JwtTokenProvider(f"spiffe://trionsm.local/{who}", lifetime=lifetime)
    async with trio.open_nursery() as nursery:
        nsmgr = f"unix://{directory}/nsmgr.sock"
        await nursery.start(partial(serve_nsmgr, "nsmgr-1", nsmgr, tokens=tokens("nsmgr")))
        await nursery.start(partial(serve_forwarder, "forwarder-1",
                                    f"unix://{directory}/forwarder.sock", nsmgr=nsmgr,
                                    tokens=tokens("forwarder")))
        print("ready", flush=True)
        gc_max = watch_gc()
        shots = 0
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            async for _ in signals:
                shots += 1
                if frames:
                    with open(f"{directory}/snapshot-{shots}", "wb") as out:
                        pickle.dump(tracemalloc.take_snapshot(), out)
                print(f"gc {gc_max[0] * 1000:.0f}", flush=True)

trio.run(main, sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
"""

ENDPOINT = """
import sys, trio
from functools import partial
from trionsm.actors.endpoint import serve_endpoint
from trionsm.identity import JwtTokenProvider
from trionsm.transport import open_client
from trionsm.api.registry import NetworkService

async def main(directory, lifetime):
    async with open_client(f"unix://{directory}/nsmgr.sock") as client:
        await client.ns_registry.register(NetworkService(name="bench"), timeout=10)
    tokens = JwtTokenProvider("spiffe://trionsm.local/nse", lifetime=lifetime)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_endpoint, "nse-1", f"unix://{directory}/nse.sock",
                                    services="bench", registry=f"unix://{directory}/nsmgr.sock",
                                    cidr="169.254.0.0/16", tokens=tokens))
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], float(sys.argv[2]))
"""

NSC = """
import json, sys, time, trio
from trionsm.actors.client import open_connection
from trionsm.identity import JwtTokenProvider
from trionsm.transport import open_client

async def line():
    return await trio.to_thread.run_sync(sys.stdin.readline)

def ms(samples):
    ordered = sorted(samples)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)
    return {"p50": pick(0.5), "p99": pick(0.99)}

async def main(directory, lifetime, sequential, held, concurrency):
    nsmgr = f"unix://{directory}/nsmgr.sock"
    tokens = JwtTokenProvider("spiffe://trionsm.local/nsc/bench", lifetime=lifetime)
    options = dict(nsmgr=nsmgr, tokens=tokens, name="nsc-bench", liveness=False)
    async with open_client(nsmgr) as client:
        samples = []
        for _ in range(sequential + 5):  # the first ones warm the channel up
            start = time.perf_counter()
            async with open_connection("noop://bench/nsm-1", client=client, **options):
                samples.append((time.perf_counter() - start) * 1000)
        print(json.dumps({"sequential": ms(samples[5:])}), flush=True)
        await line()  # the idle RSS is taken now
        samples = []
        limiter = trio.Semaphore(concurrency)
        all_open, release = trio.Event(), trio.Event()
        async def hold():
            await limiter.acquire()
            start = time.perf_counter()
            async with open_connection("noop://bench/nsm-1", client=client,
                                       close_on_exit=False, **options):
                samples.append((time.perf_counter() - start) * 1000)
                limiter.release()
                if len(samples) == held:
                    all_open.set()
                if len(samples) % 1000 == 0:
                    print(json.dumps({"opened": len(samples)}), flush=True)
                await release.wait()
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(held):
                nursery.start_soon(hold)
            await all_open.wait()
            rate = held / (time.perf_counter() - began)
            print(json.dumps({"loaded": ms(samples), "rate": round(rate, 1)}), flush=True)
            await line()  # the loaded RSS is taken now
            nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:]))
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


class _Role:
    """One bench process: its stdin to say go, its stdout read line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self, bound: float = 60.0) -> str:
        assert self.process.stdout is not None
        with trio.fail_after(bound):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError(f"a bench process exited early ({self.process.returncode})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    async def tell(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"go\n")

    async def stop(self) -> None:
        self.process.terminate()
        with trio.move_on_after(10):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _start(script: str, *args: object, ready: bool = True) -> _Role:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    role = _Role(process)
    if ready:
        try:
            if (await role.line()) != "ready":
                raise RuntimeError("a bench process did not say ready")
        except BaseException:
            with trio.CancelScope(shield=True):
                await role.stop()
            raise
    return role


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def grpc_processes(
    sequential: int, held: int, concurrency: int, trace_frames: int
) -> dict[str, Any]:
    """The node (nsmgr + forwarder), the NSE and the NSC load generator in three processes.

    The NSC first makes ``sequential`` connections one at a time (latency over unix-socket
    gRPC), then opens ``held`` connections ``concurrency`` at a time and keeps them: the node's
    RSS before and after gives ``conn_rss_kib``. With ``trace_frames``, the node traces its
    allocations and the biggest growths are logged (much slower; the RSS figure then includes
    tracemalloc's own bookkeeping).
    """
    with tempfile.TemporaryDirectory(prefix="trionsm-bench-") as directory:
        roles: list[_Role] = []
        try:
            node = await _start(NODE, directory, LIFETIME, trace_frames)
            roles.append(node)
            roles.append(await _start(ENDPOINT, directory, LIFETIME))
            nsc = await _start(NSC, directory, LIFETIME, sequential, held, concurrency, ready=False)
            roles.append(nsc)
            return await _grpc_figures(node, nsc, directory, held, trace_frames)
        finally:
            with trio.CancelScope(shield=True):
                for role in reversed(roles):
                    await role.stop()


async def _grpc_figures(
    node: _Role, nsc: _Role, directory: str, held: int, trace_frames: int
) -> dict[str, Any]:
    figures = json.loads(await nsc.line(bound=600))["sequential"]
    results: dict[str, Any] = {
        "local_request_p50_ms_grpc": figures["p50"],
        "request_p99_ms_grpc": figures["p99"],
    }
    log(f"grpc: sequential {figures}")
    await _snapshot(node)
    idle = _rss_kib(node.process.pid)
    await nsc.tell()
    while True:
        report = json.loads(await nsc.line(bound=held * 0.5 + 120))
        if "loaded" in report:
            break
        log(f"grpc: {report['opened']} open, node RSS {_rss_kib(node.process.pid)} KiB")
    loaded = _rss_kib(node.process.pid)
    per = (loaded - idle) / held
    key = "conn_rss_kib_10k" if held == 10_000 else f"conn_rss_kib_{held}"
    results[key] = round(per, 2)
    results["conn_rss_connections"] = held
    results["node_rss_idle_kib"] = idle
    results["node_rss_loaded_kib"] = loaded
    results["request_p50_ms_loaded"] = report["loaded"]["p50"]
    results["request_p99_ms_loaded"] = report["loaded"]["p99"]
    results["connections_per_s"] = report["rate"]
    results["node_gc_max_ms"] = await _snapshot(node)
    log(
        f"grpc: {held} connections, {per:.2f} KiB each, {report['rate']}/s, {report['loaded']}, "
        f"longest full GC {results['node_gc_max_ms']} ms"
    )
    if trace_frames:
        _log_growth(directory, held)
    await nsc.tell()
    return results


async def _snapshot(node: _Role) -> int:
    """Ask the node for its longest full GC so far (ms), and a tracemalloc snapshot if tracing."""
    os.kill(node.process.pid, signal.SIGUSR1)
    return int((await node.line(bound=600)).split()[1])


def _log_growth(directory: str, held: int, top: int = 30) -> None:
    """Log where the node's memory grew between the two snapshots, per connection.

    Each allocation is charged to the innermost frame in this repository that made it (the
    line of ours that caused it), with the innermost frame of all after it.
    """
    with open(f"{directory}/snapshot-1", "rb") as first:
        before = pickle.load(first)
    with open(f"{directory}/snapshot-2", "rb") as second:
        after = pickle.load(second)
    stats = after.compare_to(before, "traceback")
    total = sum(stat.size_diff for stat in stats)
    log(f"traced growth: {total / held / 1024:.2f} KiB per connection")
    repo = str(Path(__file__).resolve().parent.parent)
    grouped: dict[str, list[int]] = {}
    for stat in stats:
        frames = list(reversed(stat.traceback))  # innermost first
        ours = next(
            (f for f in frames if f.filename.startswith(repo) and "/.venv/" not in f.filename),
            None,
        )
        inner = frames[0]
        key = f"{Path(inner.filename).name}:{inner.lineno}"
        if ours is not None and ours is not inner:
            key = f"{ours.filename[len(repo) + 1 :]}:{ours.lineno} ({key})"
        sizes = grouped.setdefault(key, [0, 0])
        sizes[0] += stat.size_diff
        sizes[1] += stat.count_diff
    for key, (size, count) in sorted(grouped.items(), key=lambda item: -item[1][0])[:top]:
        log(f"  {size / held:8.0f} B/conn {count / held:6.2f} blocks  {key}")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if args.requests:
        results.update(await inproc_requests(args.requests))
        log(f"inproc: {results}")
    if args.heals:
        results.update(await heal_forwarder(args.heals))
        log(f"heal: {results['heal_forwarder_p50_ms']} ms")
    results.update(
        await grpc_processes(
            args.grpc_requests, args.connections, args.concurrency, args.trace_frames
        )
    )
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
    parser.add_argument(
        "--connections",
        type=int,
        default=10_000,
        help="connections held for the RSS figure (key conn_rss_kib_10k at 10000)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight at once")
    parser.add_argument(
        "--trace-frames",
        type=int,
        default=0,
        help="trace the node's allocations with this many frames and log the biggest growths",
    )
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(trio.run(main, parse_args())))

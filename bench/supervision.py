"""Benchmark of ``trionsm.supervision``: actor call latency, idle actor memory, restart latency.

What is measured, and why:

* ``actor_call_ratio_vs_channel``: the median ``ActorRef.call`` round trip (to an actor whose
  ``handle`` returns its message) divided by the median round trip of two bare Trio tasks trading a
  request and a reply over two unbuffered memory channels. Absolute microseconds depend on the CPU,
  the Python build and the machine's load; a ratio taken in the same process, in the same run, with
  the batches of both interleaved, cancels most of that and says what the actor layer itself costs
  (mailbox, reply slot, timeout scope) on top of the cheapest Trio exchange there is. Target <= 2.0.
* ``idle_actor_kib``: resident memory per idle actor, ``(RSS after - RSS before) / N`` for N actors
  (default 100,000) started one by one under a single SIMPLE_ONE_FOR_ONE supervisor. Dividing by N
  removes the interpreter's fixed footprint and amortises allocator slack. Target <= 10 KiB. The
  time to start and to stop them all is reported too.
* ``restart_p50_us`` / ``restart_p99_us``: from the moment a PERMANENT child under ONE_FOR_ONE
  raises to the moment its restarted incarnation runs again (just after ``task_status.started()``),
  over ~2000 crashes; ``actor_restart_*`` is the same for an Actor (crash in ``handle``, restarted
  incarnation timed in ``init``). The intensity is set so high that it never trips.

All on the real Trio clock. Human-readable progress goes to stderr; the one JSON object is the last
line on stdout (see ``bench/collect.py``).

Usage: ``python bench/supervision.py [--actors N]`` (or ``TRIONSM_BENCH_ACTORS=N``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from functools import partial
from typing import Any

import trio

from trionsm.supervision import (
    Actor,
    ActorRef,
    ChildSpec,
    Restart,
    Strategy,
    actor_spec,
    open_supervisor,
)

TARGETS = {"actor_call_ratio_vs_channel": 2.0, "idle_actor_kib": 10}

BATCH = 1000  # round trips per timed batch
BATCHES = 20  # timed batches per side (plus warm-up)
RESTART_SAMPLES = 2000
DEFAULT_ACTORS = 100_000


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def rss_kib() -> float:
    """Resident set size of this process in KiB (after a full collection)."""
    gc.collect()
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024
    except OSError:  # no procfs: the peak RSS, a fair stand-in while memory only grows
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# ---- actors ----------------------------------------------------------------------------------


class EchoActor(Actor):
    async def handle(self, message: Any) -> Any:
        return message


class IdleActor(Actor):
    async def handle(self, message: Any) -> Any:
        return None


class _Crash(Exception):
    """Raised on purpose to make a child crash."""


class RestartProbe:
    """Shared between the driver and every incarnation of a crashing child."""

    def __init__(self) -> None:
        self.up = trio.Event()  # set by each incarnation once it runs
        self.trigger = trio.Event()  # set by the driver to crash the current incarnation
        self.crashed_at: int | None = None
        self.samples_ns: list[int] = []

    def running(self) -> None:
        now = time.perf_counter_ns()
        if self.crashed_at is not None:
            self.samples_ns.append(now - self.crashed_at)
            self.crashed_at = None
        self.up.set()

    def crash(self) -> None:
        self.crashed_at = time.perf_counter_ns()
        raise _Crash("crash requested by the benchmark")


async def crashing_child(probe: RestartProbe, *, task_status: trio.TaskStatus[None]) -> None:
    probe.trigger = trigger = trio.Event()
    task_status.started()
    probe.running()
    await trigger.wait()
    probe.crash()


class CrashingActor(Actor):
    def __init__(self, probe: RestartProbe) -> None:
        self.probe = probe

    async def init(self) -> None:
        self.probe.running()

    async def handle(self, message: Any) -> Any:
        self.probe.crash()


# ---- actor call vs bare channel round trip ---------------------------------------------------


async def bench_call(batches: int = BATCHES, batch: int = BATCH) -> dict[str, Any]:
    req_send, req_recv = trio.open_memory_channel[Any](0)
    rep_send, rep_recv = trio.open_memory_channel[Any](0)

    async def echo_server() -> None:
        async for message in req_recv:
            await rep_send.send(message)

    async def channel_batch() -> float:
        start = time.perf_counter_ns()
        for i in range(batch):
            await req_send.send(i)
            await rep_recv.receive()
        return (time.perf_counter_ns() - start) / batch

    ref = ActorRef("echo")

    async def actor_batch() -> float:
        call = ref.call
        start = time.perf_counter_ns()
        for i in range(batch):
            await call(i, timeout=5.0)
        return (time.perf_counter_ns() - start) / batch

    channel_ns: list[float] = []
    actor_ns: list[float] = []
    async with (
        trio.open_nursery() as nursery,
        open_supervisor([actor_spec("echo", EchoActor, ref=ref)], name="bench-call"),
    ):
        nursery.start_soon(echo_server)
        for _ in range(2):  # warm-up
            await channel_batch()
            await actor_batch()
        gc.collect()
        for i in range(batches):
            # Interleave, alternating which side goes first, so drift hits both alike.
            if i % 2 == 0:
                channel_ns.append(await channel_batch())
                actor_ns.append(await actor_batch())
            else:
                actor_ns.append(await actor_batch())
                channel_ns.append(await channel_batch())
        nursery.cancel_scope.cancel()

    channel_us = statistics.median(channel_ns) / 1000
    actor_us = statistics.median(actor_ns) / 1000
    return {
        "actor_call_us": round(actor_us, 3),
        "channel_roundtrip_us": round(channel_us, 3),
        "actor_call_ratio_vs_channel": round(actor_us / channel_us, 3),
    }


# ---- idle actors -----------------------------------------------------------------------------


async def bench_idle(actors: int) -> dict[str, Any]:
    spec = actor_spec("idle", IdleActor, restart=Restart.TEMPORARY)
    async with open_supervisor(
        [spec], strategy=Strategy.SIMPLE_ONE_FOR_ONE, name="bench-idle"
    ) as sup:
        before = rss_kib()
        start = time.perf_counter()
        step = max(1, actors // 5)
        for n in range(1, actors + 1):
            await sup.start_child()
            if n % step == 0:
                log(f"  started {n:,} idle actors ({time.perf_counter() - start:.1f} s)")
        start_s = time.perf_counter() - start
        after = rss_kib()
        count = sup.count_children()
        if count.active != actors:
            raise RuntimeError(f"expected {actors} running actors, got {count}")
        stop_begin = time.perf_counter()
    stop_s = time.perf_counter() - stop_begin
    return {
        "idle_actors": actors,
        "idle_actor_kib": round((after - before) / actors, 3),
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "start_100k_s": round(start_s, 3),
        "stop_100k_s": round(stop_s, 3),
    }


# ---- restart latency -------------------------------------------------------------------------


async def drive_crashes(probe: RestartProbe, samples: int) -> None:
    await probe.up.wait()
    for _ in range(samples + samples // 10):  # the first tenth is warm-up
        probe.up = trio.Event()
        probe.trigger.set()
        with trio.fail_after(5):
            await probe.up.wait()


async def bench_restart(samples: int = RESTART_SAMPLES) -> dict[str, Any]:
    # intensity 10**9 within 1 s: never trips, whatever the machine's speed.
    options: dict[str, Any] = {"strategy": Strategy.ONE_FOR_ONE, "intensity": 10**9, "period": 1.0}

    probe = RestartProbe()
    spec = ChildSpec("crashy", partial(crashing_child, probe), restart=Restart.PERMANENT)
    async with open_supervisor([spec], name="bench-restart", **options):
        await drive_crashes(probe, samples)
    plain = [ns / 1000 for ns in probe.samples_ns[samples // 10 :]]

    actor_probe = RestartProbe()
    ref = ActorRef("crashy-actor")
    spec = actor_spec("crashy-actor", CrashingActor, actor_probe, ref=ref)

    async def crash_on_trigger() -> None:
        while True:
            await actor_probe.trigger.wait()
            actor_probe.trigger = trio.Event()
            ref.cast("crash")

    async with (
        open_supervisor([spec], name="bench-actor-restart", **options),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(crash_on_trigger)
        await drive_crashes(actor_probe, samples)
        nursery.cancel_scope.cancel()
    actor = [ns / 1000 for ns in actor_probe.samples_ns[samples // 10 :]]

    return {
        "restart_samples": len(plain),
        "restart_p50_us": round(statistics.median(plain), 2),
        "restart_p99_us": round(percentile(plain, 99), 2),
        "actor_restart_p50_us": round(statistics.median(actor), 2),
        "actor_restart_p99_us": round(percentile(actor, 99), 2),
    }


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--actors",
        type=int,
        default=int(os.environ.get("TRIONSM_BENCH_ACTORS", DEFAULT_ACTORS)),
        help="idle actors to start (default %(default)s; env TRIONSM_BENCH_ACTORS)",
    )
    args = parser.parse_args(argv)
    if args.actors < 1:
        parser.error("--actors must be >= 1")
    return args


async def run(actors: int) -> dict[str, Any]:
    began = time.perf_counter()
    # Memory first, while the heap is fresh: memory freed by the other sections would be reused and
    # make the per-actor figure look smaller than it is.
    log(f"idle actors: starting {actors:,} under one SIMPLE_ONE_FOR_ONE supervisor...")
    idle = await bench_idle(actors)
    log(
        f"  {idle['idle_actor_kib']} KiB/actor, start {idle['start_100k_s']} s, "
        f"stop {idle['stop_100k_s']} s"
    )
    gc.collect()

    log(f"call round trips: {BATCHES} x {BATCH} per side, interleaved...")
    call = await bench_call()
    log(
        f"  actor {call['actor_call_us']} us, channel {call['channel_roundtrip_us']} us, "
        f"ratio {call['actor_call_ratio_vs_channel']}"
    )

    log(f"restarts: {RESTART_SAMPLES} crashes each (plain child, actor)...")
    restart = await bench_restart()
    log(
        f"  p50 {restart['restart_p50_us']} us, p99 {restart['restart_p99_us']} us; "
        f"actor p50 {restart['actor_restart_p50_us']} us"
    )

    result: dict[str, Any] = {"bench": "supervision"}
    result.update(call)
    result.update(idle)
    result.update(restart)
    result["targets"] = dict(TARGETS)
    result["meets_targets"] = {key: result[key] <= target for key, target in TARGETS.items()}
    result["python"] = platform.python_version()
    result["trio"] = trio.__version__
    result["elapsed_s"] = round(time.perf_counter() - began, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = trio.run(run, args.actors)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

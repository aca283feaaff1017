"""Registry benchmark: Find at scale, expiry lateness, registration rate, memory per entry.

Prints one JSON object (last line of stdout); progress goes to stderr.

* ``registry_find_p50_ms_100k``: Find (watch=false) by one service name with 100,000 endpoints
  registered across 1,000 services (100 each), memory store, over the inproc carrier, until all 100
  results are received (target <= 5). ``registry_find_vs_scan_ratio`` compares it with a plain
  Python scan of the same 100,000 messages in the same run (the baseline a naive registry pays).
* ``registry_expiry_lateness_p99_ms``: how late ``deleted=true`` events reach a watcher after the
  entries' expiration times, 10,000 entries expiring over 10 s, memory store (target <= 100).
  The same with the etcd store, against a real etcd started for the run (``..._etcd``: the live
  replica deletes at the deadline) and for the lease backstop (``..._etcd_backstop``: the
  registering replica's entries are stopped, etcd's lease removes the keys and another replica's
  watcher reports them).
* ``registry_register_per_s`` (inproc; ``..._etcd`` with the etcd store) and ``registry_entry_kib``
  (memory store, traced allocation per registered endpoint with its entry actor): reported.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from trionsm.actors.registry import RegistryHandle, serve_registry
from trionsm.api.registry import NetworkServiceEndpoint, NetworkServiceEndpointQuery
from trionsm.clock import current_clock
from trionsm.transport import Client, open_client

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"registry_find_p50_ms_100k": 5.0, "registry_expiry_lateness_p99_ms": 100.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def endpoint(index: int, services: int) -> NetworkServiceEndpoint:
    return NetworkServiceEndpoint(
        name=f"nse-{index}",
        network_service_names=[f"service-{index % services}"],
        url=f"tcp://127.0.0.{1 + index % 200}:{5000 + index % 1000}",
    )


def query(service: str, *, watch: bool = False) -> NetworkServiceEndpointQuery:
    return NetworkServiceEndpointQuery(
        network_service_endpoint=NetworkServiceEndpoint(network_service_names=[service]),
        watch=watch,
    )


@asynccontextmanager
async def registry(url: str, **options: Any) -> AsyncIterator[tuple[RegistryHandle, Client]]:
    async with trio.open_nursery() as nursery:
        handle: RegistryHandle = await nursery.start(
            lambda task_status: serve_registry(url, task_status=task_status, **options)
        )
        async with open_client(handle.urls[0]) as client:
            yield handle, client
        nursery.cancel_scope.cancel()


async def find_at_scale(total: int, services: int, rounds: int) -> dict[str, float]:
    async with registry("inproc://bench-find") as (handle, client):
        started = time.perf_counter()
        for index in range(total):
            await handle.registry.register_endpoint(endpoint(index, services))
        log(f"find: {total} endpoints registered in {time.perf_counter() - started:.1f} s")
        per_service = total // services
        samples = []
        for round_ in range(rounds):
            service = f"service-{(round_ * 7919) % services}"
            began = time.perf_counter()
            async with client.nse_registry.find(query(service)) as stream:
                received = [response async for response in stream]
            samples.append((time.perf_counter() - began) * 1000)
            assert len(received) == per_service, (service, len(received))
        values = [handle.registry.store.endpoints.get(f"nse-{i}") for i in range(total)]
        scans = []
        for round_ in range(min(rounds, 20)):
            wanted = f"service-{round_ % services}"
            began = time.perf_counter()
            found = [v for v in values if v is not None and wanted in v.network_service_names]
            scans.append((time.perf_counter() - began) * 1000)
            assert len(found) == per_service
        p50 = statistics.median(samples)
        scan = statistics.median(scans)
        log(f"find: p50 {p50:.3f} ms, p99 {quantile(samples, 0.99):.3f} ms, scan {scan:.1f} ms")
        return {
            "registry_find_p50_ms_100k": round(p50, 3),
            "registry_find_p99_ms_100k": round(quantile(samples, 0.99), 3),
            "registry_find_scan_p50_ms": round(scan, 3),
            "registry_find_vs_scan_ratio": round(scan / p50, 1),
        }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def register_rate(url: str, count: int, *, concurrency: int = 1, **options: Any) -> float:
    """Registrations per second over the inproc carrier, ``concurrency`` callers at a time."""
    async with registry(url, **options) as (_, client):
        pending = iter(range(count))

        async def caller() -> None:
            for index in pending:
                await client.nse_registry.register(endpoint(index, 100))

        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(caller)
        return count / (time.perf_counter() - began)


async def register_all(
    handle: RegistryHandle, endpoints: list[NetworkServiceEndpoint], concurrency: int
) -> None:
    """Register every endpoint through ``handle``'s registry, ``concurrency`` at a time."""
    pending = iter(endpoints)

    async def worker() -> None:
        for nse in pending:
            await handle.registry.register_endpoint(nse)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


async def expiry_lateness(
    url: str,
    count: int,
    spread: float,
    *,
    head_start: float,
    concurrency: int = 1,
    watch_url: str | None = None,
    stop_first: bool = False,
    **options: Any,
) -> dict[str, float]:
    """p50/p99/max lateness (ms) of deleted=true events after the entries' expiration times.

    Entries are registered through the registry at ``url``; the watcher runs on the registry at
    ``watch_url`` (a second replica, same options) or on the same one. ``stop_first`` stops the
    registering replica once everything is registered, so only the store's backstop can delete.
    """
    clock = current_clock()
    lateness: list[float] = []
    done = trio.Event()

    async def watch(client: Client, task_status: trio.TaskStatus[None]) -> None:
        async with client.nse_registry.find(query("service-0", watch=True)) as stream:
            task_status.started()
            async for response in stream:
                if not response.deleted:
                    continue
                expires = response.network_service_endpoint.expiration_time
                assert expires is not None
                lateness.append((trio.current_time() - clock.deadline(expires)) * 1000)
                if len(lateness) == count:
                    done.set()
                    return

    async with trio.open_nursery() as nursery:
        async with AsyncExitStack() as stack:
            handle, client = await stack.enter_async_context(registry(url, **options))
            if watch_url is not None:
                _, client = await stack.enter_async_context(registry(watch_url, **options))
            watcher = await stack.enter_async_context(trio.open_nursery())
            await watcher.start(watch, client)
            first = trio.current_time() + head_start
            batch = []
            for index in range(count):
                nse = endpoint(index, 1)
                nse.expiration_time = clock.timestamp(first + spread * index / count)
                batch.append(nse)
            await register_all(handle, batch, concurrency)
            assert trio.current_time() < first, "registration took longer than the head start"
            if stop_first:
                await handle.supervisor.terminate_child("entries")
            with trio.fail_after(first + spread + 30 - trio.current_time()):
                await done.wait()
            watcher.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return {
        "p50": round(statistics.median(lateness), 2),
        "p99": round(quantile(lateness, 0.99), 2),
        "max": round(max(lateness), 2),
    }


async def etcd_figures(args: argparse.Namespace) -> dict[str, Any]:
    """The etcd store's figures, with a real etcd started for the run (skipped without one)."""
    if shutil.which("etcd") is None:
        log("etcd: not installed, etcd figures skipped")
        return {"etcd": "not installed"}
    sys.path.insert(0, str(ROOT))
    from tests.etcd_server import open_etcd_server

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        async with open_etcd_server(Path(directory), name="trionsm-bench") as etcd:
            store = f"etcd://{etcd.endpoint}/bench"
            rate = await register_rate("inproc://bench-register-etcd", 1000, store=store)
            results["registry_register_per_s_etcd"] = round(rate)
            log(f"register: {rate:.0f}/s over inproc, etcd store")
            concurrent = await register_rate(
                "inproc://bench-register-etcd-32", 640, store=f"{store}-32", concurrency=32
            )
            results["registry_register_per_s_etcd_32_concurrent"] = round(concurrent)
            log(f"register: {concurrent:.0f}/s, 32 at a time, etcd store")
            head = 2.0 + 1.5 * args.expiring / concurrent
            live = await expiry_lateness(
                "inproc://bench-expiry-etcd", args.expiring, args.spread,
                head_start=head, concurrency=32, store=f"{store}-live",
            )  # fmt: skip
            log(f"expiry lateness (etcd, live replica): {live}")
            backstop = await expiry_lateness(
                "inproc://bench-expiry-etcd-a", args.expiring, args.spread,
                head_start=head, concurrency=32, watch_url="inproc://bench-expiry-etcd-b",
                stop_first=True, store=f"{store}-backstop",
            )  # fmt: skip
            log(f"expiry lateness (etcd, lease backstop): {backstop}")
    results["registry_expiry_lateness_p99_ms_etcd"] = live["p99"]
    results["registry_expiry_lateness_p50_ms_etcd"] = live["p50"]
    results["registry_expiry_lateness_p99_ms_etcd_backstop"] = backstop["p99"]
    results["registry_expiry_lateness_p50_ms_etcd_backstop"] = backstop["p50"]
    return results


async def entry_kib(count: int) -> float:
    async with registry("inproc://bench-memory") as (handle, _):
        for index in range(100):  # warm caches and interned strings
            await handle.registry.register_endpoint(endpoint(count + index, 100))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            await handle.registry.register_endpoint(endpoint(index, 100))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) / count / 1024


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results.update(await find_at_scale(args.endpoints, args.services, args.rounds))
    gc.collect()
    rate = await register_rate("inproc://bench-register", args.registrations)
    results["registry_register_per_s"] = round(rate)
    log(f"register: {rate:.0f}/s over inproc")
    gc.collect()
    late = await expiry_lateness(
        "inproc://bench-expiry", args.expiring, args.spread, head_start=1.0 + args.expiring / 2000
    )
    log(f"expiry lateness (memory): {late}")
    results["registry_expiry_lateness_p50_ms"] = late["p50"]
    results["registry_expiry_lateness_p99_ms"] = late["p99"]
    results["registry_expiry_lateness_max_ms"] = late["max"]
    results["registry_entry_kib"] = round(await entry_kib(args.memory_entries), 2)
    log(f"memory: {results['registry_entry_kib']} KiB per endpoint")
    if not args.no_etcd:
        results.update(await etcd_figures(args))
    results["targets"] = TARGETS
    results["meets_targets"] = {
        key: results[key] <= target for key, target in TARGETS.items() if key in results
    }
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--registrations", type=int, default=5_000)
    parser.add_argument("--expiring", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=10.0)
    parser.add_argument("--memory-entries", type=int, default=20_000)
    parser.add_argument("--no-etcd", action="store_true", help="skip the etcd store's figures")
    return parser.parse_args()


if __name__ == "__main__":
    print(json.dumps(trio.run(main, parse_args())))

"""Data-plane benchmark: KERNEL wires made by the mesh in real namespaces, local and remote.

Prints one JSON object (last line of stdout); progress goes to stderr. Needs root (namespaces,
veth pairs, vxlan devices) and iperf3. Every role runs in this process (``open_mesh(kernel=True)``,
no-copy inproc carriers); only the interfaces live in namespaces the mesh makes and deletes.
Addresses come from 169.254.0.0/16 only. Two groups of figures, each from a mesh of its own
(``--only local|remote`` runs one): the local ones on one node (veth wires), the remote ones
on two nodes whose underlay namespaces share the mesh's bridge (VXLAN wires; the NSC's
interface on node 0, the NSE's on node 1). The same functions measure both groups:
:func:`request_figures` and :func:`throughput_figures`, over a :class:`Group` saying what differs.

One function per figure; :func:`main` collects them:

* ``kernel_request_p50_ms`` (target <= 80) and ``kernel_request_p99_ms``: a new local KERNEL
  connection, from the Request until an ICMP echo through the new wire (client namespace ->
  endpoint namespace) has been answered; sequential, each closed before the next.
* ``veth_throughput_ratio`` (target >= 0.9): iperf3 TCP from the NSC's namespace to a server in
  the NSE's namespace over a mesh wire, divided by the same over a plain veth pair made by hand in
  two fresh namespaces; the median of ``--runs`` runs of ``--seconds`` each (after a 1 s warm-up
  run of each), the two kinds interleaved so both see the same load. ``veth_mesh_gbps`` and
  ``veth_plain_gbps`` with it.
* ``kernel_connections_500_setup_s`` and ``kernel_connections_500_teardown_s``: ``--connections``
  (500) KERNEL connections requested at once, until every Request has returned (each wire made:
  the forwarder answers only then), then closed at once, until every Close has returned and every
  client interface is gone (null if some are still there ``LEFTOVER_WAIT`` later;
  ``..._closes_returned_s``, ``..._interfaces_left_at_close`` and
  ``..._interfaces_never_removed`` tell them apart). The clients' interfaces are ``nsm-<i>``
  spread over a few client namespaces (``--per-namespace`` each), the endpoint's in one
  namespace; no liveness checks (``kernel_connections_layout`` says what ran).
* ``request_p50_ms_during_teardown`` (target <= 3 x ``kernel_request_p50_ms``): the first figure's
  measure for a new request started every ``SAMPLE_INTERVAL`` while those connections tear down
  (until every Close has returned and no interface has gone for ``STILL``;
  ``request_samples_during_teardown``); their own Closes are not measured.
* ``remote_kernel_request_p50_ms`` (target <= 150) and ``remote_kernel_request_p99_ms``: the
  first figure's measure for a remote KERNEL connection (6 path segments, a vxlan end made on
  each node), ``--remote-requests`` of them.
* ``vxlan_throughput_ratio`` (target >= 0.9): the veth figure's measure over a mesh VXLAN wire,
  against a plain vxlan pair made by hand over the same underlay (VNI :data:`PLAIN_VNI`, two
  fresh namespaces). ``vxlan_mesh_gbps`` and ``vxlan_plain_gbps`` with it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from trionsm.actors.client import ClientConnection
from trionsm.kernel import ping
from trionsm.scenario import Mesh, open_mesh

TARGETS = {
    "kernel_request_p50_ms": 80.0,
    "veth_throughput_ratio": 0.9,
    "remote_kernel_request_p50_ms": 150.0,
    "vxlan_throughput_ratio": 0.9,
}
AT_LEAST = {"veth_throughput_ratio", "vxlan_throughput_ratio"}
"""Figures whose target is a floor (the others are ceilings)."""
SERVICE = "bench"
POOL = "169.254.0.0/16"
PLAIN = ("169.254.250.1", "169.254.250.2")  # the hand-made veth pair's addresses (/30)
PLAIN_VXLAN = ("169.254.251.1", "169.254.251.2")  # the hand-made vxlan pair's addresses (/30)
PLAIN_VNI = 4243
"""Odd: the mesh picks even VNIs from node 0 (169.254.200.1) to node 1 (.2), NSM's parity rule."""
SAMPLE_INTERVAL = 0.1
"""Seconds between new requests while the connections tear down."""
LEFTOVER_WAIT = 30.0
"""Seconds to wait, once every Close has returned, for the interfaces still there to go."""
STILL = 1.0
"""Seconds without a removal after which the teardown counts as over for the samples."""


@attrs.frozen
class Group:
    """What differs between the local and the remote figures (:data:`GROUPS`).

    Attributes:
        name: ``local`` or ``remote``, as ``--only`` names it.
        request: the request figures' prefix (``<request>_p50_ms``).
        throughput: the throughput figures' prefix (``<throughput>_throughput_ratio``).
        service: the network service of the group's endpoint.
        nodes: the mesh's nodes; clients connect through node 0.
        endpoint_node: the node the endpoint registers through.
        netns_prefix: the start of the names of the group's namespaces.
        plain: makes the hand-made baseline pair: ``plain(mesh, left, right, addresses)``.
        plain_addresses: that pair's addresses (/30) in ``left`` and ``right``.
    """

    name: str
    request: str
    throughput: str
    service: str
    nodes: int
    endpoint_node: int
    netns_prefix: str
    plain: Callable[[Mesh, str, str, tuple[str, str]], Awaitable[None]]
    plain_addresses: tuple[str, str]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def netns_name(url: str) -> str:
    return url.removeprefix("file:///run/netns/")


def destination(conn: ClientConnection) -> str:
    """The endpoint's address on the connection's wire."""
    assert conn.connection is not None
    assert conn.connection.context is not None
    assert conn.connection.context.ip_context is not None
    return str(conn.connection.context.ip_context.dst_ip_addrs[0]).split("/")[0]


async def request_until_ping(
    mesh: Mesh, netns: str, interface: str = "nsm-1", *, service: str = SERVICE, node: int = 0
) -> float:
    """Milliseconds from a new KERNEL Request (through ``node``'s nsmgr) until a ping through its
    wire is answered (the connection is closed afterwards, outside the measure)."""
    began = time.perf_counter()
    async with mesh.connect(
        f"kernel://{service}/{interface}",
        netns=netns,
        node=node,
        liveness=False,
        request_timeout=60,
    ) as conn:
        target = destination(conn)
        while not await ping(netns, target, timeout=0.2, netlink=mesh.netlink):
            pass
        return (time.perf_counter() - began) * 1000


async def request_figures(mesh: Mesh, group: Group, requests: int) -> dict[str, Any]:
    """``<group.request>_p50_ms`` / ``_p99_ms`` / ``_samples``: ``requests`` sequential
    :func:`request_until_ping` through node 0 from a fresh namespace, after one to warm up."""
    client = await mesh.add_netns(f"{group.netns_prefix}c-")
    await request_until_ping(mesh, client, service=group.service)  # handle threads, caches
    samples = [
        await request_until_ping(mesh, client, service=group.service) for _ in range(requests)
    ]
    name = group.request
    return {
        f"{name}_p50_ms": round(statistics.median(samples), 2),
        f"{name}_p99_ms": round(quantile(samples, 0.99), 2),
        f"{name}_samples": len(samples),
    }


async def throughput_figures(
    name: str, wire: tuple[str, str, str], plain: tuple[str, str, str], runs: int, seconds: float
) -> dict[str, Any]:
    """``<name>_throughput_ratio`` and its parts: iperf3 over ``wire`` against ``plain``, each
    ``(client netns, server netns, server address)``; after a 1 s warm-up run of each (the first
    run of a session is the slowest, whatever its path), ``runs`` runs of each, interleaved and
    each first every other run, so both see the same load; the ratio of the medians."""
    await iperf(*wire, 1)
    await iperf(*plain, 1)
    mesh_bps: list[float] = []
    plain_bps: list[float] = []
    for run in range(runs):
        for kind in ("mesh", "plain") if run % 2 == 0 else ("plain", "mesh"):
            if kind == "mesh":
                mesh_bps.append(await iperf(*wire, seconds))
            else:
                plain_bps.append(await iperf(*plain, seconds))
        log(f"{name} iperf3 run {run + 1}: mesh {mesh_bps[-1] / 1e9:.2f} Gbit/s, plain "
            f"{plain_bps[-1] / 1e9:.2f} Gbit/s")  # fmt: skip
    mesh_median, plain_median = statistics.median(mesh_bps), statistics.median(plain_bps)
    return {
        f"{name}_throughput_ratio": round(mesh_median / plain_median, 3),
        f"{name}_mesh_gbps": round(mesh_median / 1e9, 2),
        f"{name}_plain_gbps": round(plain_median / 1e9, 2),
        f"{name}_run_ratios": [round(m / p, 3) for m, p in zip(mesh_bps, plain_bps, strict=True)],
        f"{name}_runs": runs,
        f"{name}_run_seconds": seconds,
    }


# -- figures ---------------------------------------------------------------------------------------


async def throughput(
    mesh: Mesh, group: Group, nse_netns: str, runs: int, seconds: float
) -> dict[str, Any]:
    """``<group.throughput>_throughput_ratio``: iperf3 over a mesh wire (through node 0 to the
    endpoint in ``nse_netns``) against the group's hand-made pair."""
    client = await mesh.add_netns(f"{group.netns_prefix}t-")
    plain = f"{group.netns_prefix}p-"
    left, right = await mesh.add_netns(plain), await mesh.add_netns(plain)
    await group.plain(mesh, left, right, group.plain_addresses)
    async with mesh.connect(
        f"kernel://{group.service}/nsm-1", netns=client, liveness=False
    ) as conn:
        wire = (client, nse_netns, destination(conn))
        baseline = (left, right, group.plain_addresses[1])
        return await throughput_figures(group.throughput, wire, baseline, runs, seconds)


async def kernel_connections(
    mesh: Mesh, count: int, per_namespace: int, baseline_p50_ms: float
) -> dict[str, Any]:
    """``kernel_connections_<N>_setup_s`` / ``_teardown_s`` and, while those tear down,
    ``request_p50_ms_during_teardown``."""
    namespaces = [await mesh.add_netns("tnsm-bm-") for _ in range(math.ceil(count / per_namespace))]
    probe = await mesh.add_netns("tnsm-bq-")
    await request_until_ping(mesh, probe)  # the probe namespace's handle threads are warm
    opened = 0
    all_open, release, torn_down = trio.Event(), trio.Event(), trio.Event()
    failures: list[BaseException] = []
    samples: list[float] = []

    async def hold(index: int) -> None:
        nonlocal opened
        netns = namespaces[index // per_namespace]
        url = f"kernel://{SERVICE}/nsm-{index % per_namespace}"
        try:
            async with mesh.connect(url, netns=netns, liveness=False, request_timeout=300):
                opened += 1
                if opened == count:
                    all_open.set()
                await release.wait()
        except Exception as exc:  # reported below; the others go on
            failures.append(exc)
            all_open.set()

    async def sample(index: int) -> None:
        samples.append(await request_until_ping(mesh, probe, f"nsm-p{index}"))

    async def sample_requests() -> None:
        """A new request every SAMPLE_INTERVAL until the teardown is over (at least one),
        each on its own (its Close, queued behind the teardown, is not measured)."""
        async with trio.open_nursery() as samplers:
            index = 0
            while index == 0 or not torn_down.is_set():
                samplers.start_soon(sample, index)
                index += 1
                await trio.sleep(SAMPLE_INTERVAL)

    async with trio.open_nursery() as nursery:
        began = time.perf_counter()
        async with trio.open_nursery() as holders:
            for index in range(count):
                holders.start_soon(hold, index)
            await all_open.wait()
            if failures:
                raise RuntimeError(f"{len(failures)} connections failed: {failures[0]!r}")
            setup = time.perf_counter() - began
            log(f"{count} KERNEL connections up in {setup:.2f} s")
            wires = await count_links(namespaces)
            began = time.perf_counter()
            release.set()
            nursery.start_soon(sample_requests)
        closed = time.perf_counter() - began
        left_at_close = left = await count_links(namespaces)
        with trio.move_on_after(LEFTOVER_WAIT):
            while left:
                await trio.sleep(STILL)
                before, left = left, await count_links(namespaces)
                if left == before:
                    torn_down.set()  # nothing is being removed now: no more samples
        teardown = time.perf_counter() - began
        torn_down.set()
    log(
        f"... Closes returned in {closed:.2f} s ({left_at_close} interfaces left then, {left} "
        f"after {teardown:.2f} s); {len(samples)} requests meanwhile"
    )
    if wires != count:
        raise RuntimeError(f"{wires} client interfaces after setup, expected {count}")
    during = statistics.median(samples)
    return {
        f"kernel_connections_{count}_setup_s": round(setup, 2),
        f"kernel_connections_{count}_teardown_s": round(teardown, 2) if left == 0 else None,
        f"kernel_connections_{count}_closes_returned_s": round(closed, 2),
        f"kernel_connections_{count}_interfaces_left_at_close": left_at_close,
        f"kernel_connections_{count}_interfaces_never_removed": left,
        "kernel_connections_layout": (
            f"{count} connections, interfaces nsm-0..nsm-{min(count, per_namespace) - 1} in "
            f"{len(namespaces)} client namespaces, one endpoint namespace, no liveness checks"
        ),
        "request_p50_ms_during_teardown": round(during, 2),
        "request_p99_ms_during_teardown": round(quantile(samples, 0.99), 2),
        "request_samples_during_teardown": len(samples),
        "request_during_teardown_ratio": round(during / baseline_p50_ms, 2),
    }


# -- helpers ---------------------------------------------------------------------------------------


async def plain_veth(mesh: Mesh, left: str, right: str, addresses: tuple[str, str]) -> None:
    """A veth pair ``vp`` between namespaces ``left`` and ``right`` (``mesh`` is not needed),
    with ``addresses``, up."""
    a, b = netns_name(left), netns_name(right)
    await trio.run_process(
        ["ip", "-n", a, "link", "add", "vp", "type", "veth", "peer", "name", "vp", "netns", b]
    )
    await address_pair((left, right), addresses)


async def plain_vxlan(mesh: Mesh, left: str, right: str, addresses: tuple[str, str]) -> None:
    """A vxlan pair ``vp`` by hand: made in node 0's and node 1's underlay (the mesh's tunnel
    addresses, VNI :data:`PLAIN_VNI`, learning off, bound to ``ul0``), moved into ``left`` and
    ``right``, with ``addresses``, up. The devices go with their namespaces when the mesh exits."""
    underlay = mesh.underlay
    assert underlay is not None
    for node, peer, netns in ((0, 1, left), (1, 0, right)):
        here = netns_name(underlay.url(node))
        await trio.run_process(
            ["ip", "-n", here, "link", "add", "vp", "type", "vxlan", "id", str(PLAIN_VNI),
             "local", underlay.address(node), "remote", underlay.address(peer),
             "dstport", "4789", "nolearning", "dev", "ul0"]
        )  # fmt: skip
        await trio.run_process(["ip", "-n", here, "link", "set", "vp", "netns", netns_name(netns)])
    await address_pair((left, right), addresses)


async def address_pair(namespaces: tuple[str, str], addresses: tuple[str, str]) -> None:
    """Give ``vp`` in each of ``namespaces`` its address of ``addresses`` (/30); ``vp`` and
    ``lo`` up."""
    for url, address in zip(namespaces, addresses, strict=True):
        name = netns_name(url)
        await trio.run_process(["ip", "-n", name, "addr", "add", f"{address}/30", "dev", "vp"])
        await trio.run_process(["ip", "-n", name, "link", "set", "vp", "up"])
        await trio.run_process(["ip", "-n", name, "link", "set", "lo", "up"])


async def iperf(client: str, server: str, address: str, seconds: float) -> float:
    """Bits per second received in one iperf3 TCP run from ``client`` to a one-off server in
    ``server`` bound to ``address`` (the server is reaped by its PID)."""
    listening = trio.Event()
    process = await trio.lowlevel.open_process(
        [
            "ip",
            "netns",
            "exec",
            netns_name(server),
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
            "-B",
            address,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    async def drain() -> None:  # read all it prints, so it never blocks on a full pipe
        assert process.stdout is not None
        seen = b""
        async with process.stdout:
            while chunk := await process.stdout.receive_some():
                seen = (seen + chunk)[-4096:]
                if b"listening" in seen:
                    listening.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            with trio.fail_after(10):
                await listening.wait()
            command = ["iperf3", "-c", address, "-t", f"{seconds:g}", "-J"]
            done = await trio.run_process(
                ["ip", "netns", "exec", netns_name(client), *command], capture_stdout=True
            )
            with trio.fail_after(10):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
    report = json.loads(done.stdout)
    return float(report["end"]["sum_received"]["bits_per_second"])


async def count_links(namespaces: list[str]) -> int:
    """Interfaces other than ``lo`` in ``namespaces`` (``ip -j link``)."""
    total = 0
    for url in namespaces:
        done = await trio.run_process(
            ["ip", "-j", "-n", netns_name(url), "link", "show"], capture_stdout=True
        )
        total += sum(link["ifname"] != "lo" for link in json.loads(done.stdout))
    return total


async def timed(what: str, figure: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    began = time.perf_counter()
    result = await figure()
    log(f"{what} ({time.perf_counter() - began:.1f} s): {result}")
    return result


# -- groups and main ------------------------------------------------------------------------------


LOCAL = Group(
    name="local",
    request="kernel_request",
    throughput="veth",
    service=SERVICE,
    nodes=1,
    endpoint_node=0,
    netns_prefix="tnsm-b",
    plain=plain_veth,
    plain_addresses=PLAIN,
)
REMOTE = Group(
    name="remote",
    request="remote_kernel_request",
    throughput="vxlan",
    service="bench-remote",
    nodes=2,
    endpoint_node=1,
    netns_prefix="tnsm-br",
    plain=plain_vxlan,
    plain_addresses=PLAIN_VXLAN,
)
GROUPS = (LOCAL, REMOTE)


async def group_figures(group: Group, requests: int, args: argparse.Namespace) -> dict[str, Any]:
    """The figures of ``group``, from a kernel mesh of its own (``group.nodes`` nodes, the
    endpoint on ``group.endpoint_node``); the local group's connection figures too."""
    results: dict[str, Any] = {}
    async with open_mesh(group.nodes, kernel=True, roundtrip_bytes=False) as mesh:
        nse_netns = await mesh.add_netns(f"{group.netns_prefix}e-")
        await mesh.register_service(group.service)
        await mesh.add_endpoint(
            "nse-1", group.service, node=group.endpoint_node, cidr=POOL, netns=nse_netns
        )
        results.update(
            await timed(f"{group.name} request", lambda: request_figures(mesh, group, requests))
        )
        results.update(
            await timed(
                f"{group.throughput} throughput",
                lambda: throughput(mesh, group, nse_netns, args.runs, args.seconds),
            )
        )
        if group is LOCAL:
            results.update(
                await timed(
                    f"{args.connections} connections",
                    lambda: kernel_connections(
                        mesh, args.connections, args.per_namespace, results["kernel_request_p50_ms"]
                    ),
                )
            )
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    requests = {LOCAL.name: args.requests, REMOTE.name: args.remote_requests}
    for group in GROUPS:
        if args.only in (None, group.name):
            results.update(await group_figures(group, requests[group.name], args))
    targets = {key: target for key, target in TARGETS.items() if key in results}
    if "request_p50_ms_during_teardown" in results:
        targets["request_p50_ms_during_teardown"] = round(3 * results["kernel_request_p50_ms"], 2)
    results["targets"] = targets
    results["targets_at_least"] = sorted(AT_LEAST & targets.keys())
    results["meets_targets"] = {
        key: (results[key] >= target if key in AT_LEAST else results[key] <= target)
        for key, target in targets.items()
    }
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", choices=[group.name for group in GROUPS], help="one group of figures only"
    )
    parser.add_argument("--requests", type=int, default=100, help="local KERNEL requests timed")
    parser.add_argument(
        "--remote-requests", type=int, default=50, help="remote KERNEL requests timed"
    )
    parser.add_argument("--runs", type=int, default=3, help="iperf3 runs of each kind")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per iperf3 run")
    parser.add_argument("--connections", type=int, default=500, help="concurrent connections")
    parser.add_argument(
        "--per-namespace", type=int, default=50, help="client interfaces per namespace"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 10 requests of each group, 1 iperf3 run of 2 s, 50 connections",
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.remote_requests, args.runs, args.seconds = 10, 10, 1, 2.0
        args.connections = min(args.connections, 50)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if os.geteuid() != 0:
        print(
            json.dumps({"skipped": "needs root (network namespaces, veth pairs and vxlan devices)"})
        )
    else:
        print(json.dumps(trio.run(main, arguments)))

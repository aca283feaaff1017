"""Data-plane benchmark: remote KERNEL connections over VXLAN between two nodes of a kernel mesh.

Prints one JSON object (last line of stdout); progress goes to stderr. Needs root (namespaces,
vxlan devices) and iperf3. Every role runs in this process (``open_mesh(nodes=2, kernel=True)``,
no-copy inproc carriers); the NSC's interface is on node 0, the NSE's on node 1, and the two
nodes' underlay namespaces share the mesh's bridge. Addresses come from 169.254.0.0/16 only.
The helpers (iperf3 runs, quantiles) are the local data-plane benchmark's (``dataplane.py``).

* ``remote_kernel_request_p50_ms`` (target <= 150) and ``remote_kernel_request_p99_ms``: a new
  remote KERNEL connection (6 path segments, a vxlan end made on each node), from the Request
  until an ICMP echo through the wire has been answered; sequential, each closed before the next.
* ``vxlan_throughput_ratio`` (target >= 0.9): iperf3 TCP from the NSC's namespace to a server in
  the NSE's namespace over a mesh VXLAN wire, divided by the same over a plain vxlan pair made by
  hand over the same underlay (VNI :data:`PLAIN_VNI`, two fresh namespaces); the median of
  ``--runs`` runs of ``--seconds`` each, the two kinds interleaved so both see the same load.
  ``vxlan_mesh_gbps`` and ``vxlan_plain_gbps`` with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import trio
from dataplane import destination, iperf, log, netns_name, quantile, timed

from trionsm.kernel import ping
from trionsm.scenario import Mesh, open_mesh

TARGETS = {"remote_kernel_request_p50_ms": 150.0, "vxlan_throughput_ratio": 0.9}
AT_LEAST = {"vxlan_throughput_ratio"}
"""Figures whose target is a floor (the others are ceilings)."""
SERVICE = "bench-remote"
POOL = "169.254.0.0/16"
PLAIN = ("169.254.251.1", "169.254.251.2")  # the hand-made vxlan pair's addresses (/30)
PLAIN_VNI = 4243
"""Odd: the mesh picks even VNIs from node 0 (169.254.200.1) to node 1 (.2), NSM's parity rule."""


async def remote_request_until_ping(mesh: Mesh, netns: str) -> float:
    """Milliseconds from a new remote KERNEL Request until a ping through its wire is answered
    (the connection is closed afterwards, outside the measure)."""
    began = time.perf_counter()
    async with mesh.connect(
        f"kernel://{SERVICE}/nsm-1", netns=netns, node=0, liveness=False, request_timeout=60
    ) as conn:
        target = destination(conn)
        while not await ping(netns, target, timeout=0.2, netlink=mesh.netlink):
            pass
        return (time.perf_counter() - began) * 1000


async def remote_kernel_request(mesh: Mesh, requests: int) -> dict[str, Any]:
    """``remote_kernel_request_p50_ms`` / ``_p99_ms``: sequential remote Requests until a ping."""
    client = await mesh.add_netns("tnsm-brc-")
    await remote_request_until_ping(mesh, client)  # warm up: handle threads, caches
    samples = [await remote_request_until_ping(mesh, client) for _ in range(requests)]
    return {
        "remote_kernel_request_p50_ms": round(statistics.median(samples), 2),
        "remote_kernel_request_p99_ms": round(quantile(samples, 0.99), 2),
        "remote_kernel_request_samples": len(samples),
    }


async def vxlan_throughput(mesh: Mesh, nse_netns: str, runs: int, seconds: float) -> dict[str, Any]:
    """``vxlan_throughput_ratio``: iperf3 over a mesh VXLAN wire against a hand-made pair."""
    client = await mesh.add_netns("tnsm-brt-")
    left, right = await mesh.add_netns("tnsm-brp-"), await mesh.add_netns("tnsm-brp-")
    await plain_vxlan(mesh, left, right)
    mesh_bps, plain_bps = [], []
    async with mesh.connect(
        f"kernel://{SERVICE}/nsm-1", netns=client, node=0, liveness=False
    ) as conn:
        target = destination(conn)
        for run in range(runs):  # interleaved, and each kind first every other run
            for kind in ("mesh", "plain") if run % 2 == 0 else ("plain", "mesh"):
                if kind == "mesh":
                    mesh_bps.append(await iperf(client, nse_netns, target, seconds))
                else:
                    plain_bps.append(await iperf(left, right, PLAIN[1], seconds))
            log(f"iperf3 run {run + 1}: mesh {mesh_bps[-1] / 1e9:.2f} Gbit/s, plain "
                f"{plain_bps[-1] / 1e9:.2f} Gbit/s")  # fmt: skip
    mesh_median, plain_median = statistics.median(mesh_bps), statistics.median(plain_bps)
    return {
        "vxlan_throughput_ratio": round(mesh_median / plain_median, 3),
        "vxlan_mesh_gbps": round(mesh_median / 1e9, 2),
        "vxlan_plain_gbps": round(plain_median / 1e9, 2),
        "vxlan_runs": runs,
        "vxlan_run_seconds": seconds,
    }


async def plain_vxlan(mesh: Mesh, left: str, right: str) -> None:
    """A vxlan pair by hand: made in node 0's and node 1's underlay (the mesh's tunnel
    addresses, learning off, bound to ``ul0``), moved into ``left`` and ``right``, PLAIN's
    addresses, up. The devices go with their namespaces when the mesh exits."""
    underlay = mesh.underlay
    assert underlay is not None
    ends = ((0, 1, left, PLAIN[0]), (1, 0, right, PLAIN[1]))
    for node, peer, netns, address in ends:
        here = netns_name(underlay.url(node))
        await trio.run_process(
            ["ip", "-n", here, "link", "add", "vp", "type", "vxlan", "id", str(PLAIN_VNI),
             "local", underlay.address(node), "remote", underlay.address(peer),
             "dstport", "4789", "nolearning", "dev", "ul0"]
        )  # fmt: skip
        await trio.run_process(["ip", "-n", here, "link", "set", "vp", "netns", netns_name(netns)])
        name = netns_name(netns)
        await trio.run_process(["ip", "-n", name, "addr", "add", f"{address}/30", "dev", "vp"])
        await trio.run_process(["ip", "-n", name, "link", "set", "vp", "up"])
        await trio.run_process(["ip", "-n", name, "link", "set", "lo", "up"])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with open_mesh(nodes=2, kernel=True, roundtrip_bytes=False) as mesh:
        nse_netns = await mesh.add_netns("tnsm-bre-")
        await mesh.register_service(SERVICE)
        await mesh.add_endpoint("nse-1", SERVICE, node=1, cidr=POOL, netns=nse_netns)
        results.update(
            await timed("remote request", lambda: remote_kernel_request(mesh, args.requests))
        )
        results.update(
            await timed(
                "vxlan throughput",
                lambda: vxlan_throughput(mesh, nse_netns, args.runs, args.seconds),
            )
        )
    results["targets"] = dict(TARGETS)
    results["targets_at_least"] = sorted(AT_LEAST)
    results["meets_targets"] = {
        key: (results[key] >= target if key in AT_LEAST else results[key] <= target)
        for key, target in TARGETS.items()
    }
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="remote requests timed")
    parser.add_argument("--runs", type=int, default=3, help="iperf3 runs of each kind")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per iperf3 run")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10 requests, 1 iperf3 run of 2 s"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.runs, args.seconds = 10, 1, 2.0
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root (network namespaces and vxlan devices)"}))
    else:
        print(json.dumps(trio.run(main, arguments)))

"""``trionsm nse``: a network service endpoint as its own process, serving until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import trio

from trionsm.actors.endpoint import serve_endpoint
from trionsm.actors.lease import serve_service_lease
from trionsm.api.registry import NetworkService

from .options import cidr, dial_url, labels, listen_url, mtu, name, netns, usage_error
from .serving import run_serving

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "nse",
        help="run a network service endpoint (point-to-point IPAM; kernel/noop mechanisms)",
        description="Serve a network service endpoint until SIGTERM or SIGINT, registered at its "
        "nsmgr (and unregistered on the way out). Each connection gets a point-to-point address "
        "pair from --cidr with routes to each other. With --netns it is an ICMP responder: the "
        "forwarder puts the endpoint's end of each KERNEL wire into that namespace, with the "
        "endpoint's address on it, so the kernel there answers the client's pings. Without "
        "--netns it takes NOOP connections only (KERNEL requests are refused, naming it). Prints "
        "'serving URL' on stdout once it accepts calls and is registered.",
    )
    parser.add_argument("--name", required=True, type=name, help="its name (registration)")
    parser.add_argument(
        "--service",
        action="append",
        required=True,
        type=name,
        metavar="NAME",
        help="a network service it serves (repeatable)",
    )
    parser.add_argument(
        "--cidr",
        action="append",
        required=True,
        type=cidr,
        metavar="CIDR",
        help="an address pool for point-to-point IPAM, e.g. 169.254.100.0/24 (repeatable: one "
        "IPv4 and one IPv6 pool give dual-stack pairs)",
    )
    parser.add_argument(
        "--listen",
        required=True,
        type=listen_url,
        metavar="URL",
        help="where it serves (unix:///path, tcp://HOST:PORT)",
    )
    parser.add_argument(
        "--nsmgr", required=True, type=dial_url, metavar="URL", help="its node's nsmgr"
    )
    parser.add_argument(
        "--labels",
        type=labels,
        metavar="K=V[,K=V...]",
        help="its labels for every service (matched by the services' selectors; added to each "
        "connection)",
    )
    parser.add_argument(
        "--register-service",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep each --service registered too, as NSM's icmp-responder does (default: yes; "
        "--no-register-service when an operator registers the services, with their matches)",
    )
    parser.add_argument(
        "--netns",
        type=netns,
        metavar="NAME|URL",
        help="the network namespace its end of each KERNEL wire goes into: a NAME made by "
        "'ip netns add NAME' (/run/netns/NAME) or a URL (file:///run/netns/NAME, "
        "file:///proc/PID/ns/net, inode://DEV/INO); it must exist",
    )
    parser.add_argument(
        "--mtu",
        type=mtu,
        help="the MTU its end of each KERNEL wire asks for (68..65535; the wire takes the "
        "smallest the client, the endpoint and the connection ask for)",
    )
    parser.add_argument(
        "--ipam-policy",
        choices=("polymorphic", "strict"),
        default="polymorphic",
        help="NSM's NSM_IPAM_POLICY: polymorphic (default) keeps a request's addresses from "
        "outside --cidr; strict drops them, so a client healed here from another endpoint "
        "gets this endpoint's addresses only",
    )


async def serve_nse(args: argparse.Namespace, *, task_status: trio.TaskStatus[Any]) -> None:
    """The endpoint of ``args`` (and its services' leases) until cancelled."""
    async with trio.open_nursery() as nursery:
        if args.register_service:
            for service in dict.fromkeys(args.service):
                await nursery.start(
                    partial(serve_service_lease, args.nsmgr, NetworkService(name=service))
                )
        handle = await nursery.start(
            partial(
                serve_endpoint,
                args.name,
                args.listen,
                services=list(dict.fromkeys(args.service)),
                registry=args.nsmgr,
                cidr=args.cidr,
                labels=args.labels,
                netns=args.netns,
                mtu=args.mtu,
                strict_ipam=args.ipam_policy == "strict",
            )
        )
        task_status.started(handle)


def run(args: argparse.Namespace) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the endpoint could not start, 2 for
    --mtu without --netns."""
    if args.mtu is not None and args.netns is None:
        return usage_error("nse", "--mtu", "is for KERNEL wires, which need --netns")
    return run_serving("nse", partial(serve_nse, args), lambda handle: [handle.url])

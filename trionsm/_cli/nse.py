"""``trionsm nse``: a network service endpoint as its own process, serving until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import trio

from trionsm.actors.endpoint import serve_endpoint
from trionsm.actors.lease import serve_service_lease
from trionsm.api.registry import NetworkService

from .options import cidr, dial_url, labels, listen_url, name
from .serving import run_serving

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "nse",
        help="run a network service endpoint (point-to-point IPAM; kernel/noop mechanisms)",
        description="Serve a network service endpoint until SIGTERM or SIGINT, registered at its "
        "nsmgr (and unregistered on the way out). Each connection gets a point-to-point address "
        "pair from --cidr with routes to each other; KERNEL and NOOP mechanisms are accepted. "
        "The endpoint answers the control plane only: the ICMP responder (an interface in the "
        "endpoint's namespace answering pings) comes with the kernel data plane, which is not "
        "built yet. Prints 'serving URL' on stdout once it accepts calls and is registered.",
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
            )
        )
        task_status.started(handle)


def run(args: argparse.Namespace) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the endpoint could not start."""
    return run_serving("nse", partial(serve_nse, args), lambda handle: [handle.url])

"""``trionsm forwarder``: a forwarder as its own process, serving until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import ipaddress
from functools import partial

from trionsm.actors._mechanisms import VXLAN
from trionsm.actors.forwarder import FORWARDER_LABELS, serve_forwarder

from .options import MECHANISMS, dial_url, labels, listen_url, mechanism, name, netns, usage_error
from .serving import kernel_access, run_serving

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "forwarder",
        help="run a forwarder (endpoint selection, mechanism negotiation, KERNEL wires)",
        description="Serve a forwarder until SIGTERM or SIGINT, registered at its nsmgr as "
        "service 'forwarder'. It discovers and selects endpoints, negotiates mechanisms and "
        "programs them: KERNEL plugs a veth pair between the client's and the endpoint's "
        "namespaces on this node (needs CAP_NET_ADMIN: root), NOOP carries the control plane "
        "only. Prints 'serving URL' on stdout once it accepts calls and is registered.",
    )
    parser.add_argument("--name", required=True, type=name, help="its name (registration)")
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
    default = ",".join(f"{k}={v}" for k, v in FORWARDER_LABELS.items())
    parser.add_argument(
        "--labels",
        type=labels,
        metavar="K=V[,K=V...]",
        help=f"its registration labels, matched by network services' forwarder selectors "
        f"(default {default})",
    )
    parser.add_argument(
        "--mechanism",
        action="append",
        type=mechanism,
        metavar="TYPE",
        help="a mechanism it programs (repeatable): kernel (veth wires on this node; needs "
        f"CAP_NET_ADMIN) or noop (control plane only); default: {' and '.join(MECHANISMS)}",
    )
    parser.add_argument(
        "--tunnel-ip",
        type=tunnel_ip,
        metavar="ADDR",
        help="its address on the nodes' network: KERNEL connections to endpoints on other "
        "nodes then go over VXLAN (UDP 4789) from this address (adds the VXLAN mechanism)",
    )
    parser.add_argument(
        "--underlay-netns",
        type=netns,
        metavar="URL",
        help="the network namespace holding --tunnel-ip (NAME, file:///run/netns/NAME, "
        "file:///proc/PID/ns/net, inode://DEV/INO; default: its own)",
    )


def tunnel_ip(text: str) -> str:
    """argparse type for ``--tunnel-ip``: an IPv4 or IPv6 address (no prefix length)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected an IP address") from None


def run(args: argparse.Namespace) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the forwarder could not start."""
    mechanisms = tuple(dict.fromkeys(args.mechanism or MECHANISMS.values()))
    if args.underlay_netns and not args.tunnel_ip:
        return usage_error("forwarder", "--underlay-netns", "needs --tunnel-ip")
    if args.tunnel_ip:
        mechanisms = tuple(dict.fromkeys((*mechanisms, VXLAN)))
    start = partial(
        serve_forwarder,
        args.name,
        args.listen,
        nsmgr=args.nsmgr,
        labels=args.labels,
        mechanisms=mechanisms,
        tunnel_ip=args.tunnel_ip or "",
        underlay_netns=args.underlay_netns or "",
    )
    missing = None
    if MECHANISMS["kernel"] in mechanisms:
        missing = kernel_access(args.name, "the KERNEL mechanism (--mechanism kernel)")
    return run_serving("forwarder", start, lambda handle: [handle.url], precondition=missing)

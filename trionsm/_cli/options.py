"""Argument types shared by the sub-commands: durations, URLs, stores, names, labels, CIDRs,
mechanisms, network namespaces and MTUs.

Each raises ``argparse.ArgumentTypeError`` with the value and what is allowed, so a bad flag fails
up front with one clear line and exit status 2 (argparse names the flag).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys

import trio

from trionsm.actors._mechanisms import KERNEL, NOOP
from trionsm.errors import InvalidArgument, TrionsmError
from trionsm.transport import parse_url

__all__ = [
    "MECHANISMS",
    "cidr",
    "dial_url",
    "duration",
    "labels",
    "listen_url",
    "mechanism",
    "mtu",
    "name",
    "netns",
    "nsurl",
    "parse_duration",
    "store_url",
    "usage_error",
]

MECHANISMS = {"kernel": KERNEL, "noop": NOOP}
"""The mechanisms a forwarder can program, by their command-line names."""

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``60s``, ``1m30s``, ``500ms``, ``2h``, or a bare number of seconds.

    Raises:
        ValueError: anything else, or a duration that is not positive.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        position, seconds = 0, 0.0
        for match in _PART.finditer(value):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            position = match.end()
        if position != len(value) or not value:
            raise ValueError(
                f"{text!r} is not a duration; use e.g. 60s, 1m30s, 500ms, 2h or plain seconds"
            ) from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r}: a duration must be positive and finite")
    return seconds


def duration(text: str) -> float:
    """argparse type for durations."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listen_url(text: str) -> str:
    """argparse type for a URL to serve on (any dialable transport URL)."""
    try:
        address = parse_url(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    if not address.dialable:
        raise argparse.ArgumentTypeError(f"{text!r}: an inode:// URL cannot be listened on")
    return text


def store_url(text: str) -> str:
    """argparse type for ``--store``: ``memory`` or ``etcd://HOST:PORT[/PREFIX]``."""
    if text == "memory" or re.fullmatch(r"etcd://[^/\s]+:\d+(/\S*)?", text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: expected 'memory' or 'etcd://HOST:PORT[/PREFIX]' (e.g. etcd://127.0.0.1:2379)"
    )


def dial_url(text: str) -> str:
    """argparse type for a URL to call (an nsmgr, a registry)."""
    try:
        address = parse_url(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    if not address.dialable:
        raise argparse.ArgumentTypeError(f"{text!r}: an inode:// URL cannot be dialed")
    return text


def name(text: str) -> str:
    """argparse type for a name (nsmgr, forwarder, endpoint, network service)."""
    if not text or len(text) > 253:
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: a name has 1 to 253 characters")
    bad = next((c for c in text if c.isspace() or not c.isprintable() or c == "/"), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {bad!r} is not allowed in a name (no whitespace, control characters or /)"
        )
    return text


def labels(text: str) -> dict[str, str]:
    """argparse type for ``k=v,k2=v2`` (an empty value is allowed: ``k=``)."""
    found: dict[str, str] = {}
    for piece in text.split(","):
        key, equals, value = piece.strip().partition("=")
        if not equals or not key:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {piece!r} is not key=value; write e.g. app=web,tier=front"
            )
        found[key] = value
    return found


def cidr(text: str) -> str:
    """argparse type for an address pool (``169.254.100.0/24``, ``fd00::/64``)."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR: {exc}") from None
    if network.num_addresses < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a pool needs at least 2 addresses for a point-to-point pair"
        )
    return text.strip()


def nsurl(text: str) -> str:
    """argparse type for a network service URL (``kernel://my-service/nsm-1?app=web``)."""
    from trionsm.actors._nsurl import parse_nsurl

    try:
        parse_nsurl(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
    return text


def mechanism(text: str) -> str:
    """argparse type for ``--mechanism``: ``kernel`` or ``noop`` (any case); NSM's type string."""
    found = MECHANISMS.get(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(MECHANISMS)}")
    return found


def mtu(text: str) -> int:
    """argparse type for an interface MTU (68..65535, as the kernel and NSM allow)."""
    if not text.strip().isdigit() or not 68 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:20]!r}: an MTU is a number in 68..65535")
    return int(text)


def netns(text: str) -> str:
    """argparse type for a network namespace: a bare NAME (``/run/netns/NAME``, as ``ip netns``
    names them) or a URL (``file:///run/netns/NAME``, ``file:///proc/PID/ns/net``,
    ``inode://DEV/INO``). It must exist now and be a network namespace; returns its URL.
    """
    from trionsm.kernel import resolve_namespace

    value = text.strip()
    if "://" not in value:
        if not value or "/" in value or value in (".", ".."):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a namespace name (as in /run/netns/NAME) or a URL "
                "(file:///run/netns/NAME, file:///proc/PID/ns/net, inode://DEV/INO)"
            )
        value = f"file:///run/netns/{value}"
    try:
        trio.run(resolve_namespace, value)
    except TrionsmError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.reason}") from None
    return value


def usage_error(command: str, flag: str, reason: str) -> int:
    """Report a flag that is wrong given the others, as argparse does; returns exit status 2."""
    print(f"trionsm {command}: error: argument {flag}: {reason}", file=sys.stderr)
    return 2

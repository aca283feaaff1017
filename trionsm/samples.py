"""Realistic sample messages for tests, benchmarks and examples.

``sample_connection()`` is the Connection a forwarder sees on a 4-hop path (NSC, nsmgr, forwarder,
NSE): a KERNEL mechanism, an IP context, labels and one signed-token-sized path segment per hop,
about 2 KB on the wire. Addresses come from 169.254.0.0/16 only.
"""

from __future__ import annotations

import datetime

from trionsm.api.connection import Connection, Mechanism, Path, PathSegment
from trionsm.api.connectioncontext import ConnectionContext, IpContext, Route

__all__ = ["sample_connection"]

_HOPS = ("nsc-1", "nsmgr-node-1", "forwarder-node-1", "nse-icmp-1")


def sample_connection(segments: int = 4) -> Connection:
    """A fresh Connection with ``segments`` path segments (1 to 4), the last one current."""
    if not 1 <= segments <= len(_HOPS):
        raise ValueError(f"segments must be 1..{len(_HOPS)}, got {segments}")
    expires = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
    return Connection(
        id="4f0b7c2e-3f7e-4d1b-9a0f-5b9c8f6b2a11",
        network_service="icmp-responder",
        mechanism=Mechanism(
            cls="LOCAL",
            type="KERNEL",
            parameters={"inodeURL": "file:///proc/4242/ns/net", "name": "nsm-1", "MTU": "1446"},
        ),
        context=ConnectionContext(
            ip_context=IpContext(
                src_ip_addrs=["169.254.100.1/32"],
                dst_ip_addrs=["169.254.100.0/32"],
                src_routes=[Route(prefix="169.254.100.0/32")],
                dst_routes=[Route(prefix="169.254.100.1/32")],
                excluded_prefixes=["169.254.200.0/24"],
            ),
            mtu=1446,
        ),
        labels={"app": "nsc", "nodeName": "node-1"},
        path=Path(
            index=segments - 1,
            path_segments=[
                PathSegment(
                    name=hop,
                    id=f"{n:08d}-0000-4000-8000-000000000000",
                    token="eyJhbGciOiJFUzI1NiJ9." + "x" * 300 + f".sig{n}",
                    expires=expires,
                )
                for n, hop in enumerate(_HOPS[:segments])
            ],
        ),
        network_service_endpoint_name="nse-icmp-1",
        payload="IP",
    )

"""The Linux data plane through pyroute2: network namespaces, veth and VXLAN wires, addresses,
routes and liveness pings, run in worker threads.

Lands with the kernel data plane work; empty until then.
"""

from __future__ import annotations

__all__: list[str] = []

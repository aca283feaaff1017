"""A node's configuration as data: one frozen config per role, and the node's defaults.

Values here are already valid: ``trionsm node`` checks the TOML file and the flags (naming the
key, the value and what is allowed) before it builds these. :func:`serve_node` takes a
:class:`NodeConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs

from trionsm.identity import DEFAULT_TOKEN_LIFETIME

from ._mechanisms import KERNEL, NOOP, VXLAN
from ._reconcile import DEFAULT_RECONCILE_GRACE
from .forwarder import FORWARDER_LABELS
from .registry import DEFAULT_EXPIRY

__all__ = [
    "ADMIN_SOCKET",
    "DEFAULT_DIR",
    "DEFAULT_NSMGR_PORT",
    "DEFAULT_REGISTRY_PORT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "FORWARDER_MODES",
    "NSM_SOCKET",
    "ForwarderConfig",
    "NodeConfig",
    "NsmgrConfig",
    "RegistryConfig",
]

DEFAULT_DIR: Final = "/var/lib/networkservicemesh"
NSM_SOCKET: Final = "nsm.io.sock"
"""The nsmgr's socket in the node's directory (NSM's ``unix:///var/lib/.../nsm.io.sock``)."""
ADMIN_SOCKET: Final = "admin.sock"
"""The admin service's socket in the node's directory (``trionsm status`` dials it)."""
DEFAULT_NSMGR_PORT: Final = 5001
DEFAULT_REGISTRY_PORT: Final = 5002
"""NSM's registry port: listen on it (``[registry] listen``) to serve other nodes."""
FORWARDER_MODES: Final = ("internal", "external")
DEFAULT_SHUTDOWN_TIMEOUT: Final = 30.0
"""Seconds a node's whole stop may take (refuse new Requests, close the connections and remove
their wires, stop the roles): well above its bounded steps (a Close gives up after 5 s)."""


@attrs.frozen
class NsmgrConfig:
    """The nsmgr: where it listens (unix socket for workloads, TCP for other nodes)."""

    listen: tuple[str, ...]
    public_url: str | None = None
    token_lifetime: float = DEFAULT_TOKEN_LIFETIME


@attrs.frozen
class RegistryConfig:
    """The registry: in this node (``memory`` or etcd store) or a remote one (a URL)."""

    store: str = "memory"
    listen: tuple[str, ...] = ()
    expiry: float = DEFAULT_EXPIRY

    @property
    def remote(self) -> bool:
        """Whether ``store`` is a remote registry's URL (no registry runs in this node)."""
        return self.store != "memory" and not self.store.startswith("etcd://")


@attrs.frozen
class ForwarderConfig:
    """The node's forwarder (``mode = "external"``: a separate ``trionsm forwarder``)."""

    name: str
    listen: str
    mode: str = "internal"
    mechanisms: tuple[str, ...] = (KERNEL, NOOP)
    labels: tuple[tuple[str, str], ...] = tuple(FORWARDER_LABELS.items())
    registration_expiry: float | None = None
    tunnel_ip: str = ""
    underlay_netns: str = ""
    reconcile_grace: float = DEFAULT_RECONCILE_GRACE
    """Seconds a restarted forwarder keeps its unclaimed leftovers before it removes them."""

    @property
    def internal(self) -> bool:
        return self.mode == "internal"

    @property
    def kernel(self) -> bool:
        """Whether it programs kernel interfaces (KERNEL, or VXLAN through a tunnel IP)."""
        return self.internal and (KERNEL in self.mechanisms or VXLAN in self.mechanisms)


@attrs.frozen
class NodeConfig:
    """A whole node: its name, directory, each role's config, where the admin service listens
    (``trionsm status`` dials it), whether a stop keeps the data plane and how long the whole
    stop may take (``shutdown_timeout`` seconds)."""

    name: str
    dir: Path
    nsmgr: NsmgrConfig
    registry: RegistryConfig
    forwarder: ForwarderConfig
    admin_listen: tuple[str, ...] = ()
    restart_keep_dataplane: bool = False
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT

    @property
    def nsmgr_name(self) -> str:
        return f"nsmgr-{self.name}"

    @property
    def socket(self) -> Path:
        """The node's NSM socket: ``<dir>/nsm.io.sock``."""
        return self.dir / NSM_SOCKET

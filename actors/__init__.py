"""The NSM roles as supervised actors: nsmgr, forwarder, registry, endpoint, client, proxy.

Each connection, endpoint lease and registry entry is its own actor under a supervisor; see
the node tree in the README. The roles land one by one. Here so far:

* :mod:`trionsm.actors.registry`: the registry (``serve_registry``), imported as a subpackage.
* :func:`serve_lease` / :func:`serve_service_lease` / :func:`lease_spec` and :class:`Lease`: the
  LeaseActor keeping one endpoint (or network service) registered: Register, refresh at 2/3 of
  the remaining lifetime, re-Register when its watch on its own name breaks, Unregister on
  shutdown. Used by endpoints and forwarders.
"""

from __future__ import annotations

from .lease import Lease, lease_spec, serve_lease, serve_service_lease

__all__ = ["Lease", "lease_spec", "serve_lease", "serve_service_lease"]

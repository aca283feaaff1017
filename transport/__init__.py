"""How calls travel: ``inproc://``, gRPC (``unix://``, ``tcp://``) and ZeroMQ (``zmq+tcp://``,
``zmq+ipc://``), chosen by URL scheme, with one interface and one typed error mapping.

Lands with the API and transport work; empty until then.
"""

from __future__ import annotations

__all__: list[str] = []

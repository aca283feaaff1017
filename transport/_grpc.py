"""The gRPC carrier: NSM's wire format over ``tcp://`` and ``unix://``, via grpclib.

Theory of operation. grpclib is asyncio code; everything else in trionsm is Trio. Each server and
each client channel owns one trio-asyncio island (``_aio``): an asyncio loop inside the Trio run,
closed with its owner. Work crosses between the two worlds per call or per streamed message,
never per frame (a crossing costs about 100 µs):

* server (``_grpc_server``): grpclib's raw ``Stream`` API; one asyncio task per HTTP/2 stream
  reads and strictly decodes the request, crosses into Trio once to run the
  :class:`Dispatcher`, and sends the reply or the error status. Streamed replies cross back one at
  a time, so HTTP/2 flow control is the handler's backpressure.
* client (``_grpc_client``): a unary call is one crossing into a coroutine that makes the whole
  grpclib call; a stream is consumed by one asyncio task that hands replies to Trio through a
  memory channel.
* shared (``_grpc_wire``): the raw-bytes codec, strict protobuf decoding, the error trailers, and
  the HTTP/2 settings.

Cancellation: cancelling a Trio caller cancels its asyncio task, and grpclib resets the HTTP/2
stream; on the server, grpclib cancels the stream's task on a reset, a passed deadline or a dead
connection, which cancels the Trio handler. Both directions wait for the other side to finish.

Liveness: while streams are open, both ends PING every second and close a connection whose PING
is not acked within a second, so a dead or partitioned peer breaks its streams (UNAVAILABLE)
within about two seconds; an end whose own event loop is behind (the peer's bytes unread, its
decision late), or whose peer's host took the PING (a process paused in a long garbage
collection), waits instead of taking a live peer for dead, at most about ten seconds
(``_grpc_keepalive``). A client
PINGs only servers that say they welcome it (a SETTINGS parameter of ours): grpcio and grpc-go
servers close connections PINGed that often. Our servers
advertise a concurrent-stream limit of 2**31 - 1 (h2's default of 100 would make a grpclib
client queue the 101st stream silently). Against another server's limit, a streaming call that
would take one of the last tenth of its streams is ResourceExhausted naming the server and the
limit, so long-lived streams never leave unary calls (or themselves) waiting for good.

Wire compatibility: standard gRPC (interoperates with grpcio both ways). Errors carry the hop
and the service as binary trailing metadata (``trionsm-hop-bin``, ``trionsm-service-bin``).
"""

from __future__ import annotations

from ._grpc_client import GrpcChannel, open_grpc_channel
from ._grpc_server import GrpcServer, serve_grpc

__all__ = ["GrpcChannel", "GrpcServer", "open_grpc_channel", "serve_grpc"]

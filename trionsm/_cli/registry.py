"""``trionsm registry``: a standalone registry serving NSM's registry API until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from trionsm.actors.registry import DEFAULT_EXPIRY, serve_registry
from trionsm.errors import TrionsmError
from trionsm.supervision import StartError

from .options import duration, listen_url, store_url

__all__ = ["DEFAULT_LISTEN", "add_parser", "run"]

DEFAULT_LISTEN = "tcp://127.0.0.1:5002"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "registry",
        help="run a registry (NetworkServiceRegistry + NetworkServiceEndpointRegistry)",
        description="Serve NSM's registry API until SIGTERM or SIGINT. Prints 'serving URL' "
        "on stdout for each listener once it accepts calls.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        type=listen_url,
        metavar="URL",
        help=f"a URL to serve on (repeatable; tcp://, unix://, zmq+tcp://...; default "
        f"{DEFAULT_LISTEN}; tcp://HOST:0 picks a free port)",
    )
    parser.add_argument(
        "--store",
        type=store_url,
        default="memory",
        help="where registrations live: memory (default) or etcd://HOST:PORT[/PREFIX]",
    )
    parser.add_argument(
        "--expiry",
        type=duration,
        default=DEFAULT_EXPIRY,
        metavar="DURATION",
        help=f"longest endpoint registration lifetime without a refresh (default "
        f"{DEFAULT_EXPIRY:g}s)",
    )
    parser.add_argument("--name", default="registry", help="this registry's name in errors")


async def _serve(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                lambda task_status: serve_registry(
                    args.listen or [DEFAULT_LISTEN],
                    store=args.store,
                    expiry=args.expiry,
                    hop=args.name,
                    task_status=task_status,
                )
            )
            for url in handle.urls:
                print(f"serving {url}", flush=True)
            async for signum in signals:
                print(f"stopping on {signal.Signals(signum).name}", file=sys.stderr, flush=True)
                nursery.cancel_scope.cancel()
                break


def _start_failure(exc: BaseException) -> BaseException | None:
    """The first StartError/TrionsmError in ``exc`` (through groups), by its root cause."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _start_failure(inner)
            if found is not None:
                return found
        return None
    if isinstance(exc, StartError):
        return _start_failure(exc.__cause__) if exc.__cause__ is not None else exc
    return exc if isinstance(exc, TrionsmError | OSError) else None


def run(args: argparse.Namespace) -> int:
    """Run until a signal; 0 after a clean stop, 1 when the registry could not start."""
    try:
        trio.run(_serve, args)
    except (Exception, BaseExceptionGroup) as exc:
        failure = _start_failure(exc)
        if failure is None:
            raise
        print(f"trionsm registry: cannot start: {failure}", file=sys.stderr)
        return 1
    return 0

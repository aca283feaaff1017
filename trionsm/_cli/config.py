"""``trionsm node``'s configuration: a TOML file, flags over it, one frozen config per role.

Everything is checked up front, before anything starts: a bad value fails with
:class:`ConfigError` naming where it came from (the file or the flag), the key, the value and
what is allowed. Unknown keys and sections are errors too (a typo never silently keeps a
default). The file (every key optional; the values shown are the defaults)::

    name = "<host name>"                  # the node's name: nsmgr-<name>, forwarder-<name>
    dir = "/var/lib/networkservicemesh"   # the node's sockets (one directory per node on a host)
    restart_keep_dataplane = false        # stop without closing connections or removing wires
    shutdown_timeout = "30s"              # the whole stop; past it: exit 1 naming what still ran

    [nsmgr]
    listen = ["unix://<dir>/nsm.io.sock", "tcp://127.0.0.1:5001"]
    public_url = ""                       # default: the first listen URL that is not unix://
    token_lifetime = "10m"                # NSM's max token lifetime: each hop's expiry

    [registry]
    store = "memory"                      # memory | etcd://HOST:PORT[/PREFIX] | a remote URL
    listen = []                           # extra URLs for the in-process registry (e.g. :5002)
    expiry = "1m"                         # longest registration lifetime without a refresh

    [admin]
    listen = ["unix://<dir>/admin.sock"]  # trionsm status --node URL dials it

    [forwarder]
    mode = "internal"                     # internal (in this node's tree) | external
    name = "forwarder-<name>"
    listen = "unix://<dir>/forwarder.sock"
    mechanisms = ["kernel", "noop"]
    labels = { p2p = "true" }
    registration_expiry = "1m"            # its lease; refreshed at 2/3 of what was granted
    tunnel_ip = ""                        # its underlay address: adds VXLAN (remote KERNEL)
    underlay_netns = ""                   # the namespace holding tunnel_ip
    reconcile_grace = "3m"                # a restarted forwarder's leftovers wait this long
                                          # for a re-request to adopt them, then are removed

Durations are a number of seconds or a string such as ``500ms``, ``60s``, ``1m30s``.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from trionsm.actors._mechanisms import VXLAN
from trionsm.actors.node import (
    ADMIN_SOCKET,
    DEFAULT_DIR,
    DEFAULT_NSMGR_PORT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    FORWARDER_MODES,
    NSM_SOCKET,
    ForwarderConfig,
    NodeConfig,
    NsmgrConfig,
    RegistryConfig,
)
from trionsm.errors import InvalidArgument

from . import options

__all__ = ["ConfigError", "load_config"]


class ConfigError(InvalidArgument):
    """A bad configuration value: where it came from, the key, the value and what is allowed.

    Attributes:
        source: the file (or ``flags``); key: the dotted key; value: what was given.
    """

    def __init__(self, source: str, key: str, value: object, allowed: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{source}: {key} = {shown}: {allowed}", hop="trionsm node")
        self.source = source
        self.key = key
        self.value = value


# -- value checkers: (source, key, value) -> parsed value, raising ConfigError -----------------

Check = Callable[[str, str, Any], Any]


def _via(parse: Callable[[str], Any], allowed: str) -> Check:
    """A checker for a string value through one of the CLI's argument types."""

    def check(source: str, key: str, value: Any) -> Any:
        if not isinstance(value, str):
            raise ConfigError(source, key, value, f"expected a string: {allowed}")
        try:
            return parse(value)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            why = str(exc) if allowed in str(exc) else f"{exc} ({allowed})"
            raise ConfigError(source, key, value, why) from None

    return check


def _duration(source: str, key: str, value: Any) -> float:
    allowed = "a positive duration: seconds, or a string like 500ms, 60s, 1m30s"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(source, key, value, allowed)
    try:
        return options.parse_duration(str(value))
    except ValueError:
        raise ConfigError(source, key, value, allowed) from None


def _bool(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(source, key, value, "expected true or false")
    return value


def _list(item: Check, *, allow_empty: bool = True) -> Check:
    def check(source: str, key: str, value: Any) -> tuple[Any, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(source, key, value, "expected a list of strings")
        if not value and not allow_empty:
            raise ConfigError(source, key, value, "expected at least one value")
        return tuple(item(source, f"{key}[{index}]", v) for index, v in enumerate(value))

    return check


def _choice(*choices: str) -> Check:
    def check(source: str, key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(source, key, value, f"expected one of {', '.join(choices)}")
        return str(value)

    return check


def _store(source: str, key: str, value: Any) -> str:
    allowed = (
        "expected 'memory', 'etcd://HOST:PORT[/PREFIX]' or the URL of a remote registry "
        "(tcp://HOST:PORT, unix:///path)"
    )
    if not isinstance(value, str):
        raise ConfigError(source, key, value, allowed)
    parse = (
        options.store_url if value == "memory" or value.startswith("etcd:") else options.dial_url
    )
    return str(_via(parse, allowed)(source, key, value))


def _labels(source: str, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    allowed = 'a table of strings, e.g. { p2p = "true" }'
    if not isinstance(value, dict):
        raise ConfigError(source, key, value, allowed)
    for label, text in value.items():
        if not isinstance(text, str) or not label:
            raise ConfigError(source, f"{key}.{label}", text, allowed)
    return tuple((str(k), v) for k, v in value.items())


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text.strip()))


def _optional(check: Check) -> Check:
    """Empty string: not set (None)."""

    def inner(source: str, key: str, value: Any) -> Any:
        return None if value == "" else check(source, key, value)

    return inner


_NAME = _via(options.name, "1 to 253 characters, no whitespace or /")
_LISTEN = _via(options.listen_url, "a URL to listen on: unix:///path, tcp://HOST:PORT")
_DIAL = _via(options.dial_url, "a URL to dial: tcp://HOST:PORT, unix:///path")
_MECHANISMS = _list(
    _via(options.mechanism, f"one of {', '.join(options.MECHANISMS)}"), allow_empty=False
)

_SCHEMA: Final[dict[str, dict[str, Check]]] = {
    "": {
        "name": _NAME,
        "dir": _via(Path, "a directory path"),
        "restart_keep_dataplane": _bool,
        "shutdown_timeout": _duration,
    },
    "nsmgr": {
        "listen": _list(_LISTEN, allow_empty=False),
        "public_url": _optional(_DIAL),
        "token_lifetime": _duration,
    },
    "registry": {"store": _store, "listen": _list(_LISTEN), "expiry": _duration},
    "admin": {"listen": _list(_LISTEN)},
    "forwarder": {
        "mode": _choice(*FORWARDER_MODES),
        "name": _NAME,
        "listen": _LISTEN,
        "mechanisms": _MECHANISMS,
        "labels": _labels,
        "registration_expiry": _duration,
        "tunnel_ip": _optional(_via(_ip, "an IPv4 or IPv6 address")),
        "underlay_netns": _optional(_via(options.netns, "an existing network namespace")),
        "reconcile_grace": _duration,
    },
}


def _check_table(source: str, raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every key of ``raw`` checked against the schema: ``{section: {key: parsed}}``."""
    checked: dict[str, dict[str, Any]] = {section: {} for section in _SCHEMA}
    sections = [s for s in _SCHEMA if s]
    for key, value in raw.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(source, key, value, f"expected a table [{key}]")
            for inner, inner_value in value.items():
                checks = _SCHEMA[key]
                if inner not in checks:
                    allowed = f"unknown key; [{key}] takes {', '.join(checks)}"
                    raise ConfigError(source, f"{key}.{inner}", inner_value, allowed)
                checked[key][inner] = checks[inner](source, f"{key}.{inner}", inner_value)
        elif key in _SCHEMA[""]:
            checked[""][key] = _SCHEMA[""][key](source, key, value)
        else:
            known = [*_SCHEMA[""], *(f"[{s}]" for s in sections)]
            raise ConfigError(source, key, value, f"unknown key; allowed: {', '.join(known)}")
    return checked


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(str(path), "(file)", str(path), f"cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(file)", str(path), f"not valid TOML: {exc}") from None


def directory_of(top: Mapping[str, Any]) -> Path:
    """The node's directory from its checked top-level keys (default :data:`DEFAULT_DIR`)."""
    return Path(top.get("dir", DEFAULT_DIR))


def load_config(
    path: Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> NodeConfig:
    """The node's config: defaults, then the TOML file at ``path``, then ``overrides``.

    Args:
        path: a TOML file (None: defaults only).
        overrides: already-parsed values by section (``""`` for top-level keys), e.g. from
            flags: ``{"": {"name": "node-1"}, "nsmgr": {"listen": (...)}}``.

    Raises:
        ConfigError: an unreadable file, invalid TOML, an unknown key, a bad value or a bad
            combination, naming the file (or ``flags``), the key, the value and what is allowed.
    """
    source = str(path) if path is not None else "flags"
    values = _check_table(source, _read(path) if path is not None else {})
    for section, entries in (overrides or {}).items():
        values[section].update(entries)
    top, nsmgr, registry, forwarder = (values[s] for s in ("", "nsmgr", "registry", "forwarder"))
    admin_listen = values["admin"].get("listen", (f"unix://{directory_of(top) / ADMIN_SOCKET}",))
    name = top.get("name") or _NAME(source, "name", socket.gethostname() or "node")
    directory = directory_of(top)
    nsmgr_listen = nsmgr.pop("listen", None) or (
        f"unix://{directory / NSM_SOCKET}",
        f"tcp://127.0.0.1:{DEFAULT_NSMGR_PORT}",
    )
    forwarder_config = ForwarderConfig(
        name=forwarder.pop("name", f"forwarder-{name}"),
        listen=forwarder.pop("listen", f"unix://{directory / 'forwarder.sock'}"),
        **forwarder,
    )
    if forwarder_config.underlay_netns and not forwarder_config.tunnel_ip:
        raise ConfigError(
            source, "forwarder.underlay_netns", forwarder_config.underlay_netns, "needs tunnel_ip"
        )
    if forwarder_config.tunnel_ip and VXLAN not in forwarder_config.mechanisms:
        mechanisms = (*forwarder_config.mechanisms, VXLAN)
        forwarder_config = attrs.evolve(forwarder_config, mechanisms=mechanisms)
    registry_config = RegistryConfig(**registry)
    if registry_config.remote and registry_config.listen:
        raise ConfigError(
            source,
            "registry.listen",
            list(registry_config.listen),
            f"must be empty: store {registry_config.store!r} is a remote registry (no "
            "registry runs in this node)",
        )
    return NodeConfig(
        name=name,
        dir=directory,
        nsmgr=NsmgrConfig(listen=tuple(nsmgr_listen), **nsmgr),
        registry=registry_config,
        forwarder=forwarder_config,
        admin_listen=tuple(admin_listen),
        restart_keep_dataplane=top.get("restart_keep_dataplane", False),
        shutdown_timeout=top.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT),
    )

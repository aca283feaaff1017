"""``trionsm node``'s configuration: defaults, the TOML file, flags over it, every bad value.

Pure: no process starts here (the command-line contract, exit status 2 naming the key or flag,
is in tests/test_node_cli.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionsm._cli.config import ConfigError, _check_table, _duration, load_config
from trionsm.actors._mechanisms import KERNEL, NOOP, VXLAN
from trionsm.actors._reconcile import DEFAULT_RECONCILE_GRACE
from trionsm.actors.node import DEFAULT_DIR, DEFAULT_SHUTDOWN_TIMEOUT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_are_nsm_s() -> None:
    config = load_config(None, {"": {"name": "node-1"}})
    assert config.name == "node-1"
    assert config.dir == Path(DEFAULT_DIR)
    assert config.socket == Path("/var/lib/networkservicemesh/nsm.io.sock")
    assert config.nsmgr.listen == (
        "unix:///var/lib/networkservicemesh/nsm.io.sock",
        "tcp://127.0.0.1:5001",
    )
    assert config.nsmgr.public_url is None
    assert config.nsmgr.token_lifetime == 600.0
    assert config.nsmgr_name == "nsmgr-node-1"
    assert (config.registry.store, config.registry.listen, config.registry.expiry) == (
        "memory",
        (),
        60.0,
    )
    assert not config.registry.remote
    forwarder = config.forwarder
    assert (forwarder.mode, forwarder.name) == ("internal", "forwarder-node-1")
    assert forwarder.listen == "unix:///var/lib/networkservicemesh/forwarder.sock"
    assert forwarder.mechanisms == (KERNEL, NOOP)
    assert dict(forwarder.labels) == {"p2p": "true"}
    assert forwarder.kernel
    assert config.admin_listen == ("unix:///var/lib/networkservicemesh/admin.sock",)
    assert config.restart_keep_dataplane is False
    assert config.shutdown_timeout == DEFAULT_SHUTDOWN_TIMEOUT == 30.0
    assert forwarder.reconcile_grace == DEFAULT_RECONCILE_GRACE


def test_the_default_name_is_the_host_name() -> None:
    import socket

    assert load_config().name == socket.gethostname()


def test_a_file_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name = "node-a"
        dir = "/tmp/node-a"
        restart_keep_dataplane = true
        shutdown_timeout = "45s"

        [nsmgr]
        listen = ["unix:///tmp/node-a/nsm.io.sock", "tcp://127.0.0.1:0"]
        public_url = "tcp://127.0.0.1:5001"
        token_lifetime = "2m"

        [registry]
        store = "etcd://127.0.0.1:2379/trionsm"
        listen = ["tcp://127.0.0.1:5002"]
        expiry = 30

        [admin]
        listen = "unix:///tmp/node-a/a.sock"

        [forwarder]
        name = "fwd"
        mechanisms = ["noop"]
        labels = { p2p = "true", zone = "a" }
        registration_expiry = "1m30s"
        reconcile_grace = "2s"
        """,
    )
    config = load_config(path)
    assert (config.name, config.dir, config.restart_keep_dataplane) == (
        "node-a",
        Path("/tmp/node-a"),
        True,
    )
    assert config.nsmgr.listen == ("unix:///tmp/node-a/nsm.io.sock", "tcp://127.0.0.1:0")
    assert (config.nsmgr.public_url, config.nsmgr.token_lifetime) == ("tcp://127.0.0.1:5001", 120)
    assert config.registry.store == "etcd://127.0.0.1:2379/trionsm"
    assert (config.registry.listen, config.registry.expiry) == (("tcp://127.0.0.1:5002",), 30)
    assert config.admin_listen == ("unix:///tmp/node-a/a.sock",)
    assert (config.forwarder.name, config.forwarder.mechanisms) == ("fwd", (NOOP,))
    assert dict(config.forwarder.labels) == {"p2p": "true", "zone": "a"}
    assert config.forwarder.registration_expiry == 90.0
    assert (config.forwarder.reconcile_grace, config.shutdown_timeout) == (2.0, 45.0)
    assert not config.forwarder.kernel
    # Flags win; derived defaults follow the flags (the forwarder's socket follows --dir).
    flagged = load_config(
        path,
        {
            "": {"dir": Path("/tmp/node-b"), "shutdown_timeout": 5.0},
            "registry": {"store": "tcp://127.0.0.1:5002", "listen": ()},
            "forwarder": {"mode": "external"},
        },
    )
    assert flagged.forwarder.listen == "unix:///tmp/node-b/forwarder.sock"
    assert flagged.shutdown_timeout == 5.0
    assert flagged.registry.remote
    assert not flagged.forwarder.internal
    assert not flagged.forwarder.kernel


def test_a_tunnel_ip_adds_vxlan(tmp_path: Path) -> None:
    path = write(tmp_path, '[forwarder]\nmechanisms = ["noop"]\ntunnel_ip = "169.254.7.1"\n')
    forwarder = load_config(path).forwarder
    assert (forwarder.tunnel_ip, forwarder.mechanisms) == ("169.254.7.1", (NOOP, VXLAN))
    assert forwarder.kernel  # VXLAN wires are kernel work


BAD = [
    # (file text, key named, a fragment of what is allowed)
    ("name = 3", "name = 3", "expected a string"),
    ('name = "a b"', "name = 'a b'", "not allowed in a name"),
    ("nmae = 'x'", "nmae = 'x'", "unknown key; allowed: name, dir, restart_keep_dataplane"),
    ("restart_keep_dataplane = 'yes'", "restart_keep_dataplane = 'yes'", "true or false"),
    ("nsmgr = 1", "nsmgr = 1", "expected a table [nsmgr]"),
    ("[nsmgr]\nlisten = []", "nsmgr.listen = []", "at least one"),
    ("[nsmgr]\nlisten = ['ftp://x']", "nsmgr.listen[0] = 'ftp://x'", "unix:///path"),
    ("[nsmgr]\nlisten = 5001", "nsmgr.listen = 5001", "list of strings"),
    ("[nsmgr]\npublic_url = 'inode://1/2'", "nsmgr.public_url = 'inode://1/2'", "cannot be"),
    ("[nsmgr]\ntoken_lifetime = 0", "nsmgr.token_lifetime = 0", "positive duration"),
    ("[nsmgr]\ntoken_lifetime = '10 minutes'", "nsmgr.token_lifetime", "like 500ms"),
    ("[nsmgr]\nport = 1", "nsmgr.port = 1", "[nsmgr] takes listen, public_url, token_lifetime"),
    ("[registry]\nstore = 'redis://x'", "registry.store = 'redis://x'", "'memory', 'etcd://"),
    ("[registry]\nstore = 'etcd://nohost'", "registry.store = 'etcd://nohost'", "etcd://HOST"),
    ("[registry]\nexpiry = true", "registry.expiry = True", "positive duration"),
    (
        "[registry]\nstore = 'tcp://127.0.0.1:5002'\nlisten = ['tcp://127.0.0.1:0']",
        "registry.listen",
        "must be empty",
    ),
    ("[forwarder]\nmode = 'sidecar'", "forwarder.mode = 'sidecar'", "internal, external"),
    ("[forwarder]\nmechanisms = ['vpp']", "forwarder.mechanisms[0] = 'vpp'", "kernel, noop"),
    ("[forwarder]\nmechanisms = []", "forwarder.mechanisms = []", "at least one"),
    ("[forwarder]\nlabels = 'p2p=true'", "forwarder.labels", "a table of strings"),
    ("[forwarder]\nlabels = { p2p = true }", "forwarder.labels.p2p = True", "table of strings"),
    ("[forwarder]\ntunnel_ip = '169.254.1.0/24'", "forwarder.tunnel_ip", "IPv4 or IPv6"),
    (
        "[forwarder]\nunderlay_netns = 'trionsm-missing-ns'",
        "forwarder.underlay_netns",
        "No such file",
    ),
    ("shutdown_timeout = 0", "shutdown_timeout = 0", "positive duration"),
    ("shutdown_timeout = 'soon'", "shutdown_timeout = 'soon'", "like 500ms"),
    ("[forwarder]\nreconcile_grace = -1", "forwarder.reconcile_grace = -1", "positive duration"),
    ("[forwarder]\nreconcile_grace = false", "forwarder.reconcile_grace", "positive duration"),
    ("[forwarder]\nname = ''", "forwarder.name = ''", "1 to 253 characters"),
    ("[admin]\nlisten = ['tcp://x']", "admin.listen[0] = 'tcp://x'", ""),
    ("[admin]\nsocket = 'x'", "admin.socket", "[admin] takes listen"),
    ("name = ", "(file)", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "key", "allowed"), BAD)
def test_every_bad_value_names_the_file_key_value_and_what_is_allowed(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = raised.value.reason
    assert message.startswith(f"{path}: {key}"), message
    assert allowed in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "absent.toml")


def test_underlay_netns_needs_a_tunnel_ip(tmp_path: Path) -> None:
    path = write(tmp_path, "[forwarder]\nunderlay_netns = 'file:///proc/self/ns/net'\n")
    with pytest.raises(ConfigError, match=r"forwarder\.underlay_netns = .*needs tunnel_ip"):
        load_config(path)


durations = st.one_of(
    st.integers(min_value=1, max_value=10**6),
    st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
    st.builds(
        lambda n, unit: f"{n}{unit}", st.integers(1, 10**4), st.sampled_from(["ms", "s", "m", "h"])
    ),
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
)


@given(value=durations)
def test_any_positive_duration_is_taken_in_seconds(value: int | float | str) -> None:
    seconds = _duration("flags", "registry.expiry", value)
    assert 0 < seconds < float("inf")


@given(key=st.sampled_from(["expiry", "store", "listen"]), value=anything)
def test_any_value_either_loads_or_fails_naming_its_key(key: str, value: object) -> None:
    error: ConfigError | None = None
    try:
        checked = _check_table("f.toml", {"registry": {key: value}})
    except ConfigError as exc:
        error = exc
    if error is None:
        assert key in checked["registry"]
    else:
        assert error.key.startswith(f"registry.{key}")
        assert error.reason.startswith(f"f.toml: {error.key} = ")

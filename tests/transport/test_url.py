"""Transport URLs (trionsm.transport._url): the forms accepted, their canonical spelling, the
errors for everything else, and round trips of generated addresses."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionsm.errors import InvalidArgument
from trionsm.transport._url import Address, Scheme, parse_url

NSM_SOCKET = "/var/lib/networkservicemesh/nsm.io.sock"
U64_MAX = 2**64 - 1


@pytest.mark.parametrize(
    ("url", "expected", "canonical"),
    [
        ("inproc://nsmgr", Address(Scheme.INPROC, path="nsmgr"), None),
        ("inproc://node-1/nsmgr:a=b", Address(Scheme.INPROC, path="node-1/nsmgr:a=b"), None),
        (f"unix://{NSM_SOCKET}", Address(Scheme.UNIX, path=NSM_SOCKET), None),
        (f"unix:{NSM_SOCKET}", Address(Scheme.UNIX, path=NSM_SOCKET), f"unix://{NSM_SOCKET}"),
        ("UNIX:///tmp/x.sock", Address(Scheme.UNIX, path="/tmp/x.sock"), "unix:///tmp/x.sock"),
        ("unix:////tmp/x.sock", Address(Scheme.UNIX, path="//tmp/x.sock"), None),
        ("unix:///tmp/user@host.sock", Address(Scheme.UNIX, path="/tmp/user@host.sock"), None),
        ("tcp://10.0.0.1:5001", Address(Scheme.TCP, "10.0.0.1", 5001), None),
        ("tcp://0.0.0.0:0", Address(Scheme.TCP, "0.0.0.0", 0), None),
        ("tcp://[::1]:65535", Address(Scheme.TCP, "::1", 65535), None),
        (
            "tcp://[2001:DB8:0::0001]:80",
            Address(Scheme.TCP, "2001:db8::1", 80),
            "tcp://[2001:db8::1]:80",
        ),
        ("tcp://[::]:0", Address(Scheme.TCP, "::", 0), None),
        ("tcp://localhost:007", Address(Scheme.TCP, "localhost", 7), "tcp://localhost:7"),
        (
            "tcp://NSMgr.NSM-System.svc:5001",
            Address(Scheme.TCP, "nsmgr.nsm-system.svc", 5001),
            "tcp://nsmgr.nsm-system.svc:5001",
        ),
        ("tcp://my_service:1", Address(Scheme.TCP, "my_service", 1), None),
        ("tcp://1.2.3.x:1", Address(Scheme.TCP, "1.2.3.x", 1), None),
        ("zmq+tcp://169.254.0.1:7000", Address(Scheme.ZMQ_TCP, "169.254.0.1", 7000), None),
        ("zmq+tcp://[fd00::1]:7000", Address(Scheme.ZMQ_TCP, "fd00::1", 7000), None),
        (
            "zmq+ipc:///run/trionsm/proxy.ipc",
            Address(Scheme.ZMQ_IPC, path="/run/trionsm/proxy.ipc"),
            None,
        ),
        ("inode://4/12345", Address(Scheme.INODE, path="4/12345"), None),
        ("inode://00/012", Address(Scheme.INODE, path="0/12"), "inode://0/12"),
        (f"inode://{U64_MAX}/{U64_MAX}", Address(Scheme.INODE, path=f"{U64_MAX}/{U64_MAX}"), None),
        ("unix:///" + "a" * 106, Address(Scheme.UNIX, path="/" + "a" * 106), None),
    ],
)
def test_valid_urls(url: str, expected: Address, canonical: str | None) -> None:
    address = parse_url(url)
    assert address == expected
    assert str(address) == address.url == (canonical or url)
    assert parse_url(str(address)) == address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty URL; use inproc://"),
        ("http://x", "unsupported scheme 'http' in 'http://x'; use inproc://, unix://, tcp://"),
        ("10.0.0.1:5001", "unsupported scheme '10.0.0.1'"),
        ("nsmgr", "no scheme in 'nsmgr'"),
        ("tcp://10.0.0.1", "missing port in 'tcp://10.0.0.1'"),
        ("tcp://10.0.0.1:", "missing port"),
        ("tcp://[::1]", "missing port"),
        ("tcp://x:70000", "port 70000 out of range 0..65535"),
        ("tcp://x:-1", "port '-1' is not a decimal number"),
        ("tcp://x:٣", "port '٣' is not a decimal number"),
        ("tcp://:5001", "missing host in 'tcp://:5001'; to listen on every interface use 0.0.0.0"),
        ("tcp://[]:1", "missing host"),
        ("tcp://::1:5001", "IPv6 address without brackets"),
        ("tcp://[::1:5001", "malformed [IPv6] host"),
        ("tcp://[::1]5001", "malformed [IPv6] host"),
        ("tcp://[1.2.3.4]:1", "invalid IP address '1.2.3.4'"),
        ("tcp://[fe80::1%25eth0]:1", "percent-escapes ('%') are not allowed"),
        ("tcp://1.2.3.256:1", "invalid IP address '1.2.3.256'"),
        ("tcp://010.0.0.1:1", "invalid IP address"),
        ("tcp://1.2.3:1", "invalid IP address"),
        ("tcp://-bad.example:1", "invalid DNS name '-bad.example'"),
        ("tcp://a..b:1", "invalid DNS name"),
        ("tcp://example.com.:1", "invalid DNS name"),
        ("tcp://" + "a" * 64 + ":1", "invalid DNS name"),
        ("tcp://bücher.de:1", "invalid host 'bücher.de'"),
        ("tcp://x!:1", "invalid host"),
        ("tcp://user@10.0.0.1:1", "userinfo ('user@') is not allowed"),
        ("tcp://10.0.0.1:1/", "a path is not allowed"),
        ("tcp://10.0.0.1:1?x=1", "query strings ('?') are not allowed"),
        ("tcp://10.0.0.1:1#top", "fragments ('#') are not allowed"),
        ("tcp:10.0.0.1:1", "expected 'tcp://'"),
        ("zmq+tcp://x", "missing port in 'zmq+tcp://x'"),
        ("unix:relative.sock", "unix socket path must be absolute"),
        ("unix://var/run/x.sock", "write unix:///var/run/x.sock (three slashes)"),
        ("unix://", "missing path"),
        ("unix:", "missing path"),
        ("unix:///", "socket path ends with '/'"),
        ("unix:///tmp/dir/", "socket path ends with '/'"),
        ("unix:///" + "a" * 107, "socket path of 108 bytes"),
        ("unix:///tmp/a%20b", "percent-escapes"),
        ("unix:///tmp/é", "character 'é' in path"),
        ("unix:///tmp/a\\b", "character '\\\\' in path"),
        ("zmq+ipc:/tmp/x", "expected 'zmq+ipc://'"),
        ("zmq+ipc://tmp/x", "zmq+ipc socket path must be absolute"),
        ("inproc://", "missing inproc name"),
        ("inproc://a@b", "character '@' in inproc name"),
        ("inproc://a?b", "query strings"),
        ("inproc://a#b", "fragments"),
        ("inode://4", "malformed inode URL"),
        ("inode://4/", "malformed inode URL"),
        ("inode://4/5/6", "malformed inode URL"),
        ("inode://x/5", "malformed inode URL"),
        (f"inode://1/{U64_MAX + 1}", f"inode number {U64_MAX + 1} does not fit in 64 bits"),
        ("inproc://a b", "whitespace character ' ' at index 10"),
        ("tcp://x:1\n", "whitespace character '\\n'"),
        ("inproc://a\0b", "NUL character"),
        ("inproc://a\x07b", "non-printable character"),
        ("tcp://" + "a" * 5000, "URL of 5006 characters"),
    ],
)
def test_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_url(url)
    assert message in str(caught.value)
    assert len(str(caught.value)) < 500  # a huge URL is quoted shortened


@pytest.mark.parametrize("url", ["http://x", "tcp://x:99999", "unix:rel"])
def test_errors_quote_the_url(url: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(repr(url))):
        parse_url(url)


@pytest.mark.parametrize(
    ("value", "type_name"), [(None, "NoneType"), (b"tcp://x:1", "bytes"), (5001, "int")]
)
def test_non_str_input(value: object, type_name: str) -> None:
    with pytest.raises(InvalidArgument, match=f"expected the URL as a str, got {type_name}"):
        parse_url(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "carrier", "dialable"),
    [
        ("inproc://x", "inproc", True),
        ("unix:///x", "grpc", True),
        ("tcp://x:1", "grpc", True),
        ("zmq+tcp://x:1", "zmq", True),
        ("zmq+ipc:///x", "zmq", True),
        ("inode://1/2", None, False),
    ],
)
def test_carrier_and_dialable(url: str, carrier: str | None, dialable: bool) -> None:
    address = parse_url(url)
    assert (address.carrier, address.dialable) == (carrier, dialable)


def test_equal_addresses_are_one_key() -> None:
    spellings = ["tcp://[0:0::1]:5", "TCP://[::1]:05", "tcp://[::0001]:5"]
    assert {parse_url(url) for url in spellings} == {Address(Scheme.TCP, "::1", 5)}
    assert parse_url("unix:/a") == parse_url("unix:///a")


@pytest.mark.parametrize(
    ("url", "port", "expected"),
    [
        ("tcp://0.0.0.0:0", 41234, "tcp://0.0.0.0:41234"),
        ("tcp://[::]:0", 5001, "tcp://[::]:5001"),
        ("zmq+tcp://host:0", 7000, "zmq+tcp://host:7000"),
        ("tcp://host:1", 0, "tcp://host:0"),
    ],
)
def test_with_port(url: str, port: int, expected: str) -> None:
    address = parse_url(url).with_port(port)
    assert str(address) == expected
    assert parse_url(expected) == address


@pytest.mark.parametrize(
    ("url", "port", "message"),
    [
        ("unix:///x", 1, "has no port; only tcp:// and zmq+tcp://"),
        ("inproc://x", 1, "has no port"),
        ("tcp://x:0", 65536, "port 65536 out of range"),
        ("tcp://x:0", -1, "port -1 out of range"),
        ("tcp://x:0", True, "port must be of type int, not bool"),
    ],
)
def test_with_port_refuses(url: str, port: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parse_url(url).with_port(port)


def test_inode_numbers() -> None:
    assert parse_url("inode://4/12345").inode_numbers == (4, 12345)
    assert parse_url(f"inode://0/{U64_MAX}").inode_numbers == (0, U64_MAX)
    with pytest.raises(InvalidArgument, match="is not an inode:// address"):
        _ = parse_url("tcp://x:1").inode_numbers


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scheme": "tcp", "host": "x", "port": 1}, "scheme must be a Scheme, not str"),
        ({"scheme": Scheme.TCP, "host": "Example.com", "port": 1}, "use 'example.com'"),
        ({"scheme": Scheme.TCP, "host": "0::1", "port": 1}, "use '::1'"),
        ({"scheme": Scheme.TCP, "host": "fe80::1%eth0", "port": 1}, "invalid host"),
        ({"scheme": Scheme.TCP, "host": "x"}, "port must be of type int, not NoneType"),
        ({"scheme": Scheme.TCP, "port": 1}, "host must be of type str"),
        (
            {"scheme": Scheme.TCP, "host": "x", "port": 1, "path": "/p"},
            "tcp addresses have no path",
        ),
        ({"scheme": Scheme.UNIX, "path": "/x", "port": 1}, "unix addresses have no port"),
        ({"scheme": Scheme.UNIX}, "path must be of type str"),
        ({"scheme": Scheme.UNIX, "path": "x.sock"}, "unix socket path must be absolute"),
        ({"scheme": Scheme.UNIX, "path": "/a b"}, "character ' ' in path"),
        ({"scheme": Scheme.INPROC, "path": ""}, "missing inproc name"),
        ({"scheme": Scheme.INODE, "path": "01/2"}, "without leading zeros"),
        ({"scheme": Scheme.INODE, "path": "1/" + "9" * 5000}, "does not fit in 64 bits"),
        ({"scheme": Scheme.INODE, "host": "1", "path": "1/2"}, "inode addresses have no host"),
    ],
)
def test_constructor_enforces_the_same_rules(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as caught:
        Address(**fields)  # type: ignore[arg-type]
    assert "Address(" in str(caught.value)


# --- properties ---------------------------------------------------------------------------------

PATH_ALPHABET = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
NAME_ALPHABET = PATH_ALPHABET.replace("@", "") + "/"
LABEL = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", fullmatch=True)
HOSTNAMES = (
    st.lists(LABEL, min_size=1, max_size=5)
    .filter(lambda labels: not labels[-1].isdigit())
    .map(".".join)
    .filter(lambda name: len(name) <= 253)
)
HOSTS = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), HOSTNAMES)
PATHS = (
    st.lists(st.text(PATH_ALPHABET, min_size=1, max_size=30), min_size=1, max_size=6)
    .map(lambda segments: "/" + "/".join(segments))
    .filter(lambda path: len(path) <= 107)
)
INODE = st.integers(0, U64_MAX)
ADDRESSES = st.one_of(
    st.builds(Address, st.just(Scheme.INPROC), path=st.text(NAME_ALPHABET, min_size=1)),
    st.builds(Address, st.sampled_from([Scheme.UNIX, Scheme.ZMQ_IPC]), path=PATHS),
    st.builds(Address, st.sampled_from([Scheme.TCP, Scheme.ZMQ_TCP]), HOSTS, st.integers(0, 65535)),
    st.builds(lambda dev, ino: Address(Scheme.INODE, path=f"{dev}/{ino}"), INODE, INODE),
)


@given(ADDRESSES)
def test_every_address_round_trips(address: Address) -> None:
    assert parse_url(str(address)) == address
    assert str(parse_url(str(address))) == str(address)


PREFIXES = st.sampled_from(
    ["", "tcp://", "TCP://", "zmq+tcp://[", "unix:", "unix://", "unix:///", "zmq+ipc:///",
     "inproc://", "inode://", "inode://1/"]
)  # fmt: skip


@st.composite
def mangled_urls(draw: st.DrawFn) -> str:
    """A valid URL with a random edit, or a known prefix followed by random text."""
    if draw(st.booleans()):
        return draw(PREFIXES) + draw(st.text())
    url = str(draw(ADDRESSES))
    at = draw(st.integers(0, len(url)))
    cut = draw(st.integers(0, 3))
    return url[:at] + draw(st.text(max_size=3)) + url[at + cut :]


@given(st.one_of(st.text(), mangled_urls()))
def test_any_text_parses_or_raises_invalid_argument(text: str) -> None:
    try:
        address = parse_url(text)
    except InvalidArgument:
        return
    assert isinstance(address, Address)
    assert parse_url(str(address)) == address

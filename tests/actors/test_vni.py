"""VNI choice (pure): NSM's parity rule, uniqueness per source address, the kernel's refusals."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trionsm.actors._vni import MAX_VNI, VniBook, choose_vni, parity, reusable_vni
from trionsm.errors import InvalidArgument, ResourceExhausted

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
address = ipv4 | ipv6


def wide(ip: str) -> bytes:
    parsed = ipaddress.ip_address(ip)
    if parsed.version == 4:
        return bytes(10) + b"\xff\xff" + parsed.packed
    return parsed.packed


@given(address, address, st.randoms(use_true_random=False))
def test_parity_is_even_when_src_is_at_most_dst_and_the_directions_never_share(
    src: str, dst: str, rng: random.Random
) -> None:
    vni = choose_vni(src, dst, rng=rng)
    assert 1 <= vni <= MAX_VNI
    assert vni % 2 == (0 if wide(src) <= wide(dst) else 1)
    if wide(src) != wide(dst):  # 0.0.0.0 and ::ffff:0:0 are one address
        assert parity(src, dst) != parity(dst, src)


def test_parity_compares_the_original_addresses_when_nat_swapped_them() -> None:
    assert parity("169.254.0.9", "169.254.0.1") == 1
    assert parity("169.254.0.9", "169.254.0.1", orig_src_ip="169.254.0.0") == 0
    assert parity("169.254.0.1", "169.254.0.9", orig_dst_ip="169.254.0.0") == 1
    assert parity("169.254.0.1", "fd00::1") == 0  # IPv4 sorts as ::ffff:a.b.c.d


@given(
    st.sets(st.integers(1, MAX_VNI), max_size=50),
    st.sets(st.integers(1, MAX_VNI), max_size=50),
    st.randoms(use_true_random=False),
)
def test_a_chosen_vni_is_neither_taken_nor_excluded(
    taken: set[int], excluded: set[int], rng: random.Random
) -> None:
    vni = choose_vni("169.254.200.1", "169.254.200.2", taken=taken, excluded=excluded, rng=rng)
    assert vni not in taken
    assert vni not in excluded
    assert vni % 2 == 0


class Fixed(random.Random):
    """Always starts at the same place: the scan for a free VNI is what is tested."""

    def randrange(self, *args: int, **kwargs: int) -> int:  # type: ignore[override]
        return 0


def test_taken_vnis_are_skipped_and_exhaustion_is_resource_exhausted() -> None:
    assert choose_vni("169.254.0.1", "169.254.0.2", rng=Fixed()) == 2
    assert choose_vni("169.254.0.1", "169.254.0.2", taken={2, 4}, excluded={6}, rng=Fixed()) == 8
    assert choose_vni("169.254.0.2", "169.254.0.1", taken={1}, rng=Fixed()) == 3
    everything = range(1, MAX_VNI + 1, 2)
    with pytest.raises(ResourceExhausted, match="every odd VNI"):
        choose_vni("169.254.0.2", "169.254.0.1", taken=set(everything), rng=Fixed())
    with pytest.raises(InvalidArgument, match="src_ip 'nope'"):
        choose_vni("nope", "169.254.0.1")


@pytest.mark.parametrize(
    ("text", "kept"),
    [("4", 4), (" 4", 4), ("3", None), ("0", None), (str(MAX_VNI + 1), None), ("x", None),
     ("", None), ("6", None), ("8", None), ("123456789", None)],
)  # fmt: skip
def test_a_refresh_keeps_its_vni_only_when_it_is_still_valid(text: str, kept: int | None) -> None:
    assert reusable_vni(text, "169.254.0.1", "169.254.0.2", taken={6}, excluded={8}) == kept


def test_the_book_keeps_vnis_unique_per_source_and_per_connection() -> None:
    book = VniBook()
    rng = random.Random(7)
    a = book.assign("conn-a", "169.254.0.1", "169.254.0.9", rng=rng)
    assert book.assign("conn-a", "169.254.0.1", "169.254.0.9", requested=str(a)) == a  # refresh
    b = book.assign("conn-b", "169.254.0.1", "169.254.0.9", requested=str(a), rng=rng)
    assert b != a  # taken by conn-a for that source
    c = book.assign("conn-c", "169.254.0.3", "169.254.0.9", requested=str(a), rng=rng)
    assert c == a  # another source may have it
    assert book.taken("169.254.0.1") == {a, b}
    assert book.taken("169.254.0.1", besides="conn-a") == {b}
    refused = book.assign("conn-a", "169.254.0.1", "169.254.0.9", requested=str(a), excluded={a})
    assert refused not in (a, b)  # the kernel refused a: a new one, the old one given back
    assert book.taken("169.254.0.1") == {refused, b}
    for connection in ("conn-a", "conn-b", "conn-c", "conn-a"):
        book.release(connection)
    assert len(book) == 0
    assert book.taken("169.254.0.1") == set()


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from(["1", "2", "3"]))))
def test_the_book_never_hands_one_vni_to_two_connections_of_one_source(
    steps: list[tuple[str, str]],
) -> None:
    book = VniBook()
    rng = random.Random(1)
    held: dict[str, tuple[str, int]] = {}
    for connection, source in steps:
        src = f"169.254.1.{source}"
        held[connection] = (src, book.assign(connection, src, "169.254.9.9", rng=rng))
        pairs = list(held.values())
        assert len(pairs) == len(set(pairs))

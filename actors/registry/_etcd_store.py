"""The etcd store (being built): registrations in etcd, shared by registry replicas."""

from __future__ import annotations

from trionsm.errors import Unimplemented

__all__ = ["EtcdStore"]


class EtcdStore:
    """Not built yet: constructing one raises Unimplemented."""

    def __init__(self, url: str, *, watch_buffer: int, hop: str) -> None:
        raise Unimplemented(f"the etcd store ({url}) is not built yet", hop=hop)

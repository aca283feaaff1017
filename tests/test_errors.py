"""The error hierarchy: one class per gRPC status; messages name hop, service and reason."""

from __future__ import annotations

import pickle

import pytest

from trionsm import errors
from trionsm.errors import StatusCode, TrionsmError, error_for_status

CLASSES = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, TrionsmError) and cls is not TrionsmError
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_class_survives_its_status_code(cls: type[TrionsmError]) -> None:
    sent = cls("no endpoint matches", hop="nsmgr@node-1", service="icmp-responder")
    received = error_for_status(int(sent.status), sent.reason, hop=sent.hop, service=sent.service)
    assert type(received) is cls
    assert str(received) == "[nsmgr@node-1] service 'icmp-responder': no endpoint matches"
    again = pickle.loads(pickle.dumps(sent))
    assert (type(again), again.reason, again.hop, again.service) == (
        cls,
        sent.reason,
        sent.hop,
        sent.service,
    )


def test_every_status_maps_to_one_class() -> None:
    statuses = [cls.status for cls in CLASSES]
    assert len(statuses) == len(set(statuses))
    for code in StatusCode:
        if code is not StatusCode.OK:
            assert isinstance(error_for_status(code, "x"), TrionsmError)


def test_unknown_codes_are_unknown() -> None:
    assert type(error_for_status(99, "from the future")) is errors.Unknown


def test_errors_are_also_the_matching_builtin() -> None:
    assert isinstance(errors.InvalidArgument("bad"), ValueError)
    assert isinstance(errors.NotFound("none"), LookupError)
    assert isinstance(errors.PermissionDenied("no"), PermissionError)
    assert isinstance(errors.DeadlineExceeded("late"), TimeoutError)
    assert isinstance(errors.Unavailable("gone"), ConnectionError)
    assert str(errors.NotFound("none")) == "none"

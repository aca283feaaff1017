"""Find's matching rules, field by field, as NSM's registry applies them (pure functions).

A query is a message of the same type as the entries, with only some fields set; each set field
narrows the result:

* endpoints (:func:`endpoint_matches`): ``name`` exact; ``network_service_labels``: every label of
  every service in the query is present on the endpoint for that service with an equal value;
  ``expiration_time``: equal whole seconds; ``network_service_names``: the query's names are a
  subset of the endpoint's; ``url``: a substring of the endpoint's URL.
* services (:func:`service_matches`): ``name`` exact, ``payload`` exact, ``matches`` equal as a
  whole (same matches in the same order).

An empty query matches everything.
"""

from __future__ import annotations

import datetime

from trionsm.api.registry import NetworkService, NetworkServiceEndpoint

__all__ = ["endpoint_matches", "service_matches"]


def endpoint_matches(query: NetworkServiceEndpoint, entry: NetworkServiceEndpoint) -> bool:
    """True when ``entry`` satisfies every field set in ``query``."""
    if query.name and query.name != entry.name:
        return False
    if query.url and query.url not in entry.url:
        return False
    if query.network_service_names:
        names = entry.network_service_names
        if len(query.network_service_names) == 1:
            if query.network_service_names[0] not in names:
                return False
        elif not set(query.network_service_names) <= set(names):
            return False
    if query.expiration_time is not None:
        if entry.expiration_time is None:
            return False
        if _seconds(query.expiration_time) != _seconds(entry.expiration_time):
            return False
    for service, wanted in query.network_service_labels.items():
        present = entry.network_service_labels.get(service)
        if present is None:
            return False
        labels = present.labels
        for key, value in wanted.labels.items():
            if labels.get(key) != value:
                return False
    return True


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_SECOND = datetime.timedelta(seconds=1)


def _seconds(moment: datetime.datetime) -> int:
    """The wire Timestamp's ``seconds`` (floored, exact; a naive datetime is taken as UTC).

    Not ``int(moment.timestamp())``: that truncates towards zero before 1970 and a float rounds
    x.999999 up to the next second for far-future times.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - _EPOCH) // _SECOND


def service_matches(query: NetworkService, entry: NetworkService) -> bool:
    """True when ``entry`` satisfies every field set in ``query``."""
    if query.name and query.name != entry.name:
        return False
    if query.payload and query.payload != entry.payload:
        return False
    return not query.matches or query.matches == entry.matches

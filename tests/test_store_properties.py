"""Hypothesis: random interleavings of appends and reads keep the store's invariants.

For any sequence of operations over a few streams: each stream's versions are
1..n with no gaps, reads return exactly what was appended (in order), an append
succeeds exactly when the model says its expected version holds, and positions
in the global log strictly increase in append order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventsourcing_app.exceptions import ConcurrencyError
from eventsourcing_app.store import ANY, NO_STREAM, STREAM_EXISTS, DomainEvent, EventStore, NewEvent

pytestmark = pytest.mark.django_db

STREAMS = 3


@dataclass(frozen=True)
class Tick(DomainEvent, event_type="tests.properties.Tick"):
    n: int


@dataclass(frozen=True)
class Append:
    stream: int
    count: int
    expectation: str  # "any", "no_stream", "exists", "exact", "stale"


@dataclass(frozen=True)
class ReadStream:
    stream: int
    from_version: int


@dataclass(frozen=True)
class ReadAll:
    pass


operations = st.lists(
    st.one_of(
        st.builds(
            Append,
            stream=st.integers(0, STREAMS - 1),
            count=st.integers(1, 4),
            expectation=st.sampled_from(["any", "no_stream", "exists", "exact", "stale"]),
        ),
        st.builds(ReadStream, stream=st.integers(0, STREAMS - 1), from_version=st.integers(1, 6)),
        st.just(ReadAll()),
    ),
    min_size=1,
    max_size=25,
)


def expected_version_for(expectation: str, current: int) -> object:
    return {
        "any": ANY,
        "no_stream": NO_STREAM,
        "exists": STREAM_EXISTS,
        "exact": current,
        "stale": current + 1,
    }[expectation]


def should_succeed(expectation: str, current: int) -> bool:
    return {
        "any": True,
        "no_stream": current == 0,
        "exists": current > 0,
        "exact": True,
        "stale": False,
    }[expectation]


@given(ops=operations)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_interleavings_keep_the_invariants(ops: list, event_store: EventStore) -> None:
    run = uuid.uuid4().hex
    stream_ids = [f"Prop{i}-{run}" for i in range(STREAMS)]
    model: dict[str, list[uuid.UUID]] = {sid: [] for sid in stream_ids}
    appended_positions: list[int] = []
    start = event_store.head_position()

    for op in ops:
        if isinstance(op, Append):
            sid = stream_ids[op.stream]
            current = len(model[sid])
            batch = [NewEvent.of(Tick(i)) for i in range(op.count)]
            expected = expected_version_for(op.expectation, current)
            if should_succeed(op.expectation, current):
                result = event_store.append(sid, batch, expected_version=expected)
                assert result.version == current + op.count
                assert [e.version for e in result.events] == list(range(current + 1, current + op.count + 1))
                model[sid].extend(e.event_id for e in batch)
                appended_positions.extend(e.position for e in result.events)
            else:
                with pytest.raises(ConcurrencyError) as excinfo:
                    event_store.append(sid, batch, expected_version=expected)
                assert excinfo.value.actual == current
        elif isinstance(op, ReadStream):
            sid = stream_ids[op.stream]
            events = event_store.read_stream(sid, from_version=op.from_version)
            assert [e.event_id for e in events] == model[sid][op.from_version - 1 :]
            assert [e.version for e in events] == list(range(op.from_version, len(model[sid]) + 1))
        else:
            assert [e.position for e in event_store.read_all(after=start, limit=1000)] == appended_positions

    assert appended_positions == sorted(appended_positions)
    assert len(set(appended_positions)) == len(appended_positions)
    for sid, ids in model.items():
        events = event_store.read_stream(sid)
        assert [e.version for e in events] == list(range(1, len(ids) + 1))
        assert [e.event_id for e in events] == ids

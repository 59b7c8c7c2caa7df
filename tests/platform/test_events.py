from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from careplane.platform.db import Database
from careplane.platform.events import Event, EventHub, PollingWakeup, publish


def _deliveries(db: Database, publish_after_subscribing: Callable[[], None], n: int,
                *prefixes: str, org_id: str | None = None) -> list[Event]:
    """Subscribe, run the publishing step, and return the first ``n`` events delivered."""

    async def scenario() -> list[Event]:
        hub = EventHub(db, PollingWakeup(0.05))
        await hub.start()
        try:
            got: list[Event] = []
            async with hub.subscribe(*prefixes, org_id=org_id) as sub:
                await asyncio.to_thread(publish_after_subscribing)
                while len(got) < n:
                    got.append(await asyncio.wait_for(sub.queue.get(), 5.0))
            return got
        finally:
            await hub.close()

    return asyncio.run(scenario())


def test_committed_events_reach_subscribers(db: Database) -> None:
    def changes() -> None:
        with db.session() as session:
            publish(session, "records.Patient.changed", {"id": "p1"}, org_id="o1")
            publish(session, "imaging.study.changed", {"id": "s1"}, org_id="o1")
            publish(session, "records.Observation.changed", {"id": "ob1"}, org_id="o1")

    events = _deliveries(db, changes, 2, "records.")
    assert [e.topic for e in events] == ["records.Patient.changed", "records.Observation.changed"]
    assert events[0].payload == {"id": "p1"}
    assert events[0].id < events[1].id


def test_rolled_back_events_are_never_delivered(db: Database) -> None:
    def changes() -> None:
        with pytest.raises(RuntimeError), db.session() as session:
            publish(session, "job.succeeded", {"id": "lost"})
            raise RuntimeError("the change failed")
        with db.session() as session:
            publish(session, "job.succeeded", {"id": "kept"})

    events = _deliveries(db, changes, 1, "job.")
    assert [e.payload["id"] for e in events] == ["kept"]


def test_events_of_other_organisations_are_not_delivered(db: Database) -> None:
    def changes() -> None:
        with db.session() as session:
            publish(session, "job.running", {"id": "theirs"}, org_id="theirs")
            publish(session, "job.running", {"id": "mine"}, org_id="mine")

    events = _deliveries(db, changes, 1, "job.", org_id="mine")
    assert [e.payload["id"] for e in events] == ["mine"]


def test_reconnecting_subscriber_replays_missed_events(db: Database) -> None:
    with db.session() as session:
        first = publish(session, "job.queued", {"n": 1})
        publish(session, "job.queued", {"n": 2})
        publish(session, "job.queued", {"n": 3})

    async def scenario() -> list[Event]:
        hub = EventHub(db, PollingWakeup(0.05))
        await hub.start()
        try:
            async with hub.subscribe("job.", since=first) as sub:
                return [await asyncio.wait_for(sub.queue.get(), 5.0) for _ in range(2)]
        finally:
            await hub.close()

    assert [e.payload["n"] for e in asyncio.run(scenario())] == [2, 3]


def test_late_commit_of_an_earlier_id_is_not_lost(db: Database) -> None:
    """Ids are taken at insert but become visible at commit: a gap is re-checked, not skipped."""
    from datetime import UTC, datetime

    from careplane.platform.events._hub import Subscription

    hub = EventHub(db, PollingWakeup(0.05))
    sub = Subscription(hub, ("job.",), None)
    hub._subscriptions.add(sub)

    def event(i: int) -> Event:
        return Event(i, "job.queued", None, {"n": i}, datetime.now(UTC))

    hub._deliver(event(3), 0.0)  # ids 1 and 2 are still in open transactions
    assert set(hub._gaps) == {1, 2}
    hub._deliver(event(2), 0.0)  # committed late, found by the gap query
    hub._deliver(event(3), 0.0)  # seen again: not delivered twice
    hub._deliver(event(1), 0.0)
    delivered = []
    while not sub.queue.empty():
        delivered.append(sub.queue.get_nowait().id)
    assert delivered == [3, 2, 1]
    assert hub._gaps == {}
    assert hub._fetch(0, None, (1, 2)) == []  # and the gap query itself is well-formed


def test_with_nobody_subscribed_the_hub_follows_ids_and_a_later_subscriber_misses_nothing(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process with no subscriber keeps its cursor up to date from the ids alone; one who
    subscribes afterwards with the id it last saw is replayed the rest, payloads included."""
    loaded: list[int] = []
    fetch = EventHub._fetch

    def counting_fetch(self: EventHub, *args: object) -> list[Event]:
        events = fetch(self, *args)
        loaded.extend(e.id for e in events)
        return events

    monkeypatch.setattr(EventHub, "_fetch", counting_fetch)

    async def scenario() -> list[Event]:
        hub = EventHub(db, PollingWakeup(0.02))
        await hub.start()
        try:
            with db.session() as session:
                seen = publish(session, "records.Observation.changed", {"n": 1})
                last = [publish(session, "records.Observation.changed", {"n": n})
                        for n in (2, 3)][-1]
            deadline = asyncio.get_running_loop().time() + 5
            while hub._cursor < last:
                assert asyncio.get_running_loop().time() < deadline, "the cursor stood still"
                await asyncio.sleep(0.02)
            assert loaded == []  # no payload was read for nobody
            async with hub.subscribe("records.", since=seen) as sub:
                with db.session() as session:
                    publish(session, "records.Observation.changed", {"n": 4})
                return [await asyncio.wait_for(sub.queue.get(), 5.0) for _ in range(3)]
        finally:
            await hub.close()

    assert [e.payload["n"] for e in asyncio.run(scenario())] == [2, 3, 4]

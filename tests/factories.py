"""factory-boy factories: domain events, stored events/streams written through the store, saga states."""

from __future__ import annotations

import uuid
from decimal import Decimal

import factory

from eventsourcing_app.models import Event, SagaState, SagaStatus, Stream
from eventsourcing_app.store import ANY, EventStore, NewEvent
from project.shop.events import OrderLine, OrderPlaced, StockAdded


class OrderLineFactory(factory.Factory):
    class Meta:
        model = OrderLine

    sku = factory.Sequence(lambda n: f"SKU-{n:04d}")
    quantity = factory.Faker("pyint", min_value=1, max_value=5)
    unit_price = factory.LazyFunction(lambda: Decimal("19.99"))


class OrderPlacedFactory(factory.Factory):
    class Meta:
        model = OrderPlaced

    order_id = factory.LazyFunction(lambda: str(uuid.uuid4()))
    customer_id = factory.Sequence(lambda n: f"customer-{n}")
    items = factory.LazyFunction(lambda: [OrderLineFactory()])
    total = factory.LazyAttribute(lambda o: sum((line.quantity * line.unit_price for line in o.items), Decimal(0)))


class StockAddedFactory(factory.Factory):
    class Meta:
        model = StockAdded

    sku = factory.Sequence(lambda n: f"SKU-{n:04d}")
    quantity = 10


class StoredEventFactory(factory.django.DjangoModelFactory):
    """An `Event` row, appended through `EventStore.append()` (the ORM refuses direct writes)."""

    class Meta:
        model = Event

    stream_id = factory.Sequence(lambda n: f"Test-{n}")
    event = factory.SubFactory(StockAddedFactory)
    metadata = factory.LazyFunction(dict)

    @classmethod
    def _create(cls, model_class, stream_id, event, metadata, **kwargs):
        result = EventStore().append(stream_id, [NewEvent.of(event, metadata=metadata)], expected_version=ANY)
        return Event.objects.get(position=result.events[0].position)


class StreamFactory(factory.django.DjangoModelFactory):
    """A `Stream` with `events` StockAdded events, appended through the store."""

    class Meta:
        model = Stream

    stream_id = factory.Sequence(lambda n: f"Inventory-SKU-{n:04d}")
    events = 3

    @classmethod
    def _create(cls, model_class, stream_id, events, **kwargs):
        sku = stream_id.partition("-")[2]
        EventStore().append(stream_id, [StockAdded(sku=sku, quantity=1) for _ in range(events)])
        return Stream.objects.get(stream_id=stream_id)


class SagaStateFactory(factory.django.DjangoModelFactory):
    """A running instance of a saga, as the saga manager leaves one after its first event."""

    class Meta:
        model = SagaState

    saga_type = "OrderFulfillment"
    correlation_id = factory.LazyFunction(lambda: str(uuid.uuid4()))
    status = SagaStatus.RUNNING
    version = 1

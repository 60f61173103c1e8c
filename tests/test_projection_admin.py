"""The projections admin: checkpoints with lag, dead letters, and the resume/pause/rebuild/retry actions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from eventsourcing_app.models import Checkpoint, CheckpointStatus, ProjectionDeadLetter
from eventsourcing_app.projections import SKIP, Projection, ProjectionRunner, projection_registry
from eventsourcing_app.store import DomainEvent, EventStore, RecordedEvent
from project.shop.events import StockAdded
from project.shop.models import InventoryLevel

pytestmark = pytest.mark.django_db

CHECKPOINTS_URL = "/admin/eventsourcing_app/checkpoint/"
DEAD_LETTERS_URL = "/admin/eventsourcing_app/projectiondeadletter/"


@dataclass(frozen=True)
class AdminProbeRecorded(DomainEvent):
    value: int


class FlakyProjection(Projection):
    """Skips what it cannot apply while `broken`; the dead letters go through once it is fixed."""

    name = "admin_flaky"
    event_types = ("AdminProbeRecorded",)
    on_error = SKIP
    broken = True
    applied: list[int] = []

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        if self.broken:
            raise RuntimeError("downstream unavailable")
        self.applied.extend(event.data.value for event in events)


@pytest.fixture
def flaky() -> FlakyProjection:
    projection = FlakyProjection()
    projection.applied = []
    projection_registry.register(projection.name, projection)
    yield projection
    projection_registry.unregister(projection.name)


@pytest.fixture
def caught_up_inventory(event_store: EventStore) -> None:
    """inventory_levels caught up with 3 events of SKU-A."""
    event_store.append("Inventory-SKU-A", [StockAdded(sku="SKU-A", quantity=q) for q in (1, 2, 3)])
    ProjectionRunner(projection_registry.lookup("inventory_levels")).run()


def act(client: Client, url: str, action: str, *selected: str):
    return client.post(url, {"action": action, "_selected_action": list(selected)}, follow=True)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_lists_checkpoints_with_their_lag(admin_client: Client, event_store: EventStore, caught_up_inventory) -> None:
    event_store.append("Inventory-SKU-A", [StockAdded(sku="SKU-A", quantity=4)])

    response = admin_client.get(CHECKPOINTS_URL)

    assert response.status_code == 200
    (checkpoint,) = response.context["cl"].result_list
    assert checkpoint.name == "inventory_levels"
    assert response.context["cl"].model_admin.lag(checkpoint) == 1
    content = response.content.decode()
    assert "inventory_levels" in content
    assert "running" in content


def test_detail_is_read_only(admin_client: Client, caught_up_inventory) -> None:
    url = f"{CHECKPOINTS_URL}inventory_levels/change/"

    assert admin_client.get(url).status_code == 200
    assert admin_client.post(url, {"position": "0"}).status_code == 403
    assert admin_client.get(f"{CHECKPOINTS_URL}add/").status_code == 403
    assert Checkpoint.objects.get(name="inventory_levels").position > 0


def test_offers_only_its_own_actions(admin_client: Client, caught_up_inventory) -> None:
    response = admin_client.get(CHECKPOINTS_URL)

    choices = [value for value, _ in response.context["action_form"].fields["action"].choices if value]
    assert choices == ["resume_selected", "pause_selected", "rebuild_selected"]


def test_pause_then_resume(admin_client: Client, caught_up_inventory) -> None:
    response = act(admin_client, CHECKPOINTS_URL, "pause_selected", "inventory_levels")

    assert Checkpoint.objects.get(name="inventory_levels").status == CheckpointStatus.PAUSED
    assert messages_of(response) == ["Paused: inventory_levels."]

    response = act(admin_client, CHECKPOINTS_URL, "resume_selected", "inventory_levels")

    assert Checkpoint.objects.get(name="inventory_levels").status == CheckpointStatus.RUNNING
    assert messages_of(response) == ["Resumed: inventory_levels."]


def test_rebuild_replays_into_a_cleared_read_model(
    admin_client: Client, event_store: EventStore, caught_up_inventory
) -> None:
    InventoryLevel.objects.filter(sku="SKU-A").update(available=999)
    InventoryLevel.objects.create(sku="STALE", available=1)

    response = act(admin_client, CHECKPOINTS_URL, "rebuild_selected", "inventory_levels")

    assert dict(InventoryLevel.objects.values_list("sku", "available")) == {"SKU-A": 6}
    assert messages_of(response) == [f"inventory_levels: rebuilt, {event_store.head_position()} events replayed."]


def test_an_unregistered_checkpoint_is_reported_not_crashed(admin_client: Client) -> None:
    Checkpoint.objects.create(name="gone_projection")

    response = act(admin_client, CHECKPOINTS_URL, "rebuild_selected", "gone_projection")

    assert response.status_code == 200
    assert "Unknown projection 'gone_projection'" in messages_of(response)[0]


def test_retry_applies_the_dead_letters_once_fixed(
    admin_client: Client, event_store: EventStore, flaky: FlakyProjection
) -> None:
    event_store.append("Probe-1", [AdminProbeRecorded(1), AdminProbeRecorded(2)])
    ProjectionRunner(flaky).run()
    assert ProjectionDeadLetter.objects.count() == 2
    listed = admin_client.get(DEAD_LETTERS_URL)
    assert "downstream unavailable" in listed.content.decode()

    flaky.broken = False
    response = act(admin_client, DEAD_LETTERS_URL, "retry_selected", str(ProjectionDeadLetter.objects.first().pk))

    assert flaky.applied == [1, 2]  # every dead letter of the selected projection
    assert not ProjectionDeadLetter.objects.filter(retried_at__isnull=True).exists()
    assert messages_of(response) == ["admin_flaky: 2 applied, 0 still failing."]


def test_staff_with_the_view_permission_only_see_no_actions(client: Client, caught_up_inventory) -> None:
    user = User.objects.create_user("viewer", password="pw-12345", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_checkpoint"))
    client.force_login(user)

    response = client.get(CHECKPOINTS_URL)
    act(client, CHECKPOINTS_URL, "pause_selected", "inventory_levels")

    assert response.status_code == 200
    assert response.context["action_form"] is None
    assert Checkpoint.objects.get(name="inventory_levels").status == CheckpointStatus.RUNNING

"""The saga admin: instances with filters and their history, the managers' checkpoints, and the two repair actions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from eventsourcing_app.aggregates import Repository
from eventsourcing_app.commands import dispatch
from eventsourcing_app.models import Checkpoint, CheckpointStatus, SagaState, SagaStatus
from eventsourcing_app.projections import ProjectionRunner
from eventsourcing_app.sagas import Saga, SagaInstance, Step, on, saga_registry
from eventsourcing_app.store import DomainEvent, EventStore, RecordedEvent
from project.shop.aggregates import Inventory, Order
from project.shop.commands import AddStock, PlaceOrder

pytestmark = pytest.mark.django_db

SAGAS_URL = "/admin/eventsourcing_app/sagastate/"
SHOP_SAGA = "OrderFulfillment"


@dataclass(frozen=True)
class ProbeOpened(DomainEvent, event_type="tests.sagaops.ProbeOpened"):
    probe_id: str


@dataclass(frozen=True)
class ProbeBroken(DomainEvent, event_type="tests.sagaops.ProbeBroken"):
    probe_id: str


class FlakyProbe(Saga):
    """Two steps, each undone by stocking a SKU; undoing the second fails while `broken` is set."""

    name = "SagaOpsFlakyProbe"
    starts_with = ("tests.sagaops.ProbeOpened",)
    correlation_field = "probe_id"
    broken = True
    # What `last_error` said each time the second step's compensation ran.
    seen_errors: list[str] = []

    @on("tests.sagaops.ProbeOpened")
    def opened(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        probe = event.data.probe_id
        return [
            Step(
                "first", AddStock(sku=f"{probe}-1", quantity=1), compensate=AddStock(sku=f"{probe}-UNDO-1", quantity=1)
            ),
            Step("second", AddStock(sku=f"{probe}-2", quantity=1), compensate="undo_second"),
        ]

    @on("tests.sagaops.ProbeBroken")
    def broke(self, saga: SagaInstance, event: RecordedEvent) -> None:
        saga.fail("probe <b>broke</b>")

    def undo_second(self, saga: SagaInstance) -> AddStock:
        self.seen_errors.append(saga.state.last_error)
        if self.broken:
            raise RuntimeError("the undo service is down")
        return AddStock(sku=f"{saga.correlation_id}-UNDO-2", quantity=1)


@pytest.fixture
def probe(settings) -> FlakyProbe:
    settings.EVENTSOURCING = {
        **settings.EVENTSOURCING,
        "SAGA_COMPENSATION_ATTEMPTS": 2,
        "SAGA_COMPENSATION_BACKOFF": 0,
    }
    saga = FlakyProbe()
    saga.broken = True
    saga.seen_errors = []
    saga_registry.register(saga.name, saga)
    yield saga
    saga_registry.unregister(saga.name)


def run_saga(name: str) -> None:
    ProjectionRunner(saga_registry.manager(name)).run()


def failed_probe(event_store: EventStore, probe_id: str) -> SagaState:
    """A probe whose second compensation failed: compensation_failed, both compensations still to run."""
    event_store.append(f"Probe-{probe_id}", [ProbeOpened(probe_id), ProbeBroken(probe_id)])
    run_saga(FlakyProbe.name)
    state = SagaState.objects.get(saga_type=FlakyProbe.name, correlation_id=probe_id)
    assert state.status == SagaStatus.COMPENSATION_FAILED
    return state


def stock_of(sku: str) -> int:
    return Repository(Inventory).load(sku).available


def awaiting_payment() -> str:
    """A shop order whose saga reserved its stock and waits for the payment (deadline set); its id."""
    dispatch(AddStock(sku="KETTLE", quantity=5))
    order_id = dispatch(
        PlaceOrder(customer_id="c-1", items=[{"sku": "KETTLE", "quantity": 2, "unit_price": "10.00"}])
    ).aggregate_id
    runner = ProjectionRunner(saga_registry.manager(SHOP_SAGA), batch_size=1)
    runner.run_batch()  # OrderPlaced → ReserveStock
    runner.run_batch()  # StockReserved → AuthorisePayment, with a deadline; PaymentAuthorised is not handled yet
    runner.release()
    return order_id


def act(client: Client, action: str, *states: SagaState):
    return client.post(SAGAS_URL, {"action": action, "_selected_action": [s.pk for s in states]}, follow=True)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def listed(response) -> set[str]:
    return {state.correlation_id for state in response.context["cl"].result_list}


def staff_client(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    """Staff with the view permission only."""
    return staff_client("viewer", "view_sagastate")


@pytest.fixture
def operator() -> Client:
    """Staff with the view and change permissions."""
    return staff_client("operator", "view_sagastate", "change_sagastate")


# ---------------------------------------------------------------- changelist
class TestChangelist:
    @pytest.fixture
    def sagas(self) -> None:
        now = timezone.now()
        SagaState.objects.create(saga_type="Alpha", correlation_id="a-running", status=SagaStatus.RUNNING)
        SagaState.objects.create(
            saga_type="Alpha",
            correlation_id="a-waiting",
            status=SagaStatus.RUNNING,
            deadline=now + timedelta(hours=1),
        )
        SagaState.objects.create(
            saga_type="Beta", correlation_id="b-overdue", status=SagaStatus.RUNNING, deadline=now - timedelta(hours=1)
        )
        SagaState.objects.create(
            saga_type="Beta", correlation_id="b-done", status=SagaStatus.COMPLETED, completed_at=now
        )

    def test_lists_the_columns(self, admin_client: Client, sagas) -> None:
        response = admin_client.get(SAGAS_URL)

        assert response.status_code == 200
        assert listed(response) == {"a-running", "a-waiting", "b-overdue", "b-done"}
        assert response.context["cl"].list_display[1:] == [
            "saga_type",
            "correlation_id",
            "status",
            "current_step",
            "started_at",
            "updated_at",
            "completed_at",
            "deadline",
            "version",
        ]

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("status=completed", {"b-done"}),
            ("saga_type=Alpha", {"a-running", "a-waiting"}),
            ("deadline=set", {"a-waiting", "b-overdue"}),
            ("deadline=overdue", {"b-overdue"}),
            ("deadline=none", {"a-running", "b-done"}),
            ("saga_type=Beta&status=running", {"b-overdue"}),
            ("q=a-", {"a-running", "a-waiting"}),
            ("q=b-done", {"b-done"}),
        ],
    )
    def test_filters_and_search(self, admin_client: Client, sagas, query: str, expected: set[str]) -> None:
        response = admin_client.get(f"{SAGAS_URL}?{query}")

        assert response.status_code == 200
        assert listed(response) == expected

    def test_shows_the_saga_managers_checkpoints(self, admin_client: Client, without_sagas) -> None:
        order_id = awaiting_payment()

        response = admin_client.get(SAGAS_URL)

        (manager,) = [m for m in response.context["saga_managers"] if m["report"].name == SHOP_SAGA]
        assert manager["report"].checkpoint == "saga:OrderFulfillment"
        assert manager["report"].lag == 1  # PaymentAuthorised
        assert manager["instances"] == [("running", 1)]
        content = response.content.decode()
        assert "Saga managers" in content
        checkpoint_url = "/admin/eventsourcing_app/checkpoint/saga_3AOrderFulfillment/change/"  # the admin's quoting
        assert f'href="{checkpoint_url}"' in content
        assert "saga:OrderFulfillment" in admin_client.get(checkpoint_url).content.decode()
        assert order_id in content

    def test_a_long_history_is_not_loaded_for_the_list(
        self, admin_client: Client, django_assert_max_num_queries
    ) -> None:
        history = [
            {"at": timezone.now().isoformat(), "kind": "event", "event_type": "X", "position": n} for n in range(50)
        ]
        for n in range(30):
            SagaState.objects.create(saga_type="Alpha", correlation_id=f"h-{n}", history=history)

        with django_assert_max_num_queries(20):
            response = admin_client.get(SAGAS_URL)

        assert all("history" in state.get_deferred_fields() for state in response.context["cl"].result_list)


# ---------------------------------------------------------------- detail
class TestDetail:
    def test_shows_the_step_history_as_a_table(self, admin_client: Client, without_sagas) -> None:
        order_id = awaiting_payment()
        state = SagaState.objects.get(saga_type=SHOP_SAGA, correlation_id=order_id)

        response = admin_client.get(f"{SAGAS_URL}{state.pk}/change/")

        assert response.status_code == 200
        content = response.content.decode()
        assert "eventsourcing-saga-table" in content
        rows = [[cell.strip() for cell in row] for row in _table_rows(content)]
        kinds_steps = [(row[1], row[2], row[3]) for row in rows if row[1] in {"event", "command"}]
        assert kinds_steps == [
            ("event", "", ""),
            ("command", "reserve_stock", "ReserveStock"),
            ("event", "", ""),
            ("command", "authorise_payment", "AuthorisePayment"),
        ]
        events = [re.sub(r"<[^>]+>", "", row[4]) for row in rows if row[1] in {"event", "command"}]
        positions = {e.event_type: e.position for e in EventStore().iter_all()}
        assert events == [
            f"OrderPlaced @ {positions['OrderPlaced']}",
            f"StockReserved @ {positions['StockReserved']}",
            f"StockReserved @ {positions['StockReserved']}",
            f"PaymentAuthorised @ {positions['PaymentAuthorised']}",
        ]
        assert f'href="/admin/eventsourcing_app/event/{positions["OrderPlaced"]}/change/"' in content
        # Compensations left, newest last, and the rest of the state.
        assert "ReleaseStock" in content
        assert "cancel_order()" in content
        assert "customer_id" in content  # the data
        assert "Processed events" in content

    def test_escapes_stored_markup(self, admin_client: Client) -> None:
        state = SagaState.objects.create(
            saga_type="Alpha",
            correlation_id="x",
            history=[{"at": "2026-01-01T00:00:00+00:00", "kind": "failed", "reason": "<script>alert(1)</script>"}],
            data={"note": "<img src=x>"},
            last_error="<b>boom</b>",
        )

        content = admin_client.get(f"{SAGAS_URL}{state.pk}/change/").content.decode()

        assert "<script>alert(1)</script>" not in content
        assert "reason: &lt;script&gt;alert(1)&lt;/script&gt;" in content
        assert "<img src=x>" not in content
        assert "<b>boom</b>" not in content

    def test_is_read_only(self, admin_client: Client) -> None:
        state = SagaState.objects.create(saga_type="Alpha", correlation_id="x", status=SagaStatus.RUNNING)
        url = f"{SAGAS_URL}{state.pk}/change/"

        assert admin_client.get(url).status_code == 200
        assert admin_client.post(url, {"status": "completed"}).status_code == 403
        assert admin_client.get(f"{SAGAS_URL}add/").status_code == 403
        assert admin_client.post(f"{SAGAS_URL}{state.pk}/delete/", {"post": "yes"}).status_code == 403
        state.refresh_from_db()
        assert state.status == SagaStatus.RUNNING

    def test_offers_only_its_own_actions(self, admin_client: Client) -> None:
        SagaState.objects.create(saga_type="Alpha", correlation_id="x")

        response = admin_client.get(SAGAS_URL)

        choices = [value for value, _ in response.context["action_form"].fields["action"].choices if value]
        assert choices == ["retry_compensation_selected", "fire_timeout_selected"]


def _table_rows(content: str) -> list[list[str]]:
    """The cells of the history table (the first saga table on the page)."""
    table = content.split('class="eventsourcing-saga-table"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    return [re.findall(r"<td>(.*?)</td>", row, re.DOTALL) for row in re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)]


# ---------------------------------------------------------------- actions
class TestRetryCompensation:
    def test_runs_the_compensations_left_once_fixed(self, operator: Client, probe: FlakyProbe, event_store) -> None:
        state = failed_probe(event_store, "p1")
        assert [c["step"] for c in state.compensations] == ["first", "second"]
        assert "the undo service is down" in state.last_error
        probe.broken = False

        response = act(operator, "retry_compensation_selected", state)

        assert messages_of(response) == ["Compensation retried for 1 saga: 1 compensated, 0 still failing."]
        state.refresh_from_db()
        assert (state.status, state.compensations) == (SagaStatus.COMPENSATED, [])
        # Newest first, each once; the compensation saw the saga's failure, not its own earlier error.
        assert (stock_of("p1-UNDO-2"), stock_of("p1-UNDO-1")) == (1, 1)
        assert probe.seen_errors[-1] == "probe <b>broke</b>"
        kinds = [entry["kind"] for entry in state.history]
        assert kinds[kinds.index("retry_compensation") :] == [
            "retry_compensation",
            "failed",
            "compensated",
            "compensated",
            "status",
        ]
        assert state.history[kinds.index("retry_compensation")]["by"] == "operator"

    def test_a_compensation_failing_again_stays_compensation_failed(
        self, operator: Client, probe: FlakyProbe, event_store
    ) -> None:
        state = failed_probe(event_store, "p2")
        version = state.version

        response = act(operator, "retry_compensation_selected", state)

        assert messages_of(response) == ["Compensation retried for 1 saga: 0 compensated, 1 still failing."]
        state.refresh_from_db()
        assert state.status == SagaStatus.COMPENSATION_FAILED
        assert state.version == version + 1
        assert [c["step"] for c in state.compensations] == ["first", "second"]
        assert not Repository(Inventory).exists("p2-UNDO-1")  # the older step waits for the newer one

    def test_other_sagas_are_skipped_and_counted(self, operator: Client, probe: FlakyProbe, event_store) -> None:
        failed = failed_probe(event_store, "p3")
        running = SagaState.objects.create(saga_type=SHOP_SAGA, correlation_id="o-1", status=SagaStatus.RUNNING)
        done = SagaState.objects.create(saga_type=SHOP_SAGA, correlation_id="o-2", status=SagaStatus.COMPLETED)
        probe.broken = False

        response = act(operator, "retry_compensation_selected", failed, running, done)

        assert messages_of(response) == [
            "Compensation retried for 1 saga: 1 compensated, 0 still failing.",
            "2 selected sagas were skipped: only compensation failed sagas are retried.",
        ]
        running.refresh_from_db()
        assert (running.status, running.version) == (SagaStatus.RUNNING, 0)

    def test_an_unregistered_saga_type_is_reported(self, operator: Client) -> None:
        state = SagaState.objects.create(
            saga_type="Gone", correlation_id="g", status=SagaStatus.COMPENSATION_FAILED, compensations=[{"step": "x"}]
        )

        response = act(operator, "retry_compensation_selected", state)

        assert messages_of(response) == [f"Unknown saga 'Gone'. Known sagas: {SHOP_SAGA}."]
        state.refresh_from_db()
        assert state.status == SagaStatus.COMPENSATION_FAILED


class TestFireTimeout:
    def test_runs_on_timeout_at_once(self, operator: Client, without_sagas) -> None:
        order_id = awaiting_payment()
        state = SagaState.objects.get(saga_type=SHOP_SAGA, correlation_id=order_id)
        assert state.deadline is not None

        response = act(operator, "fire_timeout_selected", state)

        assert messages_of(response) == ["Timeout fired for 1 saga."]
        state.refresh_from_db()
        assert (state.status, state.deadline) == (SagaStatus.COMPENSATED, None)
        order = Repository(Order).load(order_id)
        assert order.status == "cancelled"
        inventory = Repository(Inventory).load("KETTLE")
        assert (inventory.available, inventory.reserved) == (5, 0)
        timeout = next(entry for entry in state.history if entry["kind"] == "timeout")
        assert (timeout["by"], timeout["early"]) == ("operator", True)
        # The payment authorised meanwhile comes too late: the saga has finished and ignores it.
        run_saga(SHOP_SAGA)
        state.refresh_from_db()
        assert state.status == SagaStatus.COMPENSATED
        assert Repository(Order).load(order_id).status == "cancelled"

    def test_sagas_without_a_running_deadline_are_skipped(self, operator: Client) -> None:
        no_deadline = SagaState.objects.create(saga_type=SHOP_SAGA, correlation_id="o-1", status=SagaStatus.RUNNING)
        finished = SagaState.objects.create(
            saga_type=SHOP_SAGA, correlation_id="o-2", status=SagaStatus.COMPLETED, deadline=timezone.now()
        )

        response = act(operator, "fire_timeout_selected", no_deadline, finished)

        assert messages_of(response) == [
            "Timeout fired for 0 sagas.",
            "2 selected sagas were skipped: only running sagas with a deadline have one to fire.",
        ]
        assert SagaState.objects.filter(version=0).count() == 2


# ---------------------------------------------------------------- permissions
class TestPermissions:
    def test_a_non_staff_user_is_sent_to_the_login(self, client: Client) -> None:
        client.force_login(User.objects.create_user("visitor", password="x"))

        response = client.get(SAGAS_URL)

        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")

    def test_a_viewer_sees_the_list_and_details_but_no_actions(self, viewer: Client, probe, event_store) -> None:
        state = failed_probe(event_store, "p4")
        probe.broken = False

        response = viewer.get(SAGAS_URL)
        detail = viewer.get(f"{SAGAS_URL}{state.pk}/change/")
        refused = act(viewer, "retry_compensation_selected", state)

        assert response.status_code == detail.status_code == 200
        assert "action_form" not in response.context or response.context["action_form"] is None
        assert refused.status_code == 200
        state.refresh_from_db()
        assert state.status == SagaStatus.COMPENSATION_FAILED


class TestResumeManager:
    @pytest.fixture
    def stopped(self, without_sagas, monkeypatch) -> str:
        """The shop's saga manager stopped on a bug at the first order (which is left placed); its id."""
        dispatch(AddStock(sku="KETTLE", quantity=5))
        order_id = dispatch(
            PlaceOrder(customer_id="c-1", items=[{"sku": "KETTLE", "quantity": 1, "unit_price": "10.00"}])
        ).aggregate_id
        manager = saga_registry.manager(SHOP_SAGA)
        with monkeypatch.context() as patch:
            patch.setitem(type(manager.saga)._handlers, "OrderPlaced", _raise_bug)
            run_saga(SHOP_SAGA)
        checkpoint = Checkpoint.objects.get(name="saga:OrderFulfillment")
        assert checkpoint.status == CheckpointStatus.FAILED
        return order_id

    def test_a_stopped_manager_is_resumed_from_the_button(self, operator: Client, stopped: str) -> None:
        page = operator.get(SAGAS_URL)
        (manager,) = [m for m in page.context["saga_managers"] if m["report"].name == SHOP_SAGA]
        assert manager["report"].status == "failed"
        assert "RuntimeError: a bug" in manager["report"].last_error
        assert f'action="{RESUME_URL}"' in page.content.decode()

        response = operator.post(RESUME_URL, follow=True)

        assert messages_of(response) == ["Resumed: OrderFulfillment."]
        checkpoint = Checkpoint.objects.get(name="saga:OrderFulfillment")
        assert (checkpoint.status, checkpoint.last_error, checkpoint.failed_position) == ("running", "", None)
        # The resume queued a run (eager here): the order stopped at is handled now that the bug is gone.
        assert Repository(Order).load(stopped).status == "confirmed"

    def test_only_operators_resume_and_only_by_post(self, viewer: Client, operator: Client, stopped: str) -> None:
        assert "Resume" not in viewer.get(SAGAS_URL).content.decode().split('id="saga-managers"')[1].split("</div>")[0]
        assert viewer.post(RESUME_URL).status_code == 403
        assert operator.get(RESUME_URL).status_code == 405
        assert Checkpoint.objects.get(name="saga:OrderFulfillment").status == CheckpointStatus.FAILED

    def test_an_unknown_saga(self, operator: Client) -> None:
        response = operator.post(f"{SAGAS_URL}resume-manager/Nope/", follow=True)

        assert messages_of(response) == [f"Unknown saga 'Nope'. Known sagas: {SHOP_SAGA}."]


RESUME_URL = f"{SAGAS_URL}resume-manager/{SHOP_SAGA}/"


def _raise_bug(self: Saga, saga: SagaInstance, event: RecordedEvent) -> None:
    raise RuntimeError("a bug")

"""Idempotency-Key: replays, reuse with another body, expiry and cleanup, and concurrent duplicates."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from eventsourcing_app.commands import dispatch
from eventsourcing_app.commands.middleware.idempotency import DeferredClaims, IdempotencyKeyTakenError
from eventsourcing_app.exceptions import CommandFailedError, IdempotencyInProgressError
from eventsourcing_app.models import Event, IdempotencyRecord
from eventsourcing_app.tasks import cleanup_idempotency_records
from project.shop.commands import AddStock
from tests.conftest import dispatched_uncommitted, with_lock_timeout

BODY = {"sku": "SKU-IDEM", "quantity": 3}


def add_stock(client, key: str, body: dict | None = None):
    return client.post(
        "/api/commands/AddStock/",
        data=json.dumps(body or BODY),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


@pytest.mark.django_db
class TestReplay:
    def test_a_replay_returns_the_first_response_and_appends_nothing(self, api_client) -> None:
        first = add_stock(api_client, "key-1")
        again = add_stock(api_client, "key-1")
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json()
        assert again["ETag"] == first["ETag"]
        assert again["Idempotent-Replayed"] == "true"
        assert Event.objects.filter(stream_id="Inventory-SKU-IDEM").count() == 1

    def test_the_same_key_with_another_body_is_422(self, api_client) -> None:
        add_stock(api_client, "key-2")
        response = add_stock(api_client, "key-2", {"sku": "SKU-IDEM", "quantity": 4})
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"
        assert Event.objects.filter(stream_id="Inventory-SKU-IDEM").count() == 1

    def test_keys_are_scoped_per_user(self, api_client, client_for, django_user_model) -> None:
        other = django_user_model.objects.create_superuser("other", "o@example.com", "test-password-123")
        first = add_stock(api_client, "shared-key")
        second = add_stock(client_for(other), "shared-key")
        assert second.json()["events"] != first.json()["events"]
        assert Event.objects.filter(stream_id="Inventory-SKU-IDEM").count() == 2

    def test_a_failed_command_stores_no_result(self, api_client) -> None:
        bad = add_stock(api_client, "key-3", {"sku": "SKU-IDEM", "quantity": 0})
        assert bad.status_code == 400
        assert not IdempotencyRecord.objects.filter(key="key-3").exists()
        assert add_stock(api_client, "key-3").status_code == 200

    def test_an_expired_key_runs_the_command_again(self, api_client) -> None:
        add_stock(api_client, "key-4")
        IdempotencyRecord.objects.filter(key="key-4").update(expires_at=timezone.now() - timedelta(seconds=1))
        add_stock(api_client, "key-4")
        assert Event.objects.filter(stream_id="Inventory-SKU-IDEM").count() == 2

    def test_cleanup_deletes_only_expired_records(self, api_client) -> None:
        add_stock(api_client, "old")
        add_stock(api_client, "new")
        IdempotencyRecord.objects.filter(key="old").update(expires_at=timezone.now() - timedelta(seconds=1))
        assert cleanup_idempotency_records() == 1
        assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]


@pytest.mark.django_db
class TestClaimingLast:
    """A command without a savepoint of its own (inside its caller's transaction) claims its key last."""

    def test_it_stores_its_result_in_one_statement(self) -> None:
        with CaptureQueriesContext(connection) as queries, transaction.atomic():
            result = dispatch(AddStock(sku="SKU-LAST", quantity=2), idempotency_key="last-1", savepoint=False)
        statements = [query["sql"] for query in queries.captured_queries]
        assert not [sql for sql in statements if sql.startswith("UPDATE eventsourcing_idempotency_record")]
        record = IdempotencyRecord.objects.get(key="last-1")
        assert record.response == result.to_dict()
        again = dispatch(AddStock(sku="SKU-LAST", quantity=2), idempotency_key="last-1")
        assert (again.replayed, again.events) == (True, result.events)

    def test_a_taken_key_undoes_its_writes_and_a_dispatch_with_a_savepoint_replays(self) -> None:
        first = dispatch(AddStock(sku="SKU-LAST", quantity=2), idempotency_key="last-2")

        with pytest.raises(IdempotencyKeyTakenError), transaction.atomic():
            dispatch(AddStock(sku="SKU-LAST", quantity=2), idempotency_key="last-2", savepoint=False)
        again = dispatch(AddStock(sku="SKU-LAST", quantity=2), idempotency_key="last-2")

        assert (again.replayed, again.events) == (True, first.events)
        assert Event.objects.filter(stream_id="Inventory-SKU-LAST").count() == 1


@pytest.mark.django_db
class TestDeferredClaims:
    """Commands without savepoints leave their keys to their caller, who claims them all in one statement."""

    @staticmethod
    def run_batch(claims: DeferredClaims, keys: list[str]) -> list:
        return [
            dispatch(
                AddStock(sku="SKU-DEFER", quantity=1), idempotency_key=key, savepoint=False, deferred_claims=claims
            )
            for key in keys
        ]

    def claimed_batch(self, keys: list[str]) -> list:
        claims = DeferredClaims("default")
        results = self.run_batch(claims, keys)
        claims.claim_all()
        return results

    def test_the_keys_are_claimed_together_with_their_results(self) -> None:
        with transaction.atomic():
            claims = DeferredClaims("default")
            results = self.run_batch(claims, ["d-1", "d-2", "d-3"])
            assert not IdempotencyRecord.objects.filter(key__startswith="d-").exists()
            with CaptureQueriesContext(connection) as queries:
                claims.claim_all()
        assert [query["sql"].partition(":")[0] for query in queries.captured_queries] == ["3 times"]
        stored = {record.key: record.response for record in IdempotencyRecord.objects.filter(key__startswith="d-")}
        assert stored == {key: result.to_dict() for key, result in zip(["d-1", "d-2", "d-3"], results, strict=True)}

    def test_a_key_stored_already_fails_the_claim_and_a_dispatch_with_a_savepoint_replays(self) -> None:
        first = dispatch(AddStock(sku="SKU-DEFER", quantity=1), idempotency_key="d-taken")

        with pytest.raises(IdempotencyKeyTakenError), transaction.atomic():
            self.claimed_batch(["d-new", "d-taken"])
        again = dispatch(AddStock(sku="SKU-DEFER", quantity=1), idempotency_key="d-taken")

        assert (again.replayed, again.events) == (True, first.events)
        assert not IdempotencyRecord.objects.filter(key="d-new").exists()
        assert Event.objects.filter(stream_id="Inventory-SKU-DEFER").count() == 1

    def test_claims_once_claimed_start_empty_again(self) -> None:
        with transaction.atomic():
            claims = DeferredClaims("default")
            self.run_batch(claims, ["d-first"])
            claims.claim_all()
            self.run_batch(claims, ["d-second"])
            claims.claim_all()
        assert set(IdempotencyRecord.objects.filter(key__startswith="d-").values_list("key", flat=True)) == {
            "d-first",
            "d-second",
        }

    def test_a_command_with_a_savepoint_of_its_own_claims_at_once_and_leaves_nothing_deferred(self) -> None:
        claims = DeferredClaims("default")
        with transaction.atomic():
            dispatch(AddStock(sku="SKU-DEFER", quantity=1), idempotency_key="d-own", deferred_claims=claims)
            assert IdempotencyRecord.objects.filter(key="d-own").exists()
            with CaptureQueriesContext(connection) as queries:
                claims.claim_all()
        assert queries.captured_queries == []

    def test_claims_for_another_database_are_refused_before_the_handler_runs(self) -> None:
        """A programming error: the recovery middleware logs it and the caller gets CommandFailedError."""
        with pytest.raises(CommandFailedError) as failed, transaction.atomic():
            self.run_batch(DeferredClaims("elsewhere"), ["d-astray"])
        assert "claimed on 'elsewhere'" in str(failed.value.__cause__)
        assert not Event.objects.filter(stream_id="Inventory-SKU-DEFER").exists()

    def test_a_key_used_twice_in_one_batch_is_refused_at_once(self) -> None:
        with pytest.raises(IdempotencyKeyTakenError), transaction.atomic():
            self.run_batch(DeferredClaims("default"), ["d-twice", "d-twice"])


@pytest.mark.django_db(transaction=True)
def test_without_a_callers_transaction_a_command_claims_its_key_first_and_replays() -> None:
    """savepoint=False means nothing outside a transaction: the command's transaction is its own."""
    first = dispatch(AddStock(sku="SKU-OWN", quantity=2), idempotency_key="own-1", savepoint=False)
    again = dispatch(AddStock(sku="SKU-OWN", quantity=2), idempotency_key="own-1", savepoint=False)
    assert (again.replayed, again.events) == (True, first.events)
    assert Event.objects.filter(stream_id="Inventory-SKU-OWN").count() == 1


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_identical_requests_append_once(client_for, django_user_model) -> None:
    user = django_user_model.objects.create_superuser("racer", "r@example.com", "test-password-123")
    barrier = threading.Barrier(10)
    responses: list = [None] * 10

    def send(index: int) -> None:
        client = client_for(user)
        barrier.wait()
        try:
            responses[index] = add_stock(client, "racing-key")
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert Event.objects.filter(stream_id="Inventory-SKU-IDEM").count() == 1
    ok = [r for r in responses if r.status_code == 200]
    assert ok, [r.status_code for r in responses]
    first = ok[0].json()
    for response in responses:
        assert response.status_code in (200, 409), response.content
        if response.status_code == 200:
            assert response.json() == first


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_duplicate_still_running_when_the_wait_ends_is_in_progress() -> None:
    """The first command holds its key, uncommitted, past the duplicate's lock_timeout: 409, not a hang or a 500."""
    held = dispatched_uncommitted(AddStock(sku="SKU-HELD", quantity=1), idempotency_key="held")
    with held, pytest.raises(IdempotencyInProgressError):
        with_lock_timeout(lambda: dispatch(AddStock(sku="SKU-HELD", quantity=1), idempotency_key="held"))

    assert Event.objects.filter(stream_id="Inventory-SKU-HELD").count() == 1  # the first command's


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_deferred_claims_waiting_past_the_lock_timeout_are_in_progress() -> None:
    def run_and_claim() -> None:
        claims = DeferredClaims("default")
        dispatch(AddStock(sku="SKU-ELSE", quantity=1), idempotency_key="held", savepoint=False, deferred_claims=claims)
        claims.claim_all()

    held = dispatched_uncommitted(AddStock(sku="SKU-HELD", quantity=1), idempotency_key="held")
    with held, pytest.raises(IdempotencyInProgressError):
        with_lock_timeout(run_and_claim)

    assert not Event.objects.filter(stream_id="Inventory-SKU-ELSE").exists()  # rolled back with the claim

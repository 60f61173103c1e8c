"""POST /api/commands/<CommandType>/: every status code of DESIGN §3, as problem details."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.contrib.auth.models import Permission
from rest_framework import serializers

from eventsourcing_app.commands import Command, CommandContext, handles
from eventsourcing_app.models import Event
from eventsourcing_app.store import EventStore

pytestmark = pytest.mark.django_db


class ExplodingCommand(Command):
    """A command whose handler fails unexpectedly."""

    reason = serializers.CharField()


class SlowCommand(Command):
    seconds = serializers.FloatField(min_value=0, max_value=1)


@handles(ExplodingCommand)
def explode(command: ExplodingCommand, context: CommandContext) -> None:
    raise RuntimeError(f"secret internals: {command.reason}")


@handles(SlowCommand)
def slow(command: SlowCommand, context: CommandContext) -> None:
    time.sleep(command.seconds)


def post(client, command_type: str, body: object, **headers: str):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(f"/api/commands/{command_type}/", data=data, content_type="application/json", **headers)


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert "Traceback" not in response.content.decode()
    return body


def place_order(client, **extra: str):
    body = {"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 2, "unit_price": "9.99"}]}
    return post(client, "PlaceOrder", body, **extra)


class TestSuccess:
    def test_add_stock_names_the_inventory_stream_and_version(self, api_client) -> None:
        response = post(api_client, "AddStock", {"sku": "SKU-1", "quantity": 5})
        assert response.status_code == 200
        body = response.json()
        assert body["aggregate_id"] == "SKU-1"
        assert (body["stream_id"], body["version"]) == ("Inventory-SKU-1", 1)
        assert [(e["event_type"], e["version"]) for e in body["events"]] == [("StockAdded", 1)]
        assert isinstance(body["events"][0]["position"], int)
        assert response["ETag"] == "1"
        assert response["X-Correlation-ID"] == body["correlation_id"]

    def test_place_order_returns_the_order_id(self, api_client) -> None:
        body = place_order(api_client).json()
        uuid.UUID(body["aggregate_id"])
        assert body["stream_id"] == f"Order-{body['aggregate_id']}"

    def test_correlation_and_causation_are_stamped_on_events(self, api_client) -> None:
        body = place_order(api_client, HTTP_X_CORRELATION_ID="corr-123").json()
        assert body["correlation_id"] == "corr-123"
        (event,) = EventStore().read_stream(body["stream_id"])
        assert event.metadata["correlation_id"] == "corr-123"
        uuid.UUID(event.metadata["causation_id"])  # the command's id
        assert event.metadata["user_id"]

    def test_if_match_makes_the_command_conditional(self, api_client) -> None:
        order = place_order(api_client).json()
        body = {"order_id": order["aggregate_id"], "reason": "changed my mind"}
        stale = post(api_client, "CancelOrder", body, HTTP_IF_MATCH="5")
        problem = assert_problem(stale, 409)
        assert (problem["expected_version"], problem["actual_version"]) == ("5", 1)
        response = post(api_client, "CancelOrder", body, HTTP_IF_MATCH="1")
        assert response.status_code == 200
        assert response["ETag"] == "2"


class TestClientErrors:
    def test_invalid_json_is_400(self, api_client) -> None:
        assert_problem(post(api_client, "AddStock", "{not json"), 400)

    @pytest.mark.parametrize("body", [[1, 2], "3", "null", '"text"'])
    def test_a_body_that_is_not_an_object_is_400(self, api_client, body: str) -> None:
        assert_problem(post(api_client, "AddStock", body if isinstance(body, str) else json.dumps(body)), 400)

    def test_validation_errors_name_each_field(self, api_client) -> None:
        problem = assert_problem(post(api_client, "AddStock", {"sku": "", "quantity": 0}), 400)
        assert set(problem["errors"]) == {"sku", "quantity"}

    def test_nested_item_errors_are_reported(self, api_client) -> None:
        body = {"customer_id": "c", "items": [{"sku": "S", "quantity": 1, "unit_price": "abc"}]}
        problem = assert_problem(post(api_client, "PlaceOrder", body), 400)
        assert "unit_price" in problem["errors"]["items"]["0"]  # DRF keys list errors by index

    def test_malformed_uuid_is_400_and_unknown_uuid_is_404(self, api_client) -> None:
        assert_problem(post(api_client, "ShipOrder", {"order_id": "not-a-uuid"}), 400)
        assert_problem(post(api_client, "ShipOrder", {"order_id": str(uuid.uuid4())}), 404)

    @pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
    def test_bad_if_match_is_400(self, api_client, value: str) -> None:
        assert_problem(post(api_client, "AddStock", {"sku": "S", "quantity": 1}, HTTP_IF_MATCH=value), 400)

    def test_unknown_command_type_is_404(self, api_client) -> None:
        assert assert_problem(post(api_client, "NoSuchCommand", {}), 404)["code"] == "unknown_command"

    def test_domain_rule_is_422(self, api_client) -> None:
        order = place_order(api_client).json()
        problem = assert_problem(post(api_client, "ShipOrder", {"order_id": order["aggregate_id"]}), 422)
        assert "confirmed" in problem["detail"]

    def test_too_large_is_413(self, api_client, settings) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "MAX_COMMAND_BODY_BYTES": 100}
        body = {"sku": "S" * 50, "quantity": 1, "padding": "x" * 200}
        assert_problem(post(api_client, "AddStock", body), 413)

    def test_not_json_is_415(self, api_client) -> None:
        response = api_client.post("/api/commands/AddStock/", data="sku=S&quantity=1", content_type="text/plain")
        assert_problem(response, 415)

    def test_throttled_is_429(self, api_client, settings) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "COMMAND_THROTTLE_RATE": "2/minute"}
        from django.core.cache import cache

        cache.clear()
        statuses = [post(api_client, "AddStock", {"sku": "S", "quantity": 1}).status_code for _ in range(3)]
        assert statuses[:2] == [200, 200]
        response = post(api_client, "AddStock", {"sku": "S", "quantity": 1})
        assert_problem(response, 429)
        assert int(response["Retry-After"]) > 0


class TestAuth:
    def test_anonymous_is_401_with_a_challenge(self, client) -> None:
        response = client.post("/api/commands/AddStock/", data="{}", content_type="application/json")
        assert_problem(response, 401)
        assert response["WWW-Authenticate"].startswith("Basic")

    def test_wrong_password_is_401(self, client_for, plain_user) -> None:
        plain_user.username = "plain"
        client = client_for(plain_user)
        client.credentials(HTTP_AUTHORIZATION="Basic cGxhaW46d3Jvbmc=")  # plain:wrong
        assert_problem(post(client, "AddStock", {"sku": "S", "quantity": 1}), 401)

    def test_user_without_the_permission_is_403(self, plain_client) -> None:
        problem = assert_problem(post(plain_client, "AddStock", {"sku": "S", "quantity": 1}), 403)
        assert "dispatch_addstock" in problem["detail"]
        assert not Event.objects.exists()

    def test_granted_permission_allows_that_command_only(self, plain_client, plain_user) -> None:
        plain_user.user_permissions.add(Permission.objects.get(codename="dispatch_addstock"))
        assert post(plain_client, "AddStock", {"sku": "S", "quantity": 1}).status_code == 200
        assert_problem(place_order(plain_client), 403)

    def test_session_authentication_works(self, client, superuser) -> None:
        client.force_login(superuser)
        response = client.post(
            "/api/commands/AddStock/", data=json.dumps({"sku": "S", "quantity": 1}), content_type="application/json"
        )
        assert response.status_code == 200


class TestServerErrors:
    def test_unexpected_error_is_a_500_problem_without_details(self, api_client, caplog) -> None:
        problem = assert_problem(post(api_client, "ExplodingCommand", {"reason": "boom"}), 500)
        assert "secret internals" not in json.dumps(problem)
        assert "detail" not in problem
        assert "secret internals: boom" in caplog.text  # logged server-side with its traceback
        assert any(record.exc_info for record in caplog.records)

    def test_a_command_past_its_time_limit_is_rolled_back(self, api_client, settings) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "COMMAND_TIMEOUT": 0.05}
        problem = assert_problem(post(api_client, "SlowCommand", {"seconds": 0.2}), 503)
        assert problem["code"] == "command_timeout"

"""The OpenAPI schema documents every command, and fuzzing the command endpoints finds no 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventsourcing_app.commands import command_registry
from project.shop import commands as shop_commands

pytestmark = pytest.mark.django_db

SHOP_COMMANDS = [
    name
    for name in command_registry.names()
    if command_registry.lookup(name).command_class.__module__ == shop_commands.__name__
]


@pytest.fixture
def schema(api_client) -> dict:
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return json.loads(response.content)


def test_each_command_has_its_request_schema_and_example(schema: dict) -> None:
    for name in SHOP_COMMANDS:
        operation = schema["paths"][f"/api/commands/{name}/"]["post"]
        body = operation["requestBody"]["content"]["application/json"]
        component = body["schema"]["$ref"].rsplit("/", 1)[1]
        assert component in schema["components"]["schemas"]
        assert {"200", "400", "401", "403", "404", "409", "422"} <= set(operation["responses"])
        if command_registry.lookup(name).command_class.example:
            assert body["examples"]
    place_order = schema["components"]["schemas"]["PlaceOrderRequest"]
    assert set(place_order["required"]) == {"customer_id", "items"}


def test_read_endpoints_are_documented(schema: dict) -> None:
    assert {"/api/events/", "/api/streams/", "/api/streams/{stream_id}/", "/api/streams/{stream_id}/events/"} <= set(
        schema["paths"]
    )


def test_the_docs_page_renders(api_client) -> None:
    response = api_client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def field_bodies(command_type: str) -> st.SearchStrategy:
    """Objects with the command's own field names (and stray ones) holding arbitrary JSON values."""
    fields = list(command_registry.lookup(command_type).command_class.serializer_class().fields)
    item = st.fixed_dictionaries({}, optional={"sku": json_values, "quantity": json_values, "unit_price": json_values})
    values = json_values | st.lists(item, max_size=3) | st.uuids().map(str)
    return st.dictionaries(st.sampled_from([*fields, "extra"]), values, max_size=len(fields) + 1)


@pytest.mark.parametrize("command_type", SHOP_COMMANDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_bodies_never_get_a_5xx(api_client, command_type: str, data: st.DataObject) -> None:
    body = data.draw(field_bodies(command_type) | json_values)
    response = api_client.post(f"/api/commands/{command_type}/", data=json.dumps(body), content_type="application/json")
    assert response.status_code < 500, (body, response.content)
    if response.status_code >= 400:
        assert response["Content-Type"] == "application/problem+json"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzzed_raw_bytes_never_get_a_5xx(api_client, raw: bytes) -> None:
    response = api_client.post("/api/commands/PlaceOrder/", data=raw, content_type="application/json")
    assert response.status_code < 500, (raw, response.content)

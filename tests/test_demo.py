"""The demo's management commands: seed_demo and create_demo_superuser."""

from __future__ import annotations

import io
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from eventsourcing_app.aggregates import Repository
from eventsourcing_app.models import Event, SagaState, SagaStatus
from project.shop.aggregates import Inventory, Order
from project.shop.management.commands.seed_demo import CATALOGUE, DEMO_NAMESPACE

pytestmark = pytest.mark.django_db


def test_seed_demo_fills_the_shop_once() -> None:
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "4 new orders" in out.getvalue()
    count = Event.objects.count()
    call_command("seed_demo", stdout=io.StringIO())
    assert Event.objects.count() == count
    # Every order went through the fulfilment saga: reserved and confirmed, then bob's shipped and
    # carol's cancelled (her mugs released).
    assert {sku: Repository(Inventory).load(sku).available for sku in CATALOGUE} == {
        "SKU-KETTLE": 40 - 1 - 2,
        "SKU-TEAPOT": 15 - 2 - 1,
        "SKU-MUG": 120 - 4,
    }
    statuses = [Repository(Order).load(uuid.uuid5(DEMO_NAMESPACE, str(i))).status for i in range(4)]
    assert statuses == ["confirmed", "shipped", "cancelled", "confirmed"]
    assert set(SagaState.objects.values_list("status", flat=True)) == {SagaStatus.COMPLETED}


def test_demo_superuser_is_created_once_with_printed_credentials() -> None:
    out = io.StringIO()
    call_command("create_demo_superuser", stdout=out)
    username, password = out.getvalue().strip().rsplit(" as ", 1)[1].split(" / ")
    user = get_user_model().objects.get(username=username)
    assert user.is_superuser
    assert user.check_password(password)
    again = io.StringIO()
    call_command("create_demo_superuser", stdout=again)
    assert "exists already" in again.getvalue()
    assert get_user_model().objects.count() == 1

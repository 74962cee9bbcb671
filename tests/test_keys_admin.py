"""Keys and Teams admin pages with Django's test client (the browser flows: test_keys_browser.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from credentials.models import hash_key
from keys.models import ApiKey, Team

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


def key_post(**overrides) -> dict:
    data = {"key_alias": "alice", "team": "", "user_id": "", "models": "gpt-4o, claude-*", "rpm_limit": "",
            "tpm_limit": "", "max_parallel_requests": "", "max_budget": "10", "budget_duration": "30d",
            "soft_budget": "", "expires_0": "", "expires_1": "", "metadata": "{}"}
    data.update(overrides)
    return data


def test_adding_a_key_shows_its_secret_once(admin_client):
    res = admin_client.post("/admin/keys/apikey/add/", key_post())
    assert res.status_code == 200, res.content[:2000]
    key = ApiKey.objects.get()
    html = res.content.decode()
    start = html.index('class="new-secret"')
    secret = html[html.index(">", start) + 1: html.index("<", start)]
    assert hash_key(secret) == key.key_hash and "no-store" in res["Cache-Control"]
    assert key.models == ["gpt-4o", "claude-*"] and key.budget_reset_at is not None
    for page in ("/admin/keys/apikey/", f"/admin/keys/apikey/{key.pk}/change/"):
        body = admin_client.get(page).content.decode()
        assert secret not in body and key.key_name in body


def test_list_columns_actions_filters_search(admin_client):
    team = Team.objects.create(team_alias="platform", max_budget=Decimal(100))
    alice = ApiKey(key_alias="alice", team=team, max_budget=Decimal(2), spend=Decimal("2.5"))
    alice.set_secret("sk-alice-secret-0000000000000000")
    alice.save()
    bob = ApiKey(key_alias="bob")
    bob.set_secret("sk-bob-secret-00000000000000000000")
    bob.save()
    body = admin_client.get("/admin/keys/apikey/").content.decode()
    assert "platform" in body and "$2.5 / $2" in body and "over budget" in body and "active" in body
    over = admin_client.get("/admin/keys/apikey/?status=over_budget").content.decode()
    assert "alice" in over and ">bob<" not in over
    assert ">bob<" in admin_client.get("/admin/keys/apikey/?q=bob").content.decode()
    admin_client.post("/admin/keys/apikey/", {"action": "block", "_selected_action": [bob.pk]})
    assert ApiKey.objects.get(pk=bob.pk).blocked
    res = admin_client.post("/admin/keys/apikey/", {"action": "regenerate", "_selected_action": [bob.pk]})
    bob.refresh_from_db()
    assert bob.key_hash != hash_key("sk-bob-secret-00000000000000000000")
    assert bob.key_name[:7] in res.content.decode()
    teams = admin_client.get("/admin/keys/team/").content.decode()
    assert "platform" in teams and "$0 / $100" in teams

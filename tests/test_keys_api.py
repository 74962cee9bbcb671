"""The management API: LiteLLM's routes and field names, master-key or admin-session auth, field errors."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from credentials.models import RouterSettings, hash_key
from keys.models import ApiKey, Team

pytestmark = pytest.mark.django_db

MASTER = "sk-router-master-for-api-tests"


@pytest.fixture(autouse=True)
def _master(settings):
    settings.ROUTER_MASTER_KEY = None
    row = RouterSettings.load()
    row.set_master_key(MASTER)
    row.save()


@pytest.fixture
def api(client):
    def call(method: str, path: str, body: dict | None = None, *, auth: str | None = MASTER, **params):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {auth}"} if auth else {}
        if method == "get":
            return client.get(path, params, **headers)
        return client.post(path, body or {}, content_type="application/json", **headers)
    return call


def test_generate_returns_the_secret_once_and_stores_only_its_hash(api):
    res = api("post", "/key/generate", {"key_alias": "alice-codex", "models": ["gpt-4o", "claude-*"],
                                        "max_budget": 10, "budget_duration": "30d", "rpm_limit": 60,
                                        "tpm_limit": 100000, "max_parallel_requests": 4, "soft_budget": 8,
                                        "user_id": "alice", "metadata": {"ci": False}, "duration": "7d"})
    assert res.status_code == 200, res.content
    data = res.json()
    secret = data["key"]
    assert secret.startswith("sk-") and len(secret) >= 3 + 43
    assert data["key_alias"] == "alice-codex" and data["token"] and data["token"] not in secret
    assert data["models"] == ["gpt-4o", "claude-*"] and data["max_budget"] == 10.0 and data["rpm_limit"] == 60
    assert data["tpm_limit"] == 100000 and data["max_parallel_requests"] == 4 and data["soft_budget"] == 8.0
    assert data["budget_duration"] == "30d" and data["spend"] == 0.0 and data["user_id"] == "alice"
    expires = timezone.datetime.fromisoformat(data["expires"])
    assert timedelta(days=6, hours=23) < expires - timezone.now() <= timedelta(days=7)
    reset = timezone.datetime.fromisoformat(data["budget_reset_at"])
    assert timedelta(days=29, hours=23) < reset - timezone.now() <= timedelta(days=30)
    key = ApiKey.objects.get(pk=data["token"])
    assert key.key_hash == hash_key(secret)
    stored = " ".join(str(v) for v in ApiKey.objects.filter(pk=key.pk).values().first().values())
    assert secret not in stored and secret[7:-4] not in stored
    assert data["key_name"] == key.key_name == f"{secret[:7]}…{secret[-4:]}"
    # never again: info shows the mask and the id only
    info = api("get", "/key/info", key=secret).json()
    assert "key" not in info["info"] and secret not in str(info)
    assert info["key"] == key.token and info["info"]["spend"] == 0.0 and info["info"]["max_budget"] == 10.0


def test_custom_key_and_its_validation(api):
    custom = "sk-my-own-key-for-the-ci-job-0001"
    assert api("post", "/key/generate", {"key": custom}).json()["key"] == custom
    res = api("post", "/key/generate", {"key": custom})
    assert res.status_code == 400 and res.json()["error"]["param"] == "key"
    res = api("post", "/key/generate", {"key": "short"})
    assert res.status_code == 400 and "sk-" in res.json()["error"]["message"]
    assert api("post", "/key/generate", {"key": MASTER}).status_code == 400


@pytest.mark.parametrize("body, field", [
    ({"max_budget": "lots"}, "max_budget"), ({"max_budget": -1}, "max_budget"), ({"budget_duration": "monthly"},
                                                                                 "budget_duration"),
    ({"duration": "1x"}, "duration"), ({"rpm_limit": -5}, "rpm_limit"), ({"models": "gpt-4o"}, "models"),
    ({"tpm_limit": 10**12}, "tpm_limit"), ({"max_parallel_requests": 2**31}, "max_parallel_requests"),
    ({"team_id": "nope"}, "team_id"), ({"metadata": [1]}, "metadata"),
])
def test_bad_input_is_a_400_naming_the_field(api, body, field):
    res = api("post", "/key/generate", body)
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["param"] == field and field in error["fields"] and error["type"] == "invalid_request_error"
    assert error["code"] == "400" and field in error["message"]


def test_auth_master_key_admin_session_and_client_keys(api, client, django_user_model):
    assert api("get", "/key/list", auth=None).status_code in (401, 403)
    res = api("get", "/key/list", auth="sk-wrong-key-1234567890")
    assert res.status_code == 401 and res.json()["error"]["type"] == "authentication_error"
    client_key = api("post", "/key/generate", {}).json()["key"]
    res = api("get", "/key/list", auth=client_key)
    assert res.status_code == 403 and res.json()["error"]["type"] == "permission_error"
    staff = django_user_model.objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/key/list").status_code == 200
    # a session needs the CSRF token for writes (DRF's SessionAuthentication)
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert strict.post("/key/generate", {}, content_type="application/json").status_code == 403


def test_update_block_unblock_regenerate_delete(api):
    made = api("post", "/key/generate", {"key_alias": "ci"}).json()
    token, old = made["token"], made["key"]
    res = api("post", "/key/update", {"key": token, "max_budget": 5, "models": ["gpt-4o"], "key_alias": "ci-job"})
    assert res.status_code == 200 and res.json()["max_budget"] == 5.0 and res.json()["key_alias"] == "ci-job"
    assert api("post", "/key/block", {"key": old}).json()["blocked"] is True
    assert ApiKey.objects.get(pk=token).status() == "blocked"
    assert api("post", "/key/unblock", {"key": token}).json()["blocked"] is False
    regen = api("post", "/key/regenerate", {"key": old}).json()
    assert regen["token"] == token and regen["key"] != old and regen["max_budget"] == 5.0
    assert api("get", "/key/info", key=old).status_code == 404
    assert api("get", "/key/info", key=regen["key"]).json()["key"] == token
    again = api("post", f"/key/{token}/regenerate", {}).json()
    assert again["key"] not in (old, regen["key"])
    res = api("post", "/key/delete", {"keys": [token]})
    assert res.json() == {"deleted_keys": [token]} and not ApiKey.objects.exists()
    assert api("post", "/key/delete", {"keys": [token]}).status_code == 404
    assert api("post", "/key/delete", {}).status_code == 400
    assert api("post", "/key/update", {"max_budget": 1}).json()["error"]["param"] == "key"
    assert api("post", "/team/update", {"max_budget": 1}).json()["error"]["param"] == "team_id"


def test_spend_reset_bumps_the_generation(api):
    token = api("post", "/key/generate", {"max_budget": 1}).json()["token"]
    ApiKey.objects.filter(pk=token).update(spend=Decimal("0.75"))
    assert api("get", "/key/info", key=token).json()["info"]["spend"] == 0.75
    res = api("post", "/key/update", {"key": token, "spend": 0})
    assert res.json()["spend"] == 0.0 and ApiKey.objects.get(pk=token).spend_generation == 1


def test_list_pages_and_filters(api):
    team = api("post", "/team/new", {"team_alias": "platform"}).json()["team_id"]
    tokens = [api("post", "/key/generate", {"key_alias": f"k{i}", "team_id": team if i % 2 else None}).json()["token"]
              for i in range(5)]
    page = api("get", "/key/list", size=2, page=2).json()
    assert page == {"keys": tokens[2:4], "total_count": 5, "current_page": 2, "total_pages": 3}
    mine = api("get", "/key/list", team_id=team, return_full_object="true").json()
    assert [k["key_alias"] for k in mine["keys"]] == ["k1", "k3"] and all(k["team_id"] == team for k in mine["keys"])
    assert api("get", "/key/list", page="x").status_code == 400


def test_teams(api):
    res = api("post", "/team/new", {"team_alias": "research", "models": ["gpt-4o"], "max_budget": 100,
                                    "budget_duration": "1mo", "tpm_limit": 1000, "rpm_limit": 10})
    assert res.status_code == 200, res.content
    team = res.json()
    assert team["team_alias"] == "research" and team["max_budget"] == 100.0 and team["budget_duration"] == "1mo"
    team_id = team["team_id"]
    assert api("post", "/team/new", {"team_alias": "research"}).status_code == 400
    assert api("post", "/team/new", {}).json()["error"]["param"] == "team_alias"
    key = api("post", "/key/generate", {"team_id": team_id, "key_alias": "r1"}).json()
    info = api("get", "/team/info", team_id=team_id).json()
    assert info["team_id"] == team_id and info["team_info"]["rpm_limit"] == 10
    assert [k["token"] for k in info["keys"]] == [key["token"]]
    updated = api("post", "/team/update", {"team_id": team_id, "max_budget": 50, "blocked": True}).json()
    assert updated["max_budget"] == 50
    assert ApiKey.objects.get(pk=key["token"]).status() == "team blocked"
    assert [t["team_alias"] for t in api("get", "/team/list").json()] == ["research"]
    assert api("get", "/team/info", team_id="nope").status_code == 404
    assert api("post", "/team/delete", {"team_ids": [team_id]}).json() == {"deleted_teams": [team_id]}
    assert not Team.objects.exists() and not ApiKey.objects.exists()  # a team's keys go with it


def test_openapi_schema_and_docs_page(api, client, django_user_model):
    schema = api("get", "/api/schema", format="json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for route in ("/key/generate", "/key/info", "/key/update", "/key/delete", "/key/list", "/key/regenerate",
                  "/key/block", "/key/unblock", "/team/new", "/team/info", "/team/update", "/team/delete",
                  "/team/list"):
        assert route in paths, route
    body = paths["/key/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = schema.json()["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"]
    assert {"models", "key_alias", "duration", "max_budget", "budget_duration", "soft_budget", "tpm_limit",
            "rpm_limit", "max_parallel_requests", "team_id", "user_id", "metadata", "key"} <= set(fields)
    client.force_login(django_user_model.objects.create_user("ops", password="pw", is_staff=True))
    page = client.get("/api/docs")
    assert page.status_code == 200 and b"swagger-ui" in page.content and b"cdn" not in page.content.lower()

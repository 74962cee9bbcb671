"""The admin for ops teams: pages render, secrets stay write-only and masked, validation messages show."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from credentials.models import Credential, ModelAlias, ProviderModel, RouterSettings, hash_key
from tests.factories import CredentialFactory, ModelAliasFactory, ProviderModelFactory, service_account_json

pytestmark = pytest.mark.django_db

SECRET = "sk-proj-VerySecretKey0000a1b2"


@pytest.fixture(autouse=True)
def _settings(settings):
    settings.ROUTER_ENCRYPTION_KEY = "admin-tests-key"
    settings.ROUTER_MASTER_KEY = None


@pytest.fixture
def data():
    """One object of each model, with secrets to look for in the HTML."""
    openai = CredentialFactory(name="openai_main", api_key=SECRET, base_url="https://api.openai.com")
    vertex = CredentialFactory(name="vertex_main", vertex=True)
    model = ProviderModelFactory(name="gpt-4o", credential=openai)
    alias = ModelAliasFactory(alias="fast", targets=["gpt-4o", "claude"])
    router = RouterSettings.load()
    router.set_master_key("sk-router-master-secret")
    router.save()
    return {"credential": openai, "vertex": vertex, "providermodel": model, "modelalias": alias,
            "routersettings": router}


def url(name: str, model: str, *args) -> str:
    return reverse(f"admin:credentials_{model}_{name}", args=args)


def assert_no_secrets(html: str, vertex: Credential | None = None) -> None:
    assert SECRET not in html
    assert "sk-router-master-secret" not in html
    if vertex is not None:
        info = json.loads(vertex.service_account_json)
        assert info["private_key"].splitlines()[1] not in html
        assert "PRIVATE KEY" not in html


def credential_post(**overrides) -> dict:
    """A full Credential change-form POST (no inline models unless given)."""
    post = {
        "name": "cred", "type": "openai", "enabled": "on", "weight": "1", "base_url": "", "api_key": "",
        "extra_headers": "{}", "project_id": "", "location": "", "service_account_json": "", "credentials_file": "",
        "rpm": "", "tpm": "",
        "models-TOTAL_FORMS": "0", "models-INITIAL_FORMS": "0", "models-MIN_NUM_FORMS": "0",
        "models-MAX_NUM_FORMS": "1000",
    }
    post.update(overrides)
    return post


# ---- every page renders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["credential", "providermodel", "modelalias", "routersettings"])
def test_changelist_renders(admin_client, data, model):
    response = admin_client.get(url("changelist", model))
    assert response.status_code == 200
    assert_no_secrets(response.content.decode(), data["vertex"])


@pytest.mark.parametrize("model", ["credential", "providermodel", "modelalias"])
def test_add_form_renders(admin_client, data, model):
    response = admin_client.get(url("add", model))
    assert response.status_code == 200


def test_router_settings_add_form_renders_only_when_there_is_none(admin_client):
    assert admin_client.get(url("add", "routersettings")).status_code == 200
    RouterSettings.load()
    assert admin_client.get(url("add", "routersettings")).status_code == 403


@pytest.mark.parametrize("model", ["credential", "vertex", "providermodel", "modelalias", "routersettings"])
def test_change_form_renders_without_secrets(admin_client, data, model):
    obj = data[model]
    response = admin_client.get(url("change", obj._meta.model_name, obj.pk))
    assert response.status_code == 200
    assert_no_secrets(response.content.decode(), data["vertex"])


# ---- credentials: masked, searchable, filterable ---------------------------------------------------------


def test_credential_changelist_shows_masked_key_and_model_count(admin_client, data):
    html = admin_client.get(url("changelist", "credential")).content.decode()
    assert "sk-…a1b2" in html
    assert SECRET not in html
    assert "https://api.openai.com" in html


def test_credential_change_form_shows_what_is_stored(admin_client, data):
    html = admin_client.get(url("change", "credential", data["credential"].pk)).content.decode()
    assert "Stored: sk-…a1b2" in html
    assert 'type="password"' in html
    vertex = admin_client.get(url("change", "credential", data["vertex"].pk)).content.decode()
    assert "Stored: service account router-test@test-project.iam.gserviceaccount.com" in vertex


def test_credential_search_by_model_name_and_filters(admin_client, data):
    CredentialFactory(name="anthropic_main", anthropic=True)
    html = admin_client.get(url("changelist", "credential"), {"q": "gpt-4o"}).content.decode()
    assert "openai_main" in html and "anthropic_main" not in html
    html = admin_client.get(url("changelist", "credential"), {"type__exact": "anthropic"}).content.decode()
    assert "anthropic_main" in html and "openai_main" not in html
    html = admin_client.get(url("changelist", "credential"), {"q": "api.openai.com"}).content.decode()
    assert "openai_main" in html


# ---- credentials: write-only secrets --------------------------------------------------------------------


def test_blank_secret_keeps_the_stored_one(admin_client, data):
    cred = data["credential"]
    post = credential_post(name=cred.name, base_url=cred.base_url, rpm="60")
    response = admin_client.post(url("change", "credential", cred.pk), post)
    assert response.status_code == 302, response.content.decode()
    cred.refresh_from_db()
    assert cred.api_key == SECRET and cred.rpm == 60


def test_blank_service_account_keeps_the_stored_one(admin_client, data):
    vertex = data["vertex"]
    stored = vertex.service_account_json
    post = credential_post(name=vertex.name, type="vertex-ai", project_id="p2", location="global")
    assert admin_client.post(url("change", "credential", vertex.pk), post).status_code == 302
    vertex.refresh_from_db()
    assert vertex.service_account_json == stored and vertex.project_id == "p2"


def test_typed_secret_replaces_the_stored_one(admin_client, data):
    cred = data["credential"]
    post = credential_post(name=cred.name, api_key="sk-proj-NewKey0000000zzzz")
    assert admin_client.post(url("change", "credential", cred.pk), post).status_code == 302
    cred.refresh_from_db()
    assert cred.api_key == "sk-proj-NewKey0000000zzzz"


def test_clear_checkbox_removes_the_stored_secret(admin_client, data):
    cred = data["credential"]
    post = credential_post(name=cred.name, base_url="http://localhost:11434/v1", clear_api_key="on")
    assert admin_client.post(url("change", "credential", cred.pk), post).status_code == 302
    cred.refresh_from_db()
    assert cred.api_key == ""


def test_clear_and_new_value_together_is_refused(admin_client, data):
    cred = data["credential"]
    post = credential_post(name=cred.name, api_key="sk-proj-other-000000", clear_api_key="on")
    response = admin_client.post(url("change", "credential", cred.pk), post)
    assert response.status_code == 200
    assert "Either type a new value or remove the stored one, not both." in response.content.decode()
    cred.refresh_from_db()
    assert cred.api_key == SECRET


def test_add_credential_with_an_inline_model(admin_client):
    post = credential_post(name="new_one", api_key="sk-proj-added-000000", **{
        "models-TOTAL_FORMS": "1", "models-0-name": "gpt-4o-mini", "models-0-upstream_model": "",
        "models-0-rpm": "5", "models-0-tpm": "", "models-0-enabled": "on",
    })
    response = admin_client.post(url("add", "credential"), post)
    assert response.status_code == 302, response.content.decode()
    cred = Credential.objects.get(name="new_one")
    assert cred.api_key == "sk-proj-added-000000"
    assert list(cred.models.values_list("name", "rpm")) == [("gpt-4o-mini", 5)]


def test_change_form_marks_secret_fields_sensitive(admin_client, data):
    cred = data["credential"]
    response = admin_client.post(url("change", "credential", cred.pk), credential_post(name=cred.name))
    assert set(response.wsgi_request.sensitive_post_parameters) >= {"api_key", "service_account_json"}


# ---- credentials: validation messages -------------------------------------------------------------------


def test_vertex_without_project_is_refused_with_a_clear_message(admin_client):
    post = credential_post(name="vertex_new", type="vertex-ai", location="us-central1",
                           service_account_json=service_account_json())
    response = admin_client.post(url("add", "credential"), post)
    assert response.status_code == 200
    html = response.content.decode()
    assert "A Vertex AI credential needs a project id." in html
    assert "PRIVATE KEY" not in html  # the pasted key is not echoed back
    assert not Credential.objects.filter(name="vertex_new").exists()


def test_vertex_without_anything_lists_every_missing_part(admin_client):
    response = admin_client.post(url("add", "credential"), credential_post(name="v", type="vertex-ai"))
    html = response.content.decode()
    for message in ("needs a project id", "needs a location", "needs a service account"):
        assert message in html


@pytest.mark.parametrize(("change", "message"), [
    ({"type": "authorized_user"}, "`type` is &#x27;authorized_user&#x27;, not &quot;service_account&quot;"),
    ({"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, "`private_key` does not load"),
    ({"token_uri": None}, "`token_uri` is missing"),
])
def test_a_malformed_service_account_is_refused_in_the_admin(admin_client, change, message):
    info = {k: v for k, v in {**json.loads(service_account_json()), **change}.items() if v is not None}
    post = credential_post(name="vertex_new", type="vertex-ai", project_id="p", location="global",
                           service_account_json=json.dumps(info))
    html = admin_client.post(url("add", "credential"), post).content.decode()
    assert "The service-account JSON: " + message in html
    assert "PRIVATE KEY" not in html and not Credential.objects.filter(name="vertex_new").exists()


def test_a_service_account_file_is_checked_in_the_admin(admin_client, tmp_path):
    post = credential_post(name="vertex_new", type="vertex-ai", project_id="p", location="global",
                           credentials_file="no/such/sa.json")
    html = admin_client.post(url("add", "credential"), post).content.decode()
    assert "No readable file at no/such/sa.json" in html and "resolved from the router&#x27;s folder" in html
    (tmp_path / "sa.json").write_text("{}")
    post["credentials_file"] = str(tmp_path / "sa.json")
    html = admin_client.post(url("add", "credential"), post).content.decode()
    assert "`client_email` is missing" in html and not Credential.objects.filter(name="vertex_new").exists()
    post["credentials_file"] = "examples/vertex-sa.json"  # the shipped example, from the router's folder
    assert admin_client.post(url("add", "credential"), post).status_code == 302
    assert Credential.objects.get(name="vertex_new").service_account_info()["type"] == "service_account"


def test_openai_without_key_is_refused_and_the_typed_values_are_not_echoed(admin_client):
    post = credential_post(name="bad name!", api_key=SECRET)
    html = admin_client.post(url("add", "credential"), post).content.decode()
    assert "Use letters, digits" in html
    assert SECRET not in html


# ---- other models ------------------------------------------------------------------------------------------


def test_alias_targets_edit_as_a_comma_separated_list(admin_client, data):
    alias = data["modelalias"]
    html = admin_client.get(url("change", "modelalias", alias.pk)).content.decode()
    assert 'value="gpt-4o, claude"' in html
    response = admin_client.post(url("change", "modelalias", alias.pk), {"alias": "fast", "targets": " b ,a,, c"})
    assert response.status_code == 302
    alias.refresh_from_db()
    assert alias.targets == ["b", "a", "c"]


def test_alias_pointing_at_itself_is_refused(admin_client):
    response = admin_client.post(url("add", "modelalias"), {"alias": "loop", "targets": "a, loop"})
    assert response.status_code == 200
    assert "An alias cannot point at itself." in response.content.decode()
    assert not ModelAlias.objects.exists()


def test_provider_model_changelist_filters_by_credential(admin_client, data):
    other = ProviderModelFactory(name="claude-x", credential=CredentialFactory(name="other", anthropic=True))
    html = admin_client.get(url("changelist", "providermodel"),
                            {"credential__id__exact": data["credential"].pk}).content.decode()
    assert "gpt-4o" in html and other.name not in html
    html = admin_client.get(url("changelist", "providermodel"), {"enabled__exact": "1"}).content.decode()
    assert "claude-x" in html
    assert ProviderModel.objects.count() == 2


def test_router_settings_sets_a_new_master_key_write_only(admin_client, data):
    router = data["routersettings"]
    html = admin_client.get(url("change", "routersettings", router.pk)).content.decode()
    assert "set (stored as a hash)" in html
    post = {"new_master_key": "sk-brand-new-master-key", "fail2ban": '{"max_attempts": 4}'}
    response = admin_client.post(url("change", "routersettings", router.pk), post)
    assert response.status_code == 302, response.content.decode()
    router.refresh_from_db()
    assert router.master_key_hash == hash_key("sk-brand-new-master-key")
    assert router.fail2ban == {"max_attempts": 4}
    assert "new_master_key" in response.wsgi_request.sensitive_post_parameters


def test_router_settings_blank_master_key_keeps_it_and_bad_fail2ban_is_refused(admin_client, data):
    router = data["routersettings"]
    post = {"new_master_key": "", "fail2ban": '{"max_attempts": 0, "ban_duraton": "5m"}'}
    html = admin_client.post(url("change", "routersettings", router.pk), post).content.decode()
    assert "fail2ban.max_attempts: expected a whole number &gt;= 1" in html
    assert "did you mean &#x27;ban_duration&#x27;" in html
    response = admin_client.post(url("change", "routersettings", router.pk), {"new_master_key": "", "fail2ban": ""})
    assert response.status_code == 302
    router.refresh_from_db()
    assert router.master_key_hash == hash_key("sk-router-master-secret") and router.fail2ban == {}


def test_router_settings_shows_when_no_master_key_is_set(admin_client):
    router = RouterSettings.load()
    html = admin_client.get(url("change", "routersettings", router.pk)).content.decode()
    assert "not set: clients cannot authenticate" in html


def test_saving_in_the_admin_bumps_the_config_version(admin_client, data):
    before = RouterSettings.load().config_version
    cred = data["credential"]
    admin_client.post(url("change", "credential", cred.pk), credential_post(name=cred.name, rpm="7"))
    assert RouterSettings.load().config_version > before

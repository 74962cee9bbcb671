"""``extra_headers`` values are secrets: encrypted at rest, write-only in the admin, redacted by export_config."""

from __future__ import annotations

import json
from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

from credentials import crypto
from credentials.config_io import import_config
from credentials.models import Credential
from tests.factories import CredentialFactory

HEADERS = {"X-Tenant-Token": "tnt-Secret-0042-Value", "OpenAI-Organization": "org-visible-but-secret"}
TABLE = Credential._meta.db_table


def raw_headers(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT extra_headers FROM {connection.ops.quote_name(TABLE)} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_headers_are_one_fernet_token_in_the_column_and_a_dict_in_python():
    cred = CredentialFactory(name="h", extra_headers=HEADERS)
    stored = raw_headers(cred.pk)
    assert stored.startswith(crypto.PREFIX) and all(v not in stored and k not in stored for k, v in HEADERS.items())
    assert Credential.objects.get(pk=cred.pk).extra_headers == HEADERS
    empty = CredentialFactory(name="e")
    assert raw_headers(empty.pk) == "" and Credential.objects.get(pk=empty.pk).extra_headers == {}


@pytest.mark.django_db
def test_rotate_secrets_re_encrypts_the_headers(settings):
    settings.ROUTER_ENCRYPTION_KEY = "old-key"
    cred = CredentialFactory(name="h", extra_headers=HEADERS)
    settings.ROUTER_ENCRYPTION_KEY = "new-key,old-key"
    call_command("rotate_secrets", stdout=StringIO(), stderr=StringIO())
    settings.ROUTER_ENCRYPTION_KEY = "new-key"
    assert Credential.objects.get(pk=cred.pk).extra_headers == HEADERS


# ---- the admin: masked and write-only ----------------------------------------------------------------

def change_url(cred: Credential) -> str:
    return reverse("admin:credentials_credential_change", args=[cred.pk])


def post(cred: Credential, **overrides) -> dict:
    from tests.test_admin import credential_post

    return credential_post(name=cred.name, api_key="", **overrides)


@pytest.mark.django_db
def test_admin_shows_header_names_and_masks_never_values(admin_client):
    cred = CredentialFactory(name="h", extra_headers=HEADERS)
    html = admin_client.get(change_url(cred)).content.decode()
    assert "X-Tenant-Token (…0042" not in html  # a mask shows the last 4 characters only
    assert "X-Tenant-Token (…alue)" in html and "OpenAI-Organization (…cret)" in html
    assert all(v not in html for v in HEADERS.values())
    assert all(v not in admin_client.get(reverse("admin:credentials_credential_changelist")).content.decode()
               for v in HEADERS.values())


@pytest.mark.django_db
def test_admin_blank_keeps_new_json_replaces_clear_removes(admin_client):
    cred = CredentialFactory(name="h", extra_headers=HEADERS)
    assert admin_client.post(change_url(cred), post(cred, extra_headers="")).status_code == 302
    cred.refresh_from_db()
    assert cred.extra_headers == HEADERS
    assert admin_client.post(change_url(cred), post(cred, extra_headers='{"X-New": "v-2"}')).status_code == 302
    cred.refresh_from_db()
    assert cred.extra_headers == {"X-New": "v-2"}
    cleared = admin_client.post(change_url(cred), post(cred, extra_headers="", clear_extra_headers="on"))
    assert cleared.status_code == 302
    cred.refresh_from_db()
    assert cred.extra_headers == {}


@pytest.mark.django_db
def test_admin_refuses_bad_headers_without_echoing_them(admin_client):
    cred = CredentialFactory(name="h")
    res = admin_client.post(change_url(cred), post(cred, extra_headers='{"X-Bad": ["tok-Echo-9931"]}'))
    html = res.content.decode()
    assert res.status_code == 200 and "Extra headers must be a JSON object" in html
    assert "tok-Echo-9931" not in html


# ---- export_config -----------------------------------------------------------------------------------

def export(*args: str) -> str:
    out = StringIO()
    call_command("export_config", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_export_redacts_header_values_and_reimport_keeps_them():
    CredentialFactory(name="h", extra_headers=HEADERS)
    text = export()
    assert all(v not in text for v in HEADERS.values())
    [item] = yaml.safe_load(text)["credentials"]
    assert item["extra_headers"] == {"X-Tenant-Token": "<redacted …alue>", "OpenAI-Organization": "<redacted …cret>"}
    assert not import_config(text, environ={}).has_changes
    edited = text.replace("<redacted …alue>", "tnt-Rotated-0001")
    import_config(edited, environ={})
    assert Credential.objects.get(name="h").extra_headers == {**HEADERS, "X-Tenant-Token": "tnt-Rotated-0001"}
    assert yaml.safe_load(export("--include-secrets"))["credentials"][0]["extra_headers"]["OpenAI-Organization"] == (
        "org-visible-but-secret")


@pytest.mark.django_db
def test_a_redacted_header_without_a_stored_value_is_an_error():
    from credentials.config_io import ConfigError

    with pytest.raises(ConfigError) as exc:
        import_config('credentials: [{name: n, type: openai, api_key: sk-abcdefgh12345678, '
                      'extra_headers: {X-T: "<redacted …abcd>"}}]', environ={})
    assert "credentials[0].extra_headers.X-T: is a redacted placeholder" in str(exc.value)


# ---- the data migration ------------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_migration_encrypts_existing_rows_and_reverses():
    before, after = [("credentials", "0003_model_prices_link")], [("credentials", "0004_encrypt_extra_headers")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        table = connection.ops.quote_name(TABLE)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (name, type, api_key, base_url, project_id, location, service_account_json,"
                " credentials_file, extra_headers, weight, enabled, is_fallback, responses_api, discover_models,"
                " created_at, updated_at) VALUES ('old', 'openai', '', '', '', '', '', '', %s, 1, true, false,"
                " false, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), ('bare', 'demo', '', '', '', '', '', '',"
                " '{}', 1, true, false, false, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)", [json.dumps(HEADERS)])
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        # only the columns 0004 knows: later migrations add fields to the model
        rows = Credential.objects.only("name", "extra_headers")
        old, bare = rows.get(name="old"), rows.get(name="bare")
        assert raw_headers(old.pk).startswith(crypto.PREFIX) and "tnt-Secret" not in raw_headers(old.pk)
        assert old.extra_headers == HEADERS and raw_headers(bare.pk) == "" and bare.extra_headers == {}
        MigrationExecutor(connection).migrate(before)
        restored = raw_headers(old.pk)
        assert json.loads(restored if isinstance(restored, str) else json.dumps(restored)) == HEADERS
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
        Credential.objects.all().delete()

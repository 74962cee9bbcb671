"""Secrets at rest: encryption in the raw column, decrypt failures, masking, key rotation."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection

from credentials import crypto
from credentials.models import Credential
from tests.factories import CredentialFactory

pytestmark = pytest.mark.django_db

API_KEY = "sk-proj-TopSecretValue0123456789"


def raw_columns(pk: int) -> dict[str, str]:
    table = connection.ops.quote_name(Credential._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT api_key, service_account_json FROM {table} WHERE id = %s", [pk])
        api_key, sa_json = cursor.fetchone()
    return {"api_key": api_key, "service_account_json": sa_json}


def set_raw(pk: int, column: str, value: str) -> None:
    table = connection.ops.quote_name(Credential._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {connection.ops.quote_name(column)} = %s WHERE id = %s", [value, pk])


@pytest.fixture
def key_a(settings) -> str:
    settings.ROUTER_ENCRYPTION_KEY = "key-A-passphrase"
    return settings.ROUTER_ENCRYPTION_KEY


def test_api_key_is_encrypted_in_the_raw_column(key_a):
    cred = CredentialFactory(api_key=API_KEY)
    raw = raw_columns(cred.pk)["api_key"]
    assert raw != API_KEY
    assert raw.startswith(crypto.PREFIX)
    assert "TopSecretValue" not in raw
    assert Credential.objects.get(pk=cred.pk).api_key == API_KEY


def test_service_account_json_is_encrypted_in_the_raw_column(key_a):
    cred = CredentialFactory(vertex=True)
    raw = raw_columns(cred.pk)["service_account_json"]
    assert raw.startswith(crypto.PREFIX)
    assert "PRIVATE KEY" not in raw and "client_email" not in raw
    assert json.loads(Credential.objects.get(pk=cred.pk).service_account_json)["private_key"].startswith("-----BEGIN")


def test_empty_secret_is_stored_empty(key_a):
    cred = CredentialFactory(demo=True)
    assert raw_columns(cred.pk) == {"api_key": "", "service_account_json": ""}


def test_same_secret_encrypts_differently_each_time(key_a):
    assert crypto.encrypt(API_KEY) != crypto.encrypt(API_KEY)


def test_secret_not_in_repr_or_str(key_a):
    cred = CredentialFactory(api_key=API_KEY)
    assert API_KEY not in repr(cred) and API_KEY not in str(cred)


def test_decrypt_with_a_missing_key_raises_a_clear_error(key_a, settings):
    cred = CredentialFactory(api_key=API_KEY)
    settings.ROUTER_ENCRYPTION_KEY = "some-other-key"
    with pytest.raises(ImproperlyConfigured, match="ROUTER_ENCRYPTION_KEY does not contain the key"):
        Credential.objects.get(pk=cred.pk)


def test_plaintext_in_a_secret_column_is_refused(key_a):
    cred = CredentialFactory(api_key=API_KEY)
    set_raw(cred.pk, "api_key", API_KEY)
    with pytest.raises(ImproperlyConfigured, match="not encrypted"):
        Credential.objects.get(pk=cred.pk)


@pytest.mark.parametrize("key", ["a passphrase, not a Fernet key", Fernet.generate_key().decode()])
def test_round_trip_with_passphrase_or_fernet_key(settings, key):
    settings.ROUTER_ENCRYPTION_KEY = key
    assert crypto.decrypt(crypto.encrypt(API_KEY)) == API_KEY


def test_several_keys_the_first_encrypts_all_decrypt(settings):
    settings.ROUTER_ENCRYPTION_KEY = "old"
    token = crypto.encrypt(API_KEY)
    settings.ROUTER_ENCRYPTION_KEY = "new,old"
    assert crypto.decrypt(token) == API_KEY
    fresh = crypto.encrypt(API_KEY)
    settings.ROUTER_ENCRYPTION_KEY = "new"
    assert crypto.decrypt(fresh) == API_KEY


@pytest.mark.parametrize(("secret", "masked"), [
    ("", ""),
    ("sk-proj-abcdef123456", "sk-…3456"),
    ("sk-ant-api03-xyz-a1b2", "sk-…a1b2"),
    ("AIzaSyExampleExample1234", "…1234"),
    ("short", "…rt"),
    ("12345678", "…78"),
])
def test_mask(secret, masked):
    assert crypto.mask(secret) == masked


# ---- rotate_secrets ----------------------------------------------------------------------------------


def rotate() -> str:
    out, err = StringIO(), StringIO()
    call_command("rotate_secrets", stdout=out, stderr=err)
    return out.getvalue()


def test_rotate_secrets_re_encrypts_with_the_first_key(settings):
    settings.ROUTER_ENCRYPTION_KEY = "key-A"
    openai = CredentialFactory(api_key=API_KEY)
    vertex = CredentialFactory(vertex=True)
    CredentialFactory(demo=True)  # nothing to re-encrypt
    sa_json = vertex.service_account_json
    before = raw_columns(openai.pk)["api_key"]

    settings.ROUTER_ENCRYPTION_KEY = "key-B,key-A"
    assert "re-encrypted 2 secret(s)" in rotate()
    assert raw_columns(openai.pk)["api_key"] != before

    settings.ROUTER_ENCRYPTION_KEY = "key-B"
    assert Credential.objects.get(pk=openai.pk).api_key == API_KEY
    assert Credential.objects.get(pk=vertex.pk).service_account_json == sa_json

    settings.ROUTER_ENCRYPTION_KEY = "key-A"
    with pytest.raises(ImproperlyConfigured):
        Credential.objects.get(pk=openai.pk)


def test_rotate_secrets_does_not_bump_the_config_version(settings):
    from credentials.models import RouterSettings

    settings.ROUTER_ENCRYPTION_KEY = "key-A"
    CredentialFactory(api_key=API_KEY)
    version = RouterSettings.load().config_version
    settings.ROUTER_ENCRYPTION_KEY = "key-B,key-A"
    rotate()
    assert RouterSettings.load().config_version == version


def test_rotate_secrets_with_an_unknown_key_changes_nothing(settings):
    settings.ROUTER_ENCRYPTION_KEY = "key-A"
    first = CredentialFactory(api_key=API_KEY)
    settings.ROUTER_ENCRYPTION_KEY = "key-X"
    CredentialFactory(api_key="sk-second-secret-123456")
    before = raw_columns(first.pk)
    settings.ROUTER_ENCRYPTION_KEY = "key-B,key-A"  # key-X is gone: the second secret cannot be read
    with pytest.raises(CommandError, match="nothing was changed"):
        rotate()
    assert raw_columns(first.pk) == before

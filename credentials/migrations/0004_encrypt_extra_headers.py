"""``extra_headers`` becomes a secret: the JSON column turns into text holding one Fernet token.

Existing rows are encrypted in place with raw SQL (the model field would try to decrypt
the plaintext JSON it finds); reversing decrypts them back to JSON first.
"""

import json

from django.db import migrations

import credentials.fields
from credentials import crypto

TABLE = "credentials_credential"


def _rows(schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"SELECT id, extra_headers FROM {TABLE}")
        return cursor.fetchall()


def _write(schema_editor, pk, value):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET extra_headers = %s WHERE id = %s", [value, pk])


def encrypt_rows(apps, schema_editor):
    for pk, raw in _rows(schema_editor):
        if isinstance(raw, str) and raw.startswith(crypto.PREFIX):
            continue
        headers = json.loads(raw) if isinstance(raw, str) and raw.strip() else raw
        _write(schema_editor, pk, crypto.encrypt(json.dumps(headers, sort_keys=True)) if headers else "")


def decrypt_rows(apps, schema_editor):
    for pk, raw in _rows(schema_editor):
        plain = crypto.decrypt(raw) if isinstance(raw, str) and raw.startswith(crypto.PREFIX) else raw
        _write(schema_editor, pk, plain or "{}")


class Migration(migrations.Migration):

    dependencies = [
        ('credentials', '0003_model_prices_link'),
    ]

    operations = [
        migrations.AlterField(
            model_name='credential',
            name='extra_headers',
            field=credentials.fields.EncryptedJSONField(blank=True, default=dict, help_text='Sent upstream, e.g. {"OpenAI-Organization": "org-1"}. Stored encrypted (values may be tokens).'),
        ),
        migrations.RunPython(encrypt_rows, decrypt_rows),
    ]

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.db import models

from . import crypto


class EncryptedTextField(models.TextField):
    """Text stored as a Fernet token; Python code only ever sees the plaintext."""

    def from_db_value(self, value, expression, connection):
        return crypto.decrypt(value) if value else value

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return crypto.encrypt(value) if value else value


class EncryptedJSONField(models.TextField):
    """A JSON object stored as one Fernet token (``""`` when empty); Python code sees the dict.

    For secrets shaped as a mapping (``extra_headers``: their values are often tokens). Not
    queryable by content, by design.
    """

    def from_db_value(self, value, expression, connection):
        return self.to_python(crypto.decrypt(value)) if value else {}

    def to_python(self, value):
        if isinstance(value, dict) or value is None:
            return value
        if value == "":
            return {}
        try:
            return json.loads(value)
        except ValueError:
            raise ValidationError("Enter valid JSON.", code="invalid") from None

    def get_prep_value(self, value):
        if value is None:
            return value
        return crypto.encrypt(json.dumps(value, sort_keys=True)) if value else ""

    def value_to_string(self, obj):
        return json.dumps(self.value_from_object(obj))

    def formfield(self, **kwargs):
        from django import forms

        return super().formfield(**{"form_class": forms.JSONField, **kwargs})


ENCRYPTED_FIELDS = (EncryptedTextField, EncryptedJSONField)

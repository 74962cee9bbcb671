"""The router's configuration: credentials, the models they serve, aliases, the master key.

The request path never queries these tables per request: ``proxy.config``
builds an immutable snapshot and reloads it when ``RouterSettings.config_version``
changes (bumped by the signals at the bottom on every save or delete).
"""

from __future__ import annotations

import hashlib
import json

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from . import service_account
from .fields import EncryptedJSONField, EncryptedTextField

# Any http(s) URL, including single-label hosts (docker-compose service names such as http://vllm:8000/v1).
URL_VALIDATOR = RegexValidator(r"^https?://[^\s/?#]+(/[^\s]*)?$", "Enter an http(s) URL, e.g. http://vllm:8000/v1.")
NAME_VALIDATOR = RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$", "Use letters, digits and _ . : @ / - (no spaces).")


class CredentialType(models.TextChoices):
    OPENAI = "openai", "OpenAI / OpenAI-compatible"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Gemini (AI Studio)"
    VERTEX = "vertex-ai", "Vertex AI"
    PROXY = "proxy", "Another router"
    DEMO = "demo", "Built-in demo (answers locally)"


class Credential(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[NAME_VALIDATOR])
    type = models.CharField(max_length=20, choices=CredentialType.choices)
    api_key = EncryptedTextField(blank=True, default="", help_text="Stored encrypted; never shown again.")
    base_url = models.CharField(
        max_length=500, blank=True, default="", validators=[URL_VALIDATOR],
        help_text="Overrides the provider's public endpoint (a trailing /v1 is fine).",
    )
    project_id = models.CharField("Vertex project", max_length=200, blank=True, default="")
    location = models.CharField("Vertex location", max_length=100, blank=True, default="",
                                help_text="e.g. us-central1, europe-west4 or global")
    service_account_json = EncryptedTextField(
        "service-account JSON", blank=True, default="",
        help_text="Pasted key file content (stored encrypted). Or give a file path below.",
    )
    credentials_file = models.CharField(
        "service-account file", max_length=500, blank=True, default="",
        help_text="Path to a service-account key file readable by the router.",
    )
    extra_headers = EncryptedJSONField(
        blank=True, default=dict,
        help_text='Sent upstream, e.g. {"OpenAI-Organization": "org-1"}. Stored encrypted (values may be tokens).')
    rpm = models.PositiveIntegerField("requests/min", null=True, blank=True, help_text="Empty = unlimited")
    tpm = models.PositiveIntegerField("tokens/min", null=True, blank=True, help_text="Empty = unlimited")
    weight = models.PositiveIntegerField(default=1, help_text="Share of traffic within a pool")
    enabled = models.BooleanField(default=True)
    is_fallback = models.BooleanField(
        "fallback only", default=False, help_text="Used only when the primary credentials of a pool are exhausted")
    responses_api = models.BooleanField(
        "speaks the Responses API", default=False,
        help_text="openai/proxy only: forward /v1/responses natively instead of translating to Chat Completions",
    )
    discover_models = models.BooleanField(
        "serve every upstream model", default=False,
        help_text="openai/proxy only: serve what the upstream lists at GET /v1/models (refreshed in the background)",
    )
    prompt_caching = models.BooleanField(
        "add prompt-caching breakpoints", default=False,
        help_text="Anthropic and Claude on Vertex: add prompt-caching breakpoints to requests that set none "
                  "(last system block, last tool, the turn before the last user message)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Credential {self.name} ({self.type})>"

    def clean(self) -> None:
        errors: dict[str, str | list[str]] = {}
        if self.type == CredentialType.VERTEX:
            if not self.project_id:
                errors["project_id"] = "A Vertex AI credential needs a project id."
            if not self.location:
                errors["location"] = "A Vertex AI credential needs a location (e.g. us-central1 or global)."
            if not (self.service_account_json or self.credentials_file):
                errors["service_account_json"] = (
                    "A Vertex AI credential needs a service account: paste the JSON key or give a file path."
                )
            if self.service_account_json:
                found = service_account.text_problems(self.service_account_json)
                if found:
                    errors["service_account_json"] = [f"The service-account JSON: {p}." for p in found]
            elif self.credentials_file:
                found = service_account.file_problems(self.credentials_file)
                if found:
                    errors["credentials_file"] = found
        elif (self.type in (CredentialType.OPENAI, CredentialType.ANTHROPIC, CredentialType.GEMINI)
              and not self.api_key and not self.base_url):
            errors["api_key"] = f"A {self.get_type_display()} credential needs an API key."
        native_only = self.responses_api or self.discover_models
        if native_only and self.type not in (CredentialType.OPENAI, CredentialType.PROXY):
            errors["responses_api" if self.responses_api else "discover_models"] = (
                "Only openai and proxy credentials can forward natively or discover models."
            )
        if not isinstance(self.extra_headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in (self.extra_headers or {}).items()
        ):
            errors["extra_headers"] = "Extra headers must be a JSON object of string names to string values."
        if errors:
            raise ValidationError(errors)

    def service_account_info(self) -> dict | None:
        """The service-account key as a dict (pasted JSON wins over the file path)."""
        if self.service_account_json:
            return json.loads(self.service_account_json)
        if self.credentials_file:
            return json.loads(service_account.resolve(self.credentials_file).read_text())
        return None


class ProviderModel(models.Model):
    """A public model name served by one credential. Same name on several credentials = a pool."""

    name = models.CharField("public name", max_length=200, validators=[NAME_VALIDATOR], db_index=True)
    credential = models.ForeignKey(Credential, on_delete=models.CASCADE, related_name="models")
    upstream_model = models.CharField(
        "upstream model id", max_length=200, blank=True, default="",
        help_text="The provider's id when it differs from the public name",
    )
    rpm = models.PositiveIntegerField("requests/min", null=True, blank=True)
    tpm = models.PositiveIntegerField("tokens/min", null=True, blank=True)
    enabled = models.BooleanField(default=True)
    prompt_caching = models.BooleanField(
        "add prompt-caching breakpoints", default=False,
        help_text="Anthropic and Claude on Vertex: add prompt-caching breakpoints to requests that set none "
                  "(also on when the credential has it on)",
    )

    class Meta:
        ordering = ["name", "credential__name"]
        constraints = [models.UniqueConstraint(fields=["name", "credential"], name="unique_model_per_credential")]
        verbose_name = "model"

    def __str__(self) -> str:
        return f"{self.name} @ {self.credential_id and self.credential.name}"

    @property
    def upstream_id(self) -> str:
        return self.upstream_model or self.name


class ModelAlias(models.Model):
    alias = models.CharField(max_length=200, unique=True, validators=[NAME_VALIDATOR])
    targets = models.JSONField(
        default=list,
        help_text='Public model names, tried in order: ["gemini-2.5-flash", "gpt-4o-mini"]',
    )

    class Meta:
        ordering = ["alias"]
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.alias} → {', '.join(self.targets)}"

    def clean(self) -> None:
        if (not isinstance(self.targets, list) or not self.targets
                or not all(isinstance(t, str) and t for t in self.targets)):
            raise ValidationError({"targets": "Give a non-empty list of model names."})
        if self.alias in self.targets:
            raise ValidationError({"targets": "An alias cannot point at itself."})


def hash_key(key: str) -> str:
    # Router keys are long random strings, so a fast hash is enough; a slow KDF
    # would cost CPU on every request.
    return hashlib.sha256(key.encode()).hexdigest()


class RouterSettings(models.Model):
    """Singleton (pk=1): the master key's hash, fail2ban rules and the config version."""

    master_key_hash = models.CharField(max_length=64, blank=True, default="")
    fail2ban = models.JSONField(blank=True, default=dict)
    config_version = models.BigIntegerField(default=0)
    model_prices_link = models.CharField(
        max_length=500, blank=True, default="",
        help_text="A LiteLLM-format price file (path or URL) loaded by import_config (server.model_prices_link)")

    class Meta:
        verbose_name = verbose_name_plural = "router settings"

    def __str__(self) -> str:
        return "Router settings"

    @classmethod
    def load(cls) -> RouterSettings:
        obj, _ = cls.objects.get_or_create(pk=1)
        return obj

    def set_master_key(self, key: str) -> None:
        self.master_key_hash = hash_key(key) if key else ""


def bump_config_version() -> None:
    updated = RouterSettings.objects.filter(pk=1).update(config_version=F("config_version") + 1)
    if not updated:
        RouterSettings.objects.get_or_create(pk=1, defaults={"config_version": 1})


@receiver([post_save, post_delete], sender=Credential)
@receiver([post_save, post_delete], sender=ProviderModel)
@receiver([post_save, post_delete], sender=ModelAlias)
def _config_changed(sender, **kwargs) -> None:
    bump_config_version()


@receiver(post_save, sender=RouterSettings)
def _settings_changed(sender, instance: RouterSettings, update_fields=None, **kwargs) -> None:
    if update_fields is None or "config_version" not in update_fields:
        RouterSettings.objects.filter(pk=instance.pk).update(config_version=F("config_version") + 1)

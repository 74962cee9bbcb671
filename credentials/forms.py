"""Admin forms: secrets are write-only (never rendered back), aliases edit as a comma-separated list."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from .config_io import clean_fail2ban, headers_hint, secret_hint
from .models import Credential, ModelAlias, RouterSettings

SECRETS = {"api_key": "clear_api_key", "service_account_json": "clear_service_account_json",
           "extra_headers": "clear_extra_headers"}


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that always renders empty, even when the form is re-shown with errors."""

    def get_context(self, name: str, value: Any, attrs: dict | None) -> dict:
        return super().get_context(name, None, attrs)


class CredentialForm(forms.ModelForm):
    api_key = forms.CharField(
        label="API key", required=False, widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
    )
    service_account_json = forms.CharField(
        label="Service-account JSON", required=False, widget=WriteOnlyTextarea(attrs={"rows": 4}),
    )
    extra_headers = forms.JSONField(
        label="Extra headers", required=False, widget=WriteOnlyTextarea(attrs={"rows": 2}),
    )
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)
    clear_service_account_json = forms.BooleanField(label="Remove the stored service-account JSON", required=False)
    clear_extra_headers = forms.BooleanField(label="Remove the stored extra headers", required=False)

    class Meta:
        model = Credential
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in SECRETS:
            stored = getattr(self.instance, name) if self.instance.pk else ""
            self.initial[name] = ""
            field = self.fields.get(name)
            if field is None:
                continue
            if name == "extra_headers":
                field.help_text = (
                    f"Stored: {headers_hint(stored)}. Leave blank to keep them, or type a JSON object to replace "
                    'them all, e.g. {"OpenAI-Organization": "org-1"}.' if stored else
                    'Sent upstream, e.g. {"OpenAI-Organization": "org-1"}. Saved encrypted; values never shown again.')
            elif stored:
                field.help_text = f"Stored: {secret_hint(stored)}. Leave blank to keep it, or type a new value."
            else:
                field.help_text = "Nothing stored. Saved encrypted; never shown again."

    def clean(self) -> dict:
        cleaned = super().clean()
        for name, clear in SECRETS.items():
            if cleaned.get(clear):
                if cleaned.get(name):
                    self.add_error(clear, "Either type a new value or remove the stored one, not both.")
                cleaned[name] = self.instance._meta.get_field(name).get_default()
            elif not cleaned.get(name) and self.instance.pk:
                cleaned[name] = getattr(self.instance, name)
            elif cleaned.get(name) is None:
                cleaned[name] = self.instance._meta.get_field(name).get_default()
        return cleaned


class CommaSeparatedListField(forms.CharField):
    """A list of names typed as ``a, b, c``."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return ", ".join(value)
        return value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list | tuple):
            return [str(v).strip() for v in value if str(v).strip()]
        text = super().to_python(value)
        return [part.strip() for part in text.split(",") if part.strip()]


class ModelAliasForm(forms.ModelForm):
    targets = CommaSeparatedListField(
        help_text="Public model names, comma-separated, tried in order: gemini-2.5-flash, gpt-4o-mini",
    )

    class Meta:
        model = ModelAlias
        fields = ["alias", "targets"]


class RouterSettingsForm(forms.ModelForm):
    new_master_key = forms.CharField(
        label="New master key", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Clients send it as their API key. Stored only as a hash. Leave blank to keep the current one.",
    )

    class Meta:
        model = RouterSettings
        fields = ["fail2ban"]
        help_texts = {"fail2ban": 'e.g. {"max_attempts": 3, "ban_duration": "5m", "error_codes": [429, 503]}'}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if settings.ROUTER_MASTER_KEY:
            self.fields["new_master_key"].help_text += (
                " Note: ROUTER_MASTER_KEY is set in the environment and takes precedence over the stored key."
            )

    def clean_fail2ban(self) -> dict:
        value, errors = clean_fail2ban(self.cleaned_data.get("fail2ban"))
        if errors:
            raise forms.ValidationError(errors)
        return value

    def save(self, commit: bool = True) -> RouterSettings:
        if self.cleaned_data.get("new_master_key"):
            self.instance.set_master_key(self.cleaned_data["new_master_key"])
        return super().save(commit=commit)

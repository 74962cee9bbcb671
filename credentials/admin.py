from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from . import crypto
from .forms import CredentialForm, ModelAliasForm, RouterSettingsForm
from .models import Credential, ModelAlias, ProviderModel, RouterSettings

# Django's error reports then show these POST values as stars.
hide_secrets = method_decorator(
    sensitive_post_parameters("api_key", "service_account_json", "extra_headers", "new_master_key"))


class ProviderModelInline(admin.TabularInline):
    model = ProviderModel
    extra = 1
    fields = ("name", "upstream_model", "rpm", "tpm", "enabled", "prompt_caching")


@admin.register(Credential)
class CredentialAdmin(admin.ModelAdmin):
    form = CredentialForm
    inlines = [ProviderModelInline]
    list_display = ("name", "type", "masked_key", "base_url", "enabled", "is_fallback", "model_count")
    list_filter = ("type", "enabled", "is_fallback")
    search_fields = ("name", "base_url", "models__name")
    fieldsets = (
        (None, {"fields": ("name", "type", "enabled", "is_fallback", "weight")}),
        ("Endpoint and key", {"fields": ("base_url", "api_key", "clear_api_key", "extra_headers",
                                         "clear_extra_headers")}),
        ("Vertex AI", {"fields": ("project_id", "location", "service_account_json", "clear_service_account_json",
                                  "credentials_file")}),
        ("Limits (empty = unlimited)", {"fields": ("rpm", "tpm")}),
        ("OpenAI-compatible and proxy only", {"fields": ("responses_api", "discover_models")}),
        ("Anthropic and Claude on Vertex", {"fields": ("prompt_caching",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(_model_count=Count("models"))

    @admin.display(description="API key")
    def masked_key(self, obj: Credential) -> str:
        return crypto.mask(obj.api_key) or "—"

    @admin.display(description="models", ordering="_model_count")
    def model_count(self, obj: Credential) -> int:
        return obj._model_count

    @hide_secrets
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)


@admin.register(ProviderModel)
class ProviderModelAdmin(admin.ModelAdmin):
    list_display = ("name", "credential", "upstream_model", "rpm", "tpm", "enabled")
    list_filter = ("credential", "enabled")
    search_fields = ("name", "upstream_model", "credential__name")
    list_select_related = ("credential",)


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    form = ModelAliasForm
    list_display = ("alias", "target_list")
    search_fields = ("alias",)

    @admin.display(description="targets (in order)")
    def target_list(self, obj: ModelAlias) -> str:
        return ", ".join(obj.targets)


@admin.register(RouterSettings)
class RouterSettingsAdmin(admin.ModelAdmin):
    form = RouterSettingsForm
    fields = ("master_key_status", "new_master_key", "fail2ban", "model_prices_link", "config_version")
    readonly_fields = ("master_key_status", "model_prices_link", "config_version")
    list_display = ("__str__", "master_key_status", "config_version")

    @admin.display(description="master key")
    def master_key_status(self, obj: RouterSettings) -> str:
        return "set (stored as a hash)" if obj.master_key_hash else "not set: clients cannot authenticate"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and not RouterSettings.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: RouterSettings | None = None) -> bool:
        return False

    def save_model(self, request, obj, form, change) -> None:
        obj.pk = 1  # a singleton: the request path reads row 1
        super().save_model(request, obj, form, change)

    @hide_secrets
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

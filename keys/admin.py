"""Admin pages for keys and teams.

A new or regenerated key's secret appears once, in the response to the POST that made it
(never in a message, a cookie or a log); afterwards only its mask is shown.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache

from .models import ApiKey, Team, new_secret


class ModelListField(forms.CharField):
    """Models as a comma- or space-separated line ("gpt-4o, claude-*"); empty = every model."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        return [m for m in (value or "").replace(",", " ").split() if m]


class BudgetedForm(forms.ModelForm):
    models = ModelListField(required=False, help_text='Public names, aliases or patterns ("gpt-4*"), comma '
                                                      "separated; empty = every model.")


class ApiKeyForm(BudgetedForm):
    class Meta:
        model = ApiKey
        fields = ("key_alias", "team", "user_id", "models", "rpm_limit", "tpm_limit", "max_parallel_requests",
                  "max_budget", "budget_duration", "soft_budget", "expires", "blocked", "metadata")


class TeamForm(BudgetedForm):
    class Meta:
        model = Team
        fields = ("team_alias", "models", "rpm_limit", "tpm_limit", "max_budget", "budget_duration", "blocked",
                  "metadata")


def _money(value) -> str:
    return "—" if value is None else f"${value:,.4f}".rstrip("0").rstrip(".") if value else "$0"


class BudgetedAdmin(admin.ModelAdmin):
    readonly_fields = ("spend_now", "budget_reset", "created_at", "updated_at")

    @admin.display(description="spend / budget")
    def spend_budget(self, obj) -> str:
        spend = _money(obj.current_spend())
        return spend if obj.max_budget is None else f"{spend} / {_money(obj.max_budget)}"

    @admin.display(description="spend this period")
    def spend_now(self, obj) -> str:
        return self.spend_budget(obj) if obj.pk else "—"

    @admin.display(description="budget resets")
    def budget_reset(self, obj):
        return obj.current_reset_at() or "never"

    def save_model(self, request, obj, form, change) -> None:
        if "budget_duration" in form.changed_data or not change:
            obj.restart_period()
        super().save_model(request, obj, form, change)

    def _set_blocked(self, request, queryset: QuerySet, blocked: bool) -> None:
        count = 0
        for obj in queryset:  # save() per object: signals reach every router process
            obj.blocked = blocked
            obj.save(update_fields=["blocked", "updated_at"])
            count += 1
        self.message_user(request, f"{'Blocked' if blocked else 'Unblocked'} {count}.", messages.SUCCESS)


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "active"), ("blocked", "blocked"), ("expired", "expired"), ("over_budget", "over budget")]

    def queryset(self, request, queryset):
        now = timezone.now()
        expired = Q(expires__lte=now)
        blocked = Q(blocked=True) | Q(team__blocked=True)
        if self.value() == "blocked":
            return queryset.filter(blocked)
        if self.value() == "expired":
            return queryset.filter(expired)
        if self.value() in ("active", "over_budget"):
            over = [k.pk for k in queryset.exclude(blocked | expired).select_related("team")
                    if k.status(now) == "over budget"]
            if self.value() == "over_budget":
                return queryset.filter(pk__in=over)
            return queryset.exclude(blocked | expired).exclude(pk__in=over)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(BudgetedAdmin):
    form = ApiKeyForm
    list_display = ("label", "key_name", "team", "spend_budget", "last_used_at", "status_text")
    list_filter = (StatusFilter, "team", "blocked")
    search_fields = ("key_alias", "key_name", "token", "user_id", "team__team_alias")
    list_select_related = ("team",)
    actions = ("block", "unblock", "regenerate")
    readonly_fields = ("token", "key_name", "last_used_at", *BudgetedAdmin.readonly_fields)
    fieldsets = (
        (None, {"fields": ("key_alias", "team", "user_id", "blocked", "expires")}),
        ("Access and limits (empty = unlimited)",
         {"fields": ("models", "rpm_limit", "tpm_limit", "max_parallel_requests")}),
        ("Budget (USD)", {"fields": ("max_budget", "budget_duration", "soft_budget", "spend_now", "budget_reset")}),
        ("Details", {"fields": ("token", "key_name", "last_used_at", "metadata", "created_at", "updated_at")}),
    )

    @admin.display(description="alias", ordering="key_alias")
    def label(self, obj: ApiKey) -> str:
        return obj.key_alias or "(no alias)"

    @admin.display(description="status")
    def status_text(self, obj: ApiKey) -> str:
        return obj.status()

    def save_model(self, request, obj: ApiKey, form, change) -> None:
        if not change:
            request._new_secret = obj.set_secret(new_secret())
        super().save_model(request, obj, form, change)

    @method_decorator(never_cache)
    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None) -> HttpResponse:
        secret = getattr(request, "_new_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        return self._show_secrets(request, [(obj, secret)], "Key created")

    def _show_secrets(self, request, pairs: list[tuple[ApiKey, str]], title: str) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "title": title, "opts": self.model._meta,
                   "pairs": pairs}
        response = TemplateResponse(request, "admin/keys/secret.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Block selected keys", permissions=["change"])
    def block(self, request, queryset):
        self._set_blocked(request, queryset, True)

    @admin.action(description="Unblock selected keys", permissions=["change"])
    def unblock(self, request, queryset):
        self._set_blocked(request, queryset, False)

    @admin.action(description="Regenerate secrets of selected keys (old secrets stop working)",
                  permissions=["change"])
    def regenerate(self, request, queryset):
        pairs = []
        for key in queryset:
            secret = key.set_secret(new_secret())
            key.save(update_fields=["key_hash", "key_name", "updated_at"])
            pairs.append((key, secret))
        return self._show_secrets(request, pairs, "Secrets regenerated")


class KeyInline(admin.TabularInline):
    model = ApiKey
    fields = ("key_alias", "key_name", "max_budget", "blocked")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Team)
class TeamAdmin(BudgetedAdmin):
    form = TeamForm
    inlines = [KeyInline]
    list_display = ("team_alias", "model_list", "spend_budget", "rpm_limit", "tpm_limit", "key_count", "blocked")
    list_filter = ("blocked",)
    search_fields = ("team_alias", "team_id")
    actions = ("block", "unblock")
    readonly_fields = ("team_id", *BudgetedAdmin.readonly_fields)
    fieldsets = (
        (None, {"fields": ("team_alias", "blocked")}),
        ("Access and limits (empty = unlimited)", {"fields": ("models", "rpm_limit", "tpm_limit")}),
        ("Budget (USD)", {"fields": ("max_budget", "budget_duration", "spend_now", "budget_reset")}),
        ("Details", {"fields": ("team_id", "metadata", "created_at", "updated_at")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_keys=Count("keys"))

    @admin.display(description="keys", ordering="_keys")
    def key_count(self, obj: Team) -> int:
        return obj._keys

    @admin.display(description="models")
    def model_list(self, obj: Team) -> str:
        return ", ".join(obj.models) or "all"

    @admin.action(description="Block selected teams (their keys get 401)", permissions=["change"])
    def block(self, request, queryset):
        self._set_blocked(request, queryset, True)

    @admin.action(description="Unblock selected teams", permissions=["change"])
    def unblock(self, request, queryset):
        self._set_blocked(request, queryset, False)

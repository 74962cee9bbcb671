"""The Prices page: one row per (model, provider, effective day); history stays as billed."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin
from django.http import HttpRequest

from .models import Price
from .table import current, reload

MILLION = Decimal(1_000_000)


def per_million(value: Decimal | None) -> str:
    if value is None:
        return "—"
    return f"${(value * MILLION).normalize():f}"


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = ("model", "provider_label", "effective_from", "in_force", "input_per_m", "cached_per_m",
                    "output_per_m", "per_image", "source")
    list_filter = ("provider", "effective_from", "source")
    search_fields = ("model",)
    date_hierarchy = "effective_from"
    save_as = True  # "Save as new": a new price from a later day, keeping the old one for history
    readonly_fields = ("source", "updated_at")
    fieldsets = (
        (None, {"fields": ("model", "provider", "effective_from", "source", "updated_at"),
                "description": "USD per token (LiteLLM's price-file units: $2.50 per 1M tokens is 0.0000025). "
                               "To change a price from a day on, open the current one, set the new day and "
                               "values, and use “Save as new”: usage already logged keeps its cost."}),
        ("Tokens", {"fields": ("input_cost_per_token", "output_cost_per_token", "output_cost_per_reasoning_token")}),
        ("Prompt cache", {"fields": ("cache_read_input_token_cost", "cache_creation_input_token_cost",
                                     "cache_creation_input_token_cost_above_1hr")}),
        ("Prompts over 200k tokens", {"classes": ("collapse",), "fields": (
            "input_cost_per_token_above_200k_tokens", "output_cost_per_token_above_200k_tokens",
            "cache_read_input_token_cost_above_200k_tokens", "cache_creation_input_token_cost_above_200k_tokens")}),
        ("Images (USD per image)", {"classes": ("collapse",), "fields": ("output_cost_per_image",
                                                                          "input_cost_per_image")}),
    )

    @admin.display(description="provider", ordering="provider")
    def provider_label(self, obj: Price) -> str:
        return obj.get_provider_display() if obj.provider else "any"

    @admin.display(description="in force", boolean=True)
    def in_force(self, obj: Price) -> bool:
        rates = current().in_force(obj.model, obj.provider)
        return rates is not None and rates.effective_from == obj.effective_from

    @admin.display(description="input / 1M", ordering="input_cost_per_token")
    def input_per_m(self, obj: Price) -> str:
        return per_million(obj.input_cost_per_token)

    @admin.display(description="cache read / 1M", ordering="cache_read_input_token_cost")
    def cached_per_m(self, obj: Price) -> str:
        return per_million(obj.cache_read_input_token_cost)

    @admin.display(description="output / 1M", ordering="output_cost_per_token")
    def output_per_m(self, obj: Price) -> str:
        return per_million(obj.output_cost_per_token)

    @admin.display(description="per image", ordering="output_cost_per_image")
    def per_image(self, obj: Price) -> str:
        return "—" if obj.output_cost_per_image is None else f"${obj.output_cost_per_image.normalize():f}"

    def changelist_view(self, request: HttpRequest, extra_context=None):
        reload()  # the "in force" column reads a fresh snapshot
        return super().changelist_view(request, extra_context)

    def save_model(self, request, obj, form, change) -> None:
        obj.source = "admin"  # edited here: export_config writes it under model_prices
        super().save_model(request, obj, form, change)

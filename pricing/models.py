"""Model prices, in LiteLLM's price-file field names (USD per token; per image for ``*_per_image``).

A row is in force from ``effective_from`` (00:00 UTC) until a later row for the same
model and provider: a usage row is priced with the row in force when it was made, so
changing a price never rewrites what history was billed at. The request path never
queries this table: ``pricing.table`` keeps an in-memory snapshot, reloaded with the
router configuration (``RouterSettings.config_version``, bumped by ``pricing.signals``).
"""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from credentials.models import NAME_VALIDATOR, CredentialType

from .fields import PRICE_FIELDS

_HELP = {
    "input_cost_per_token": "Uncached input",
    "output_cost_per_token": "Output (and reasoning, unless priced apart)",
    "cache_read_input_token_cost": "Cache reads; empty = the input price",
    "cache_creation_input_token_cost": "Cache writes (Anthropic's 5-minute cache); empty = the input price",
    "cache_creation_input_token_cost_above_1hr": "Anthropic's 1-hour cache writes; empty = the 5-minute price",
    "output_cost_per_reasoning_token": "Reasoning tokens; empty = the output price",
    "input_cost_per_token_above_200k_tokens": "When the prompt is over 200k tokens, every input token",
    "output_cost_per_token_above_200k_tokens": "When the prompt is over 200k tokens, every output token",
    "cache_read_input_token_cost_above_200k_tokens": "Cache reads of a prompt over 200k tokens",
    "cache_creation_input_token_cost_above_200k_tokens": "5-minute cache writes of a prompt over 200k tokens",
    "input_cost_per_image": "Stored for LiteLLM compatibility; providers bill image input as tokens",
    "output_cost_per_image": "Per generated image",
}


def _price(name: str) -> models.DecimalField:
    return models.DecimalField(name, max_digits=22, decimal_places=15, null=True, blank=True,
                               validators=[MinValueValidator(Decimal(0))], help_text=_HELP[name])


def today():
    return timezone.now().date()


class Price(models.Model):
    model = models.CharField(
        max_length=200, validators=[NAME_VALIDATOR], db_index=True,
        help_text="A public model name or an upstream model id (vertex_ai/… and anthropic/… prefixes are "
                  "matched too). Matched exactly: gpt-4.1 is not gpt-4-1.")
    provider = models.CharField(
        max_length=20, blank=True, default="", choices=CredentialType.choices,
        help_text="Only for credentials of this type; empty = any provider")
    effective_from = models.DateField(
        default=today, help_text="In force from 00:00 UTC of this day until a later price of the same model")
    source = models.CharField(max_length=500, blank=True, default="admin",
                              help_text="Where the price came from (admin, YAML, a price file or URL)")
    updated_at = models.DateTimeField(auto_now=True)
    input_cost_per_token = _price("input_cost_per_token")
    output_cost_per_token = _price("output_cost_per_token")
    cache_read_input_token_cost = _price("cache_read_input_token_cost")
    cache_creation_input_token_cost = _price("cache_creation_input_token_cost")
    cache_creation_input_token_cost_above_1hr = _price("cache_creation_input_token_cost_above_1hr")
    output_cost_per_reasoning_token = _price("output_cost_per_reasoning_token")
    input_cost_per_token_above_200k_tokens = _price("input_cost_per_token_above_200k_tokens")
    output_cost_per_token_above_200k_tokens = _price("output_cost_per_token_above_200k_tokens")
    cache_read_input_token_cost_above_200k_tokens = _price("cache_read_input_token_cost_above_200k_tokens")
    cache_creation_input_token_cost_above_200k_tokens = _price("cache_creation_input_token_cost_above_200k_tokens")
    input_cost_per_image = _price("input_cost_per_image")
    output_cost_per_image = _price("output_cost_per_image")

    class Meta:
        ordering = ["model", "provider", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["model", "provider", "effective_from"],
                                               name="unique_price_per_model_provider_day")]

    def __str__(self) -> str:
        provider = f" ({self.provider})" if self.provider else ""
        return f"{self.model}{provider} from {self.effective_from}"

    def rates(self) -> dict[str, Decimal]:
        return {name: getattr(self, name) for name in PRICE_FIELDS if getattr(self, name) is not None}

    def clean(self) -> None:
        if not self.rates():
            raise ValidationError("Give at least one price (e.g. input_cost_per_token and output_cost_per_token).")

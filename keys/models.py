"""Teams and client keys.

A key's secret (``sk-`` + 43 url-safe characters) is shown once when created; the table
keeps only its SHA-256 (``key_hash``) and a mask (``key_name``). ``token`` is the key's
stable id: usage rows, the management API and the admin name a key by it, and it
survives ``regenerate``. Spend columns are durable (updated from usage rows by the usage
writer); the live counters that admission checks live in ``keys.budget``.
"""

from __future__ import annotations

import secrets
import uuid
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from credentials.models import hash_key

from . import periods

SECRET_PREFIX = "sk-"
MIN_CUSTOM_KEY_LENGTH = 24


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_token() -> str:
    return secrets.token_hex(16)


def new_team_id() -> str:
    return str(uuid.uuid4())


def mask(secret: str) -> str:
    """``sk-Ab12…wxyz``: enough to recognise a key in a list, nowhere near enough to use it."""
    return f"{secret[:7]}…{secret[-4:]}" if len(secret) > 16 else "sk-…"


def validate_duration(value: str) -> None:
    if value:
        try:
            periods.parse_duration(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


def validate_models(value) -> None:
    if not isinstance(value, list) or not all(isinstance(m, str) and m.strip() for m in value):
        raise ValidationError('Give a list of model names, aliases or patterns such as "gpt-4*" ([] = all).')


def validate_metadata(value) -> None:
    if not isinstance(value, dict):
        raise ValidationError("Metadata must be a JSON object.")


_MONEY = {"max_digits": 14, "decimal_places": 6, "null": True, "blank": True}


class Budgeted(models.Model):
    """What keys and teams share: allowed models, RPM/TPM, a budget over a period, durable spend."""

    rpm_limit = models.PositiveIntegerField("requests/min", null=True, blank=True, help_text="Empty = unlimited")
    tpm_limit = models.PositiveIntegerField("tokens/min", null=True, blank=True, help_text="Empty = unlimited")
    max_budget = models.DecimalField("max budget (USD)", **_MONEY, help_text="Empty = no budget")
    budget_duration = models.CharField(max_length=16, blank=True, default="", validators=[validate_duration],
                                       help_text="Budget period: 1d, 7d, 30d, 1mo… (empty = never resets)")
    budget_reset_at = models.DateTimeField(null=True, blank=True, editable=False)
    spend = models.DecimalField("spend (USD)", max_digits=18, decimal_places=9, default=Decimal(0))
    # bumped when an admin sets the spend by hand: live counters of the old value are then ignored
    spend_generation = models.PositiveIntegerField(default=0, editable=False)
    blocked = models.BooleanField(default=False)
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # last: from here on ``models`` in this class body is the field, not django.db.models
    models = models.JSONField(default=list, blank=True, validators=[validate_models],
                              help_text='Public model names, aliases or patterns ("gpt-4*"); empty = every model.')

    class Meta:
        abstract = True

    def restart_period(self, now=None) -> None:
        """(Re)start the budget period from ``now``: call when ``budget_duration`` is set or changed."""
        now = now or timezone.now()
        self.budget_reset_at = periods.add_duration(now, self.budget_duration) if self.budget_duration else None

    def current_spend(self, now=None) -> Decimal:
        return periods.live_spend(self.spend, self.budget_reset_at, self.budget_duration, now or timezone.now())

    def current_reset_at(self, now=None):
        return periods.current_period(self.budget_reset_at, self.budget_duration, now or timezone.now())[0]

    def over_budget(self, now=None) -> bool:
        return self.max_budget is not None and self.current_spend(now) >= self.max_budget


class Team(Budgeted):
    team_id = models.CharField(primary_key=True, max_length=64, default=new_team_id, editable=False)
    team_alias = models.CharField(max_length=200, unique=True)

    class Meta:
        ordering = ["team_alias"]

    def __str__(self) -> str:
        return self.team_alias


class ApiKey(Budgeted):
    token = models.CharField("key id", primary_key=True, max_length=64, default=new_token, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_name = models.CharField("key", max_length=40, editable=False, help_text="A mask of the secret")
    key_alias = models.CharField("alias", max_length=200, blank=True, default="")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="keys")
    user_id = models.CharField(max_length=200, blank=True, default="")
    max_parallel_requests = models.PositiveIntegerField("max parallel requests", null=True, blank=True,
                                                        help_text="Empty = unlimited")
    soft_budget = models.DecimalField("soft budget (USD)", **_MONEY,
                                      help_text="Spend at which the key is flagged (requests still pass)")
    expires = models.DateTimeField(null=True, blank=True, help_text="Empty = never")
    last_used_at = models.DateTimeField("last used", null=True, blank=True, editable=False)

    class Meta:
        ordering = ["key_alias", "created_at"]
        verbose_name = "key"
        constraints = [models.UniqueConstraint(fields=["key_alias"], condition=~models.Q(key_alias=""),
                                               name="unique_key_alias")]

    def __str__(self) -> str:
        return self.key_alias or self.key_name

    def set_secret(self, secret: str) -> str:
        self.key_hash = hash_key(secret)
        self.key_name = mask(secret)
        return secret

    def is_expired(self, now=None) -> bool:
        return self.expires is not None and self.expires <= (now or timezone.now())

    def status(self, now=None) -> str:
        now = now or timezone.now()
        if self.blocked:
            return "blocked"
        if self.team_id and self.team.blocked:
            return "team blocked"
        if self.is_expired(now):
            return "expired"
        if self.over_budget(now) or (self.team_id and self.team.over_budget(now)):
            return "over budget"
        if self.soft_budget is not None and self.current_spend(now) >= self.soft_budget:
            return "over soft budget"
        return "active"

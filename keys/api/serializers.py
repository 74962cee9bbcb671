"""Request bodies of the management API (LiteLLM's field names) and the objects it answers with."""

from __future__ import annotations

from decimal import Decimal

from django.utils import timezone
from rest_framework import serializers

from credentials.models import hash_key

from ..models import MIN_CUSTOM_KEY_LENGTH, SECRET_PREFIX, ApiKey, Team
from ..periods import DurationError, parse_duration
from .auth import is_master_key


def _money(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=14, decimal_places=6, min_value=Decimal(0), allow_null=True,
                                    required=False, **kwargs)


# what the limit columns (PositiveIntegerField) hold on every database; past it the insert would fail
LIMIT_MAX = 2_147_483_647


def _limit(**kwargs) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=0, max_value=LIMIT_MAX, allow_null=True, required=False, **kwargs)


def _duration(value: str | None) -> str | None:
    if value:
        try:
            parse_duration(value)
        except DurationError as exc:
            raise serializers.ValidationError(str(exc)) from None
    return value


class Limits(serializers.Serializer):
    models = serializers.ListField(child=serializers.CharField(max_length=200), required=False,
                                   help_text='Public model names, aliases or patterns ("gpt-4*"); [] = all.')
    max_budget = _money(help_text="USD; null = no budget")
    budget_duration = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=16,
                                            help_text="1d, 7d, 30d, 1mo… (null = never resets)")
    tpm_limit = _limit()
    rpm_limit = _limit()
    metadata = serializers.DictField(required=False)
    blocked = serializers.BooleanField(required=False)

    def validate_budget_duration(self, value):
        return _duration(value)


class KeyFields(Limits):
    key_alias = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)
    duration = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=16,
                                     help_text="Expires after this long (30d, 12h…); null = never")
    soft_budget = _money()
    max_parallel_requests = _limit()
    team_id = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=64)
    user_id = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)

    def validate_duration(self, value):
        return _duration(value)

    def validate_team_id(self, value):
        if value and not Team.objects.filter(pk=value).exists():
            raise serializers.ValidationError(f"No team with team_id {value!r}.")
        return value or None

    def validate_key_alias(self, value):
        if value:
            taken = ApiKey.objects.filter(key_alias=value)
            current = self.context.get("instance")
            if current is not None:
                taken = taken.exclude(pk=current.pk)
            if taken.exists():
                raise serializers.ValidationError(f"Another key already has the alias {value!r}.")
        return value or ""


def _custom_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(SECRET_PREFIX) or len(value) < MIN_CUSTOM_KEY_LENGTH or any(c.isspace() for c in value):
        raise serializers.ValidationError(
            f"A key must start with {SECRET_PREFIX!r} and have at least {MIN_CUSTOM_KEY_LENGTH} characters "
            "(omit it and the router generates one).")
    if ApiKey.objects.filter(key_hash=hash_key(value)).exists() or is_master_key(value):
        raise serializers.ValidationError("This key is already in use.")
    return value


class KeyGenerate(KeyFields):
    key = serializers.CharField(required=False, allow_null=True, max_length=200,
                                help_text="Your own secret (sk-…); omitted: the router generates one")

    def validate_key(self, value):
        return _custom_key(value)


class KeyRef(serializers.Serializer):
    key = serializers.CharField(max_length=200, help_text="The key's secret (sk-…) or its token id")


class KeyUpdate(KeyFields, KeyRef):
    spend = _money(help_text="Set the current period's spend (e.g. 0 to reset)")


class KeyRegenerate(serializers.Serializer):
    key = serializers.CharField(required=False, max_length=200,
                                help_text="The key's secret (sk-…) or token id (or give it in the path)")
    new_key = serializers.CharField(required=False, allow_null=True, max_length=200,
                                    help_text="Your own new secret; omitted: the router generates one")

    def validate_new_key(self, value):
        return _custom_key(value)


class KeyDelete(serializers.Serializer):
    keys = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list)
    key_aliases = serializers.ListField(child=serializers.CharField(max_length=200), required=False, default=list)

    def validate(self, attrs):
        if not attrs["keys"] and not attrs["key_aliases"]:
            raise serializers.ValidationError({"keys": "Give the keys to delete (secrets or token ids)."})
        return attrs


class TeamFields(Limits):
    team_alias = serializers.CharField(required=False, max_length=200)

    def validate_team_alias(self, value):
        taken = Team.objects.filter(team_alias=value)
        current = self.context.get("instance")
        if current is not None:
            taken = taken.exclude(pk=current.pk)
        if taken.exists():
            raise serializers.ValidationError(f"A team named {value!r} already exists.")
        return value


class TeamNew(TeamFields):
    team_alias = serializers.CharField(max_length=200)
    team_id = serializers.CharField(required=False, max_length=64)

    def validate_team_id(self, value):
        if Team.objects.filter(pk=value).exists():
            raise serializers.ValidationError(f"A team with team_id {value!r} already exists.")
        return value


class TeamRef(serializers.Serializer):
    team_id = serializers.CharField(max_length=64)


class TeamUpdate(TeamFields):
    team_id = serializers.CharField(max_length=64)
    spend = _money(help_text="Set the current period's spend (e.g. 0 to reset)")


class TeamDelete(serializers.Serializer):
    team_ids = serializers.ListField(child=serializers.CharField(max_length=64), allow_empty=False)


# ---- answers ----------------------------------------------------------------------------------

def _num(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _when(value) -> str | None:
    return value.isoformat() if value else None


def _budget_fields(obj, now) -> dict:
    return {"models": list(obj.models or []), "spend": _num(obj.current_spend(now)), "max_budget": _num(obj.max_budget),
            "budget_duration": obj.budget_duration or None, "budget_reset_at": _when(obj.current_reset_at(now)),
            "tpm_limit": obj.tpm_limit, "rpm_limit": obj.rpm_limit, "blocked": obj.blocked,
            "metadata": obj.metadata or {}, "created_at": _when(obj.created_at), "updated_at": _when(obj.updated_at)}


def key_data(key: ApiKey, secret: str | None = None) -> dict:
    now = timezone.now()
    data = {"token": key.token, "key_name": key.key_name, "key_alias": key.key_alias or None,
            "team_id": key.team_id, "user_id": key.user_id or None, "expires": _when(key.expires),
            "soft_budget": _num(key.soft_budget), "max_parallel_requests": key.max_parallel_requests,
            **_budget_fields(key, now), "last_used_at": _when(key.last_used_at), "status": key.status(now)}
    if secret is not None:
        data = {"key": secret, **data}
    return data


def team_data(team: Team) -> dict:
    return {"team_id": team.team_id, "team_alias": team.team_alias, **_budget_fields(team, timezone.now())}

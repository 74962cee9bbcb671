"""The management API: LiteLLM's ``/key/*`` and ``/team/*`` routes, field names and answers.

Authenticated by the master key or a staff admin session (``auth``); client keys get 403.
Every change goes through the models, so it reaches every router process within about a
second (``keys.signals``).
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import authentication, permissions
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from credentials.models import hash_key

from .. import periods
from ..models import ApiKey, Team, new_secret
from . import errors
from . import serializers as s
from .auth import RouterKeyAuthentication


class ManagementView(APIView):
    authentication_classes = [RouterKeyAuthentication, authentication.SessionAuthentication]
    permission_classes = [permissions.IsAdminUser]

    def get_exception_handler(self):
        return errors.handle

    def valid(self, serializer_class, instance=None) -> dict:
        serializer = serializer_class(data=self.request.data, context={"instance": instance})
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)


def find_key(ref: str) -> ApiKey:
    """A key by its secret, its token id or its hash."""
    ref = (ref or "").strip()
    query = Q(key_hash=hash_key(ref)) if ref.startswith("sk-") else Q(pk=ref) | Q(key_hash=ref)
    key = ApiKey.objects.select_related("team").filter(query).first()
    if key is None:
        raise NotFound("No such key.")
    return key


def apply(obj, data: dict, now) -> None:
    """Set the fields given in ``data`` (LiteLLM names) on a key or team."""
    simple = ("models", "max_budget", "tpm_limit", "rpm_limit", "metadata", "blocked", "key_alias", "team_alias",
              "soft_budget", "max_parallel_requests", "user_id")
    for name in simple:
        if name in data:
            value = data[name]
            setattr(obj, name, "" if value is None and name in ("key_alias", "user_id") else value)
    if "metadata" in data and data["metadata"] is None:
        obj.metadata = {}
    if "team_id" in data and isinstance(obj, ApiKey):
        obj.team_id = data["team_id"] or None
    if "duration" in data:
        obj.expires = periods.add_duration(now, data["duration"]) if data["duration"] else None
    if "budget_duration" in data and (data["budget_duration"] or "") != obj.budget_duration:
        obj.budget_duration = data["budget_duration"] or ""
        obj.restart_period(now)
    if data.get("spend") is not None:
        obj.spend = data["spend"]
        obj.spend_generation += 1
        if obj.budget_duration and obj.current_reset_at(now) != obj.budget_reset_at:
            obj.budget_reset_at = obj.current_reset_at(now)


# ---- keys ---------------------------------------------------------------------------------------

class KeyGenerate(ManagementView):
    @extend_schema(request=s.KeyGenerate, responses={200: dict}, summary="Create a key (its secret is shown once)")
    def post(self, request):
        data = self.valid(s.KeyGenerate)
        secret = data.pop("key", None) or new_secret()
        key = ApiKey()
        apply(key, data, timezone.now())
        key.set_secret(secret)
        key.save()
        return Response(s.key_data(key, secret))


class KeyInfo(ManagementView):
    @extend_schema(parameters=[OpenApiParameter("key", str, description="secret or token id")],
                   responses={200: dict}, summary="A key's spend, budget, limits and reset time")
    def get(self, request):
        key = find_key(request.query_params.get("key", ""))
        return Response({"key": key.token, "info": s.key_data(key)})


class KeyUpdate(ManagementView):
    @extend_schema(request=s.KeyUpdate, responses={200: dict}, summary="Change a key's limits, models, budget…")
    def post(self, request):
        key = find_key(self.valid(s.KeyRef)["key"])
        data = self.valid(s.KeyUpdate, key)
        data.pop("key")
        apply(key, data, timezone.now())
        key.save()
        return Response(s.key_data(key))


class KeyDelete(ManagementView):
    @extend_schema(request=s.KeyDelete, responses={200: dict}, summary="Delete keys (secrets, token ids or aliases)")
    def post(self, request):
        data = self.valid(s.KeyDelete)
        keys = [find_key(ref) for ref in data["keys"]]
        for alias in data["key_aliases"]:
            key = ApiKey.objects.filter(key_alias=alias).first()
            if key is None:
                raise NotFound(f"No key with alias {alias!r}.")
            keys.append(key)
        tokens = [k.token for k in keys]
        with transaction.atomic():
            for key in keys:
                key.delete()
        return Response({"deleted_keys": tokens})


class KeyList(ManagementView):
    @extend_schema(parameters=[OpenApiParameter(n, t) for n, t in (
        ("page", int), ("size", int), ("team_id", str), ("user_id", str), ("key_alias", str),
        ("return_full_object", bool))], responses={200: dict}, summary="List keys (token ids, or full objects)")
    def get(self, request):
        q = request.query_params
        keys = ApiKey.objects.select_related("team").order_by("created_at", "token")
        for name in ("team_id", "user_id", "key_alias"):
            if q.get(name):
                keys = keys.filter(**{name: q[name]})
        try:
            page, size = max(1, int(q.get("page", 1))), min(1000, max(1, int(q.get("size", 100))))
        except ValueError:
            raise ValidationError({"page": "page and size must be integers."}) from None
        total = keys.count()
        chunk = keys[(page - 1) * size: page * size]
        full = q.get("return_full_object", "").lower() in ("1", "true", "yes")
        return Response({"keys": [s.key_data(k) if full else k.token for k in chunk], "total_count": total,
                         "current_page": page, "total_pages": max(1, -(-total // size))})


class KeyRegenerate(ManagementView):
    @extend_schema(request=s.KeyRegenerate, responses={200: dict},
                   summary="Replace a key's secret (same id, limits and spend); the old secret stops working")
    def post(self, request, key_ref: str | None = None):
        data = self.valid(s.KeyRegenerate)
        key = find_key(key_ref or data.get("key") or "")
        secret = data.get("new_key") or new_secret()
        key.set_secret(secret)
        key.save()
        return Response(s.key_data(key, secret))


class _KeyBlock(ManagementView):
    blocked = True

    def post(self, request):
        key = find_key(str(self.valid(s.KeyRef)["key"]))
        key.blocked = self.blocked
        key.save(update_fields=["blocked", "updated_at"])
        return Response(s.key_data(key))


class KeyBlock(_KeyBlock):
    @extend_schema(request=s.KeyRef, responses={200: dict}, summary="Block a key (401 until unblocked)")
    def post(self, request):
        return super().post(request)


class KeyUnblock(_KeyBlock):
    blocked = False

    @extend_schema(request=s.KeyRef, responses={200: dict}, summary="Unblock a key")
    def post(self, request):
        return super().post(request)


# ---- teams --------------------------------------------------------------------------------------

def find_team(team_id: str) -> Team:
    if not team_id:
        raise NotFound("Give a team_id.")
    return get_object_or_404(Team, pk=team_id)


class TeamNew(ManagementView):
    @extend_schema(request=s.TeamNew, responses={200: dict}, summary="Create a team")
    def post(self, request):
        data = self.valid(s.TeamNew)
        team = Team(team_id=data.pop("team_id")) if data.get("team_id") else Team()
        apply(team, data, timezone.now())
        team.save()
        return Response(s.team_data(team))


class TeamInfo(ManagementView):
    @extend_schema(parameters=[OpenApiParameter("team_id", str)], responses={200: dict},
                   summary="A team's spend, budget, limits and keys")
    def get(self, request):
        team = find_team(request.query_params.get("team_id", ""))
        keys = [s.key_data(k) for k in team.keys.select_related("team").order_by("created_at")]
        return Response({"team_id": team.team_id, "team_info": s.team_data(team), "keys": keys})


class TeamUpdate(ManagementView):
    @extend_schema(request=s.TeamUpdate, responses={200: dict}, summary="Change a team")
    def post(self, request):
        team = find_team(self.valid(s.TeamRef)["team_id"])
        data = self.valid(s.TeamUpdate, team)
        data.pop("team_id")
        apply(team, data, timezone.now())
        team.save()
        return Response(s.team_data(team))


class TeamDelete(ManagementView):
    @extend_schema(request=s.TeamDelete, responses={200: dict}, summary="Delete teams and their keys")
    def post(self, request):
        teams = [find_team(t) for t in self.valid(s.TeamDelete)["team_ids"]]
        ids = [t.team_id for t in teams]
        with transaction.atomic():
            for team in teams:
                team.delete()
        return Response({"deleted_teams": ids})


class TeamList(ManagementView):
    @extend_schema(responses={200: dict}, summary="List teams")
    def get(self, request):
        return Response([s.team_data(t) for t in Team.objects.all()])


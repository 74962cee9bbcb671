"""Durable spend: usage rows add their cost to their key and team, in the usage writer's thread.

``apply(rows)`` is a ``proxy.usage`` batch hook: it runs inside the transaction that writes
each batch, so a row's cost is in the key's spend exactly when the row exists (a restart or a
Redis flush loses neither). One UPDATE per key and team in the batch, never one per request
on the request path. Periods that ended are rolled over first (spend back to zero).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.db.models import F, Q
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from . import periods

log = logging.getLogger(__name__)

MASTER_KEY_ID = "master"


def apply(rows: list[dict]) -> None:
    keys: dict[str, list] = defaultdict(lambda: [Decimal(0), None])
    teams: dict[str, Decimal] = defaultdict(Decimal)
    for row in rows:
        key_id = row.get("key_id") or ""
        if not key_id or key_id == MASTER_KEY_ID:
            continue
        cost = row.get("cost_usd")
        acc = keys[key_id]
        if cost is not None:
            acc[0] += Decimal(cost)
        created = row.get("created_at")
        if created is not None and (acc[1] is None or created > acc[1]):
            acc[1] = created
        if row.get("team_id") and cost is not None:
            teams[row["team_id"]] += Decimal(cost)
    if not keys:
        return
    from .models import ApiKey, Team

    now = timezone.now()
    roll_over(ApiKey, keys, now)
    roll_over(Team, teams, now)
    for token, (cost, used) in keys.items():
        changes: dict = {"last_used_at": Greatest(Coalesce(F("last_used_at"), used), used)} if used else {}
        if cost:
            changes["spend"] = F("spend") + cost
        if changes:
            ApiKey.objects.filter(pk=token).update(**changes)
    for team_id, cost in teams.items():
        if cost:
            Team.objects.filter(pk=team_id).update(spend=F("spend") + cost)


def roll_over(model, ids: Iterable[str] | None, now: datetime) -> int:
    """Start the new period of every budget (of ``ids``; all when None) whose period ended."""
    due = model.objects.filter(budget_reset_at__lte=now).exclude(budget_duration="")
    if ids is not None:
        due = due.filter(pk__in=list(ids))
    count = 0
    for pk, reset_at, duration in due.values_list("pk", "budget_reset_at", "budget_duration"):
        nxt, _ = periods.current_period(reset_at, duration, now)
        # the condition makes a concurrent roll-over by another process a no-op
        count += model.objects.filter(Q(pk=pk) & Q(budget_reset_at=reset_at)).update(
            spend=Decimal(0), budget_reset_at=nxt)
    return count


def register_hooks() -> None:
    from proxy import usage

    from .admission import settle_usage

    if settle_usage not in usage.finish_hooks:
        usage.finish_hooks.append(settle_usage)
    hooks = getattr(usage, "batch_hooks", None)
    if hooks is not None and apply not in hooks:
        hooks.append(apply)

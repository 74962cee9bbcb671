"""The durable spend a live budget counter starts from (after a Redis flush, a new period, a restart)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from proxy import db

from . import periods
from .limits import to_nano
from .snapshot import Scope


def _durable(scope: Scope, now: datetime) -> Decimal:
    from .models import ApiKey, Team

    model = ApiKey if scope.kind == "key" else Team
    row = model.objects.filter(pk=scope.id).values_list("spend", "budget_reset_at", "budget_duration").first()
    if row is None:
        return Decimal(0)
    return periods.live_spend(row[0], row[1], row[2], now)


async def live_spend(scope: Scope, now: datetime) -> int:
    """Nano-dollars spent in the current period, read from the database (rare: only when a counter is missing)."""
    return to_nano(await db.run(lambda: _durable(scope, now)))

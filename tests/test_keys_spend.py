"""Durable spend from usage rows (the usage writer's batch hook), budget periods and their roll-over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from keys import periods, spend
from keys.models import ApiKey, Team

pytestmark = pytest.mark.django_db


def make_key(alias: str, **fields) -> ApiKey:
    key = ApiKey(key_alias=alias, **fields)
    key.set_secret(f"sk-{alias}-0000000000000000000000000")
    key.save()
    return key


@pytest.mark.parametrize(("text", "start", "end"), [
    ("30s", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)),
    ("1d", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
    ("2w", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 15, tzinfo=UTC)),
    ("1mo", datetime(2026, 1, 31, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC)),
    ("12mo", datetime(2026, 3, 15, tzinfo=UTC), datetime(2027, 3, 15, tzinfo=UTC)),
])
def test_durations(text, start, end):
    assert periods.add_duration(start, text) == end


@pytest.mark.parametrize("text", ["", "0d", "monthly", "1y", "-1d", "1.5d"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        periods.parse_duration(text)


def test_current_period_rolls_forward_past_missed_periods():
    reset = datetime(2026, 1, 1, tzinfo=UTC)
    assert periods.current_period(reset, "1d", reset - timedelta(hours=1)) == (reset, False)
    assert periods.current_period(reset, "1d", reset + timedelta(days=2, hours=1)) == (
        reset + timedelta(days=3), True)
    assert periods.live_spend(Decimal(5), reset, "1d", reset + timedelta(seconds=1)) == 0
    assert periods.live_spend(Decimal(5), reset, "", reset + timedelta(days=9)) == 5  # no period: never resets


def test_batch_adds_cost_to_keys_and_teams_and_last_used():
    team = Team.objects.create(team_alias="platform")
    alice, bob = make_key("alice", team=team), make_key("bob")
    now = timezone.now()
    rows = [
        {"key_id": alice.token, "team_id": team.team_id, "cost_usd": Decimal("0.25"), "created_at": now},
        {"key_id": alice.token, "team_id": team.team_id, "cost_usd": None, "created_at": now + timedelta(seconds=1)},
        {"key_id": bob.token, "team_id": "", "cost_usd": Decimal("1.5"), "created_at": now},
        {"key_id": "master", "cost_usd": Decimal(9), "created_at": now},
        {"key_id": "", "cost_usd": Decimal(9), "created_at": now},  # failed authentication
    ]
    spend.apply(rows)
    spend.apply([{"key_id": alice.token, "team_id": team.team_id, "cost_usd": Decimal("0.5"),
                  "created_at": now - timedelta(hours=1)}])  # an older row does not move last_used back
    alice.refresh_from_db()
    bob.refresh_from_db()
    team.refresh_from_db()
    assert alice.spend == Decimal("0.75") and bob.spend == Decimal("1.5") and team.spend == Decimal("0.75")
    assert alice.last_used_at == now + timedelta(seconds=1) and bob.last_used_at == now


def test_an_ended_period_starts_from_zero_before_new_cost_is_added():
    old_reset = timezone.now() - timedelta(hours=1)
    key = make_key("carol", max_budget=Decimal(10), budget_duration="1d", spend=Decimal(7))
    ApiKey.objects.filter(pk=key.pk).update(budget_reset_at=old_reset)
    key.refresh_from_db()
    assert key.current_spend() == 0 and key.status() == "active"
    spend.apply([{"key_id": key.token, "cost_usd": Decimal(2), "created_at": timezone.now()}])
    key.refresh_from_db()
    assert key.spend == Decimal(2) and key.budget_reset_at == old_reset + timedelta(days=1)

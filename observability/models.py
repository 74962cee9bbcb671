from __future__ import annotations

from django.db import models

#: upper bounds (ms) of the latency and time-to-first-byte histogram buckets; the last is open
BUCKETS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 120_000, 300_000, float("inf"))
#: what a rollup row is grouped by, besides its hour or day
GROUPS = ("key_id", "team_id", "requested_model", "resolved_model", "credential", "provider", "endpoint",
          "status_class")
DIMENSIONS = ("hour", *GROUPS)
DAILY_DIMENSIONS = ("day", *GROUPS)
SUMS = ("requests", "streams", "client_closed", "prompt_tokens", "cached_tokens", "cache_write_tokens",
        "completion_tokens", "reasoning_tokens", "priced_requests", "cost_usd", "latency_ms_sum", "ttfb_ms_sum",
        "ttfb_count", "images")
LATENCY_BUCKETS = tuple(f"lat_{i}" for i in range(len(BUCKETS_MS)))
TTFB_BUCKETS = tuple(f"ttfb_{i}" for i in range(len(BUCKETS_MS)))
MEASURES = (*SUMS, *LATENCY_BUCKETS, *TTFB_BUCKETS)


class UsageRollup(models.Model):
    """Usage rows summed per period and dimension set (``observability.rollups``)."""

    key_id = models.CharField(max_length=64, blank=True, default="")
    team_id = models.CharField(max_length=64, blank=True, default="")
    requested_model = models.CharField(max_length=200, blank=True, default="")
    resolved_model = models.CharField(max_length=200, blank=True, default="")
    credential = models.CharField(max_length=100, blank=True, default="")
    provider = models.CharField(max_length=20, blank=True, default="")
    endpoint = models.CharField(max_length=64, blank=True, default="")
    status_class = models.CharField(max_length=3)

    requests = models.BigIntegerField(default=0)
    streams = models.BigIntegerField(default=0)
    client_closed = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    priced_requests = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=0)
    latency_ms_sum = models.FloatField(default=0)
    ttfb_ms_sum = models.FloatField(default=0)
    ttfb_count = models.BigIntegerField(default=0)
    images = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class UsageHourly(UsageRollup):
    """Usage rows summed per hour and dimension set, written with the rows (``observability.rollups``).

    The dashboard reads only the rollups: a day is a few thousand rows however many requests it had.
    """

    hour = models.DateTimeField()

    class Meta:
        verbose_name = verbose_name_plural = "usage per hour"
        constraints = [models.UniqueConstraint(fields=DIMENSIONS, name="usage_hourly_dimensions")]
        indexes = [models.Index(fields=["hour"])]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.requested_model} {self.status_class}"


class UsageDaily(UsageRollup):
    """The hourly rollups summed per UTC day (``day`` is its midnight), written in the same transaction.

    Long dashboard periods read these: 30 days are 24 times fewer rows than in the hourly table.
    """

    day = models.DateTimeField()

    class Meta:
        verbose_name = verbose_name_plural = "usage per day"
        constraints = [models.UniqueConstraint(fields=DAILY_DIMENSIONS, name="usage_daily_dimensions")]
        indexes = [models.Index(fields=["day"])]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} {self.requested_model} {self.status_class}"


for _model in (UsageHourly, UsageDaily):
    for _name in (*LATENCY_BUCKETS, *TTFB_BUCKETS):
        _model.add_to_class(_name, models.BigIntegerField(default=0))


class Dashboard(UsageHourly):
    """No table: the admin dashboard page hangs off this proxy model (index entry, permissions)."""

    class Meta:
        proxy = True
        verbose_name = verbose_name_plural = "dashboard"

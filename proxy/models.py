from __future__ import annotations

from django.db import models


class UsageRecord(models.Model):
    """One row per client request, written in batches off the request path (``proxy.usage``)."""

    created_at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=64, db_index=True)
    key_id = models.CharField("key", max_length=64, blank=True, default="",
                              help_text="The client key's id (keys.ApiKey.token), or master")
    team_id = models.CharField("team", max_length=64, blank=True, default="")
    endpoint = models.CharField(max_length=64)
    requested_model = models.CharField(max_length=200, blank=True, default="")
    resolved_model = models.CharField(max_length=200, blank=True, default="")
    credential = models.CharField(max_length=100, blank=True, default="")
    provider = models.CharField(max_length=20, blank=True, default="")
    status = models.PositiveSmallIntegerField()
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    # Cache writes are part of prompt_tokens, as cache reads (cached_tokens) are.
    cache_write_5m_tokens = models.PositiveIntegerField("cache writes (5 min)", default=0)
    cache_write_1h_tokens = models.PositiveIntegerField("cache writes (1 hour)", default=0)
    images = models.PositiveIntegerField("images generated", default=0)
    cost_usd = models.DecimalField("cost (USD)", max_digits=20, decimal_places=12, null=True, blank=True,
                                   help_text="Empty when the model had no price (never 0 for that)")
    tokens_estimated = models.BooleanField(default=False)
    ttfb_ms = models.FloatField(null=True, blank=True)
    latency_ms = models.FloatField(default=0)
    attempts = models.PositiveSmallIntegerField(default=1)
    client_closed = models.BooleanField(default=False)
    error_type = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        # the usage explorer's filters, each with the time order its pages are read in (newest first, so a
        # value last seen weeks ago is found without walking every newer row); errors and client-closed
        # requests, the rare rows people look for, in small partial indexes
        indexes = [models.Index(fields=["resolved_model", "created_at"]),
                   models.Index(fields=["requested_model", "created_at"], name="usage_public_model_time"),
                   models.Index(fields=["endpoint", "created_at"], name="usage_endpoint_time"),
                   models.Index(fields=["key_id", "created_at"], name="usage_key_time"),
                   models.Index(fields=["team_id", "created_at"], name="usage_team_time"),
                   models.Index(fields=["credential", "created_at"], name="usage_credential_time"),
                   models.Index(fields=["provider", "created_at"], name="usage_provider_time"),
                   models.Index(fields=["created_at", "status"], condition=models.Q(status__gte=400),
                                name="usage_errors_time"),
                   models.Index(fields=["created_at"], condition=models.Q(client_closed=True),
                                name="usage_client_closed_time")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.endpoint} {self.status}"

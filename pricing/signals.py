"""A price saved or deleted anywhere reloads every router process's snapshot within about a second:
the change bumps the router configuration's version, which every process polls (``proxy.config``)."""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import Price


def prices_changed() -> None:
    from credentials.models import bump_config_version
    from proxy import config

    bump_config_version()
    config.invalidate()


@receiver([post_save, post_delete], sender=Price, dispatch_uid="pricing-price-changed")
def _price_changed(sender, **kwargs) -> None:
    prices_changed()

"""A key or team saved or deleted anywhere reaches every router process within about a second.

Keys ride on the routing configuration's version (``RouterSettings.config_version``): every
process polls it once a second and reloads its snapshot, keys included. Spend and last-used
updates go through ``QuerySet.update`` and send no signal, so traffic never forces a reload.
"""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from credentials.models import bump_config_version

from .models import ApiKey, Team


@receiver([post_save, post_delete], sender=ApiKey, dispatch_uid="keys-key-changed")
@receiver([post_save, post_delete], sender=Team, dispatch_uid="keys-team-changed")
def _changed(sender, **kwargs) -> None:
    from proxy import config

    bump_config_version()
    config.invalidate()

from __future__ import annotations

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction

from credentials.fields import ENCRYPTED_FIELDS


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret with the first key of ROUTER_ENCRYPTION_KEY. Rotate by putting the new "
        "key first (\"NEW,OLD\"), running this, then dropping OLD."
    )

    def handle(self, *args, **options) -> None:
        keys = [k for k in settings.ROUTER_ENCRYPTION_KEY.split(",") if k.strip()]
        if len(keys) < 2:
            self.stderr.write("note: ROUTER_ENCRYPTION_KEY holds one key (or none); secrets are re-encrypted with it")
        try:
            with transaction.atomic():
                count = sum(_rotate(model, fields) for model, fields in _encrypted_models())
        except ImproperlyConfigured as exc:
            raise CommandError(f"{exc}; nothing was changed") from None
        self.stdout.write(f"re-encrypted {count} secret(s) with the first key of ROUTER_ENCRYPTION_KEY")


def _encrypted_models() -> list[tuple[type[models.Model], list[str]]]:
    found = []
    for model in apps.get_models():
        fields = [f.name for f in model._meta.concrete_fields if isinstance(f, ENCRYPTED_FIELDS)]
        if fields:
            found.append((model, fields))
    return found


def _rotate(model: type[models.Model], fields: list[str]) -> int:
    """Reading decrypts with any configured key; writing encrypts with the first. update() skips the
    save signals: the plaintext is unchanged, so the routing config needs no reload."""
    count = 0
    for row in list(model._default_manager.values("pk", *fields)):
        values = {name: row[name] for name in fields if row[name]}
        if values:
            model._default_manager.filter(pk=row["pk"]).update(**values)
            count += len(values)
    return count

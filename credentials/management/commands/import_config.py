from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from credentials.config_io import ConfigError, import_config


class Command(BaseCommand):
    help = (
        "Create or update credentials, models, aliases and router settings from a YAML file "
        "(the seed's format or the original Auto AI Router's). All or nothing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", help="YAML file, e.g. router.yaml")
        parser.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
        parser.add_argument("--prune", action="store_true",
                            help="delete credentials, models and aliases the file does not name")

    def handle(self, *args, path: str, dry_run: bool, prune: bool, **options) -> None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
        try:
            plan = import_config(text, dry_run=dry_run, prune=prune, master_key_override=settings.ROUTER_MASTER_KEY,
                                 base_dir=Path(path).resolve().parent)
        except ConfigError as exc:
            self._warn(exc.warnings)
            listing = "\n".join(f"  {e}" for e in exc.errors)
            raise CommandError(f"{path}: {len(exc.errors)} error(s); nothing was changed:\n{listing}") from None
        self._warn(plan.warnings)
        heading = "Dry run, nothing was changed. Would apply:" if dry_run else f"Imported {path}:"
        self.stdout.write(heading)
        for line in plan.lines():
            self.stdout.write(f"  {line}")
        self.stdout.write(plan.summary())

    def _warn(self, warnings: list[str]) -> None:
        for warning in warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))

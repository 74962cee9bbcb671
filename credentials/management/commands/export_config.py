from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from credentials.config_io import export_config


class Command(BaseCommand):
    help = "Write credentials, models, aliases and fail2ban as YAML that import_config reads back (secrets redacted)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--include-secrets", action="store_true",
                            help="write API keys, service-account JSON and extra header values in clear "
                                 "(keep the file safe)")
        parser.add_argument("-o", "--output", help="file to write (default: standard output)")

    def handle(self, *args, include_secrets: bool, output: str | None, **options) -> None:
        text = export_config(include_secrets=include_secrets)
        if not output:
            self.stdout.write(text, ending="")
            return
        try:
            target = Path(output)
            target.write_text(text, encoding="utf-8")
            if include_secrets:
                target.chmod(0o600)
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc}") from None
        self.stderr.write(f"wrote {output}")

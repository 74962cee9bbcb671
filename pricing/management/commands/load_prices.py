from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from pricing.loading import SHIPPED, PriceError, load_link


class Command(BaseCommand):
    help = ("Load model prices from LiteLLM-format JSON files or URLs (default: the price file shipped with the "
            "router). History is kept: a changed price starts a new row on the effective day.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("sources", nargs="*", metavar="FILE_OR_URL",
                            help="price files: a path, file://path or http(s) URL (e.g. LiteLLM's "
                                 "model_prices_and_context_window.json)")
        parser.add_argument("--effective-from", type=date.fromisoformat, metavar="YYYY-MM-DD",
                            help="the day these prices apply from (default: the file's _about.effective_from, "
                                 "else today)")
        parser.add_argument("--dry-run", action="store_true", help="count what would change and change nothing")

    def handle(self, *args, sources: list[str], effective_from: date | None, dry_run: bool, **options) -> None:
        for source in sources or [str(SHIPPED)]:
            try:
                with transaction.atomic():
                    counts, parsed = load_link(source, effective_from=effective_from)
                    if dry_run:
                        transaction.set_rollback(True)
            except PriceError as exc:
                raise CommandError(str(exc)) from None
            verb = "would load" if dry_run else "loaded"
            self.stdout.write(f"{source}: {verb} {counts['created']} new, {counts['updated']} updated, "
                              f"{counts['unchanged']} unchanged; {len(parsed.skipped)} entries without a price "
                              "skipped")

from django.core.management.base import BaseCommand

from observability import retention


class Command(BaseCommand):
    help = "Delete usage rows and hourly rollups past ROUTER_USAGE_RETENTION_DAYS / ROUTER_ROLLUP_RETENTION_DAYS."

    def handle(self, *args, **options) -> None:
        raw, rolled = retention.prune()
        self.stdout.write(f"deleted {raw} usage rows and {rolled} hourly rollups")

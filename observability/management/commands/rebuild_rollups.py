import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from observability import rollups


def _when(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not an ISO date or datetime: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class Command(BaseCommand):
    help = ("Recompute the hourly usage rollups from the raw usage rows, for whole hours in [--since, --until) "
            "(default: everything before the current hour, which the running writer is still filling), then the "
            "daily rollups of the days those hours fall in.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", type=_when, help="first hour to rebuild (UTC unless an offset is given)")
        parser.add_argument("--until", type=_when, help="end (exclusive); default: the start of the current hour")

    def handle(self, *args, since=None, until=None, **options) -> None:
        written = rollups.rebuild(since, until)
        self.stdout.write(f"rebuilt {written} hourly rollup rows and the daily rollups they fall in")

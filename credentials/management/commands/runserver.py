import sys

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings
from django.db import DatabaseError

from routerproject.exposure import addrport, exposure_warnings, sample_key_in_use


class Command(DaphneRunserver):
    """Daphne's runserver on ``ROUTER_HOST``:``ROUTER_PORT`` (127.0.0.1:8080 unless told otherwise),
    warning on stderr when it listens beyond loopback with the sample key or the default secret key."""

    default_port = str(settings.ROUTER_PORT)

    def handle(self, *args, **options):
        if not options.get("addrport"):
            options["addrport"] = addrport(settings.ROUTER_HOST, settings.ROUTER_PORT)
        host = options["addrport"].rsplit(":", 1)[0] if ":" in options["addrport"] else self.default_addr
        try:
            sample_key = sample_key_in_use()
        except DatabaseError:  # not migrated yet: Django's own check says so next
            sample_key = False
        warnings = exposure_warnings(host, sample_key=sample_key, secret_key=settings.SECRET_KEY)
        for warning in warnings:
            sys.stderr.write(f"\n*** WARNING: listening on {host}, reachable from the network: {warning}\n")
        if warnings:
            sys.stderr.write("*** Bind 127.0.0.1 (unset ROUTER_HOST) for local use.\n\n")
        return super().handle(*args, **options)

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings

from routerproject.exposure import addrport, warn_if_exposed


class Command(DaphneRunserver):
    """Daphne's runserver on ``ROUTER_HOST``:``ROUTER_PORT`` (127.0.0.1:8080 unless told otherwise),
    warning on stderr when it listens beyond loopback with the sample key or the default secret key."""

    default_port = str(settings.ROUTER_PORT)

    def handle(self, *args, **options):
        if not options.get("addrport"):
            options["addrport"] = addrport(settings.ROUTER_HOST, settings.ROUTER_PORT)
        host = options["addrport"].rsplit(":", 1)[0] if ":" in options["addrport"] else self.default_addr
        warn_if_exposed(host)
        return super().handle(*args, **options)

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings


class Command(DaphneRunserver):
    """Daphne's runserver, on the router's port (8080, as the client docs assume)."""

    default_port = str(settings.ROUTER_PORT)

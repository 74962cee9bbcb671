"""Create the first admin login if there is none, and say how to log in."""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an 'admin' superuser when no superuser exists (password from ROUTER_ADMIN_PASSWORD or random)."

    def handle(self, *args, **options) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            self.stdout.write("Admin login: an admin user already exists (manage.py changepassword admin to reset).")
            return
        password = os.environ.get("ROUTER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.objects.create_superuser("admin", "", password)
        self.stdout.write(f"Admin login created: user 'admin', password '{password}' (shown once).")

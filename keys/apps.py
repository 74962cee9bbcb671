from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "keys"
    verbose_name = "Keys, teams and spend"

    def ready(self) -> None:
        from . import signals, spend

        assert signals  # imported for its receivers: key/team changes reach every router process

        spend.register_hooks()

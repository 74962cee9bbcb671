from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"
    verbose_name = "Proxy"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        import routerproject.exposure  # noqa: F401  (registers the deploy checks)
        from credentials.models import Credential, ModelAlias, ProviderModel, RouterSettings

        from . import config

        def changed(**kwargs) -> None:
            config.invalidate()

        for model in (Credential, ProviderModel, ModelAlias, RouterSettings):
            post_save.connect(changed, sender=model, weak=False, dispatch_uid=f"proxy-config-{model.__name__}-save")
            post_delete.connect(changed, sender=model, weak=False, dispatch_uid=f"proxy-config-{model.__name__}-delete")

"""Admin page for the routing state: cooldowns (fail2ban), limit usage, Redis status; lift cooldowns.

The state lives in memory or Redis, not in a table, so the page hangs off a proxy model
(``RoutingState``, no table of its own) whose change list is replaced by a custom view:
it appears in the admin index and uses Django's permissions (view to look, change to
lift cooldowns).
"""

from __future__ import annotations

import datetime as dt

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from . import config as config_mod
from . import state
from .models import UsageRecord


class RoutingState(UsageRecord):
    class Meta:
        proxy = True
        app_label = "proxy"
        verbose_name = verbose_name_plural = "routing state (cooldowns and limits)"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never (until lifted)"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _limit_rows(config: config_mod.RouterConfig, usage: dict[str, dict[str, int]]) -> list[dict]:
    rows = []
    for name, deps in sorted(config.pools.items()):
        for dep in deps:
            cells = []
            for key, limit, kind in state.limits(dep):
                scope = "credential" if key.count("|") == 1 else "deployment"
                cells.append(f"{kind.upper()} ({scope}): {usage.get(state.dep_key(dep), {}).get(key, 0)} / {limit}")
            if cells:
                rows.append({"name": name, "credential": dep.credential.name, "model": dep.upstream_model,
                             "usage": cells})
    return rows


@admin.register(RoutingState)
class RoutingStateAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            return self._lift(request)
        config = config_mod.load()
        deps = [d for pool in config.pools.values() for d in pool if state.has_limits(d)]
        health, cooldowns, usage = state.admin_view(deps)
        context = {
            **self.admin_site.each_context(request),
            "title": "Routing state",
            "opts": self.model._meta,
            "health": health,
            "cooldowns": [{**cd.to_dict(), "key": cd.key, "until_text": _when(None if cd.permanent else cd.until),
                           "since_text": _when(cd.since)} for cd in cooldowns],
            "limits": _limit_rows(config, usage),
            "window": state.window_seconds(),
            "fail2ban": state.fail2ban_rules(config.fail2ban),
            "fail2ban_codes": ", ".join(map(str, sorted(state.fail2ban_rules(config.fail2ban).codes))),
            "can_lift": self.has_change_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/proxy/routing_state.html", context)

    def _lift(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        keys = None if "lift_all" in request.POST else request.POST.getlist("key")
        if keys == []:
            self.message_user(request, "Select the cooldowns to lift.", messages.WARNING)
        else:
            lifted = state.admin_clear(keys)
            self.message_user(request, f"Lifted {lifted} cooldown(s); failure counts reset.", messages.SUCCESS)
        return HttpResponseRedirect(request.path)

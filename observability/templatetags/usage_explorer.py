"""The usage explorer's date hierarchy, drawn from the daily rollups.

Django's own tag runs ``DISTINCT date_trunc(...)`` over the change list's rows: a full scan
of a table with millions of usage rows. The days with traffic are in the rollups already.
"""

from __future__ import annotations

import copy

from django import template
from django.contrib.admin.templatetags.admin_list import date_hierarchy
from django.db.models import F

from observability.models import UsageDaily

register = template.Library()


@register.inclusion_tag("admin/date_hierarchy.html")
def usage_date_hierarchy(cl):
    field = cl.date_hierarchy
    days = UsageDaily.objects.annotate(**{field: F("day")})
    for part in ("year", "month", "day"):
        value = cl.params.get(f"{field}__{part}")
        if value:
            days = days.filter(**{f"{field}__{part}": value})
    view = copy.copy(cl)
    view.queryset = days
    return date_hierarchy(view)

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "Auto AI Router"
admin.site.site_title = "Auto AI Router"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("keys.api.urls")),  # the management API: /key/*, /team/*, /api/docs
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

admin.site.site_header = "Auto AI Router"
admin.site.site_title = "Auto AI Router"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]

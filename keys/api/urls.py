from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views
from .auth import RouterKeyAuthentication

_docs_auth = {"authentication_classes": [RouterKeyAuthentication, *views.ManagementView.authentication_classes[1:]],
              "permission_classes": views.ManagementView.permission_classes}

urlpatterns = [
    path("key/generate", views.KeyGenerate.as_view()),
    path("key/info", views.KeyInfo.as_view()),
    path("key/update", views.KeyUpdate.as_view()),
    path("key/delete", views.KeyDelete.as_view()),
    path("key/list", views.KeyList.as_view()),
    path("key/regenerate", views.KeyRegenerate.as_view()),
    path("key/<str:key_ref>/regenerate", views.KeyRegenerate.as_view()),
    path("key/block", views.KeyBlock.as_view()),
    path("key/unblock", views.KeyUnblock.as_view()),
    path("team/new", views.TeamNew.as_view()),
    path("team/info", views.TeamInfo.as_view()),
    path("team/update", views.TeamUpdate.as_view()),
    path("team/delete", views.TeamDelete.as_view()),
    path("team/list", views.TeamList.as_view()),
    path("api/schema", SpectacularAPIView.as_view(**_docs_auth), name="api-schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="api-schema", **_docs_auth), name="api-docs"),
]

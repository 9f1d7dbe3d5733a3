from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from annotation.login import ThrottledLoginView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="portal:home", permanent=False)),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("portal/", include("annotation.reading.urls")),
    path("tools/", include("inference.urls")),
    path("dashboard/", include("annotation.dashboard.urls")),
    path("api/v1/", include("annotation.api.urls")),
    path("admin/", admin.site.urls),
]

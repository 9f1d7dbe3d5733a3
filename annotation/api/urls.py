from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from annotation.api import studies, views

app_name = "api"
router = DefaultRouter()
router.register("studies", studies.StudyViewSet, basename="study")
router.register("rounds", studies.RoundViewSet, basename="round")
router.register("images", views.ImageViewSet, basename="image")
router.register("labels", views.LabelViewSet, basename="label")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("model-versions", views.ModelVersionViewSet, basename="model-version")
router.register("exports", views.ExportViewSet, basename="export")
router.register("webhooks", views.WebhookViewSet, basename="webhook")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(api_version="v1"), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("", include(router.urls)),
]

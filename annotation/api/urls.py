from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from annotation.api import data, exports, studies, versions, webhooks

app_name = "api"
router = DefaultRouter()
router.register("studies", studies.StudyViewSet, basename="study")
router.register("rounds", studies.RoundViewSet, basename="round")
router.register("images", data.ImageViewSet, basename="image")
router.register("labels", data.LabelViewSet, basename="label")
router.register("tasks", data.TaskViewSet, basename="task")
router.register("model-versions", versions.ModelVersionViewSet, basename="model-version")
router.register("exports", exports.ExportViewSet, basename="export")
router.register("webhooks", webhooks.WebhookViewSet, basename="webhook")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(api_version="v1"), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("", include(router.urls)),
]

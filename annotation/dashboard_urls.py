from django.urls import path

from annotation import dashboard

app_name = "dashboard"
urlpatterns = [
    path("", dashboard.home, name="home"),
    path("studies/<int:pk>/", dashboard.study_page, name="study"),
    path("studies/<int:pk>/launch/", dashboard.study_launch, name="study-launch"),
    path("studies/<int:pk>/version/", dashboard.study_version, name="study-version"),
    path("rounds/<int:pk>/", dashboard.round_page, name="round"),
    path("rounds/<int:pk>/progress.json", dashboard.round_progress_json, name="round-progress"),
    path("rounds/<int:pk>/gallery/", dashboard.round_gallery, name="round-gallery"),
    path("rounds/<int:pk>/report/", dashboard.round_report, name="round-report"),
    path("rounds/<int:pk>/report/refresh/", dashboard.round_report_refresh, name="round-report-refresh"),
    path("rounds/<int:pk>/<str:action>/", dashboard.round_action, name="round-action"),
    path("images/<int:pk>/<str:which>.png", dashboard.image_file, name="image-file"),
    path("generated/<int:pk>.png", dashboard.generated_file, name="generated-file"),
]

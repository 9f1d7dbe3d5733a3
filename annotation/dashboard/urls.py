from django.urls import path

from annotation.dashboard import imports, members, practice, setup, views

app_name = "dashboard"
urlpatterns = [
    path("", views.home, name="home"),
    path("studies/new/", setup.study_new, name="study-new"),
    path("studies/<int:pk>/", views.study_page, name="study"),
    path("studies/<int:pk>/settings/", setup.study_settings, name="study-settings"),
    path("studies/<int:pk>/launch/", views.study_launch, name="study-launch"),
    path("studies/<int:pk>/version/", views.study_version, name="study-version"),
    path("studies/<int:pk>/import/", imports.study_import, name="study-import"),
    path("studies/<int:pk>/invitations/", members.study_invite, name="study-invite"),
    path("studies/<int:pk>/members/<int:member>/<str:action>/", members.member_action, name="member-action"),
    path("studies/<int:pk>/practice/", practice.practice_upload, name="practice-upload"),
    path("imports/<int:pk>/", imports.import_job_page, name="import-job"),
    path("rounds/<int:pk>/", views.round_page, name="round"),
    path("rounds/<int:pk>/progress.json", views.round_progress_json, name="round-progress"),
    path("rounds/<int:pk>/gallery/", views.round_gallery, name="round-gallery"),
    path("rounds/<int:pk>/report/", views.round_report, name="round-report"),
    path("rounds/<int:pk>/report/refresh/", views.round_report_refresh, name="round-report-refresh"),
    path("rounds/<int:pk>/<str:action>/", views.round_action, name="round-action"),
    path("images/<int:pk>/<str:which>.png", views.image_file, name="image-file"),
    path("generated/<int:pk>.png", views.generated_file, name="generated-file"),
]

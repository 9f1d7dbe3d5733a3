from django.urls import path

from annotation.reading import onboarding, views

app_name = "portal"

urlpatterns = [
    path("", views.home, name="home"),
    path("q/<str:token>/next/", views.queue_next, name="queue-next"),
    path("q/<str:token>/done/", views.done, name="done"),
    path("q/<str:token>/review/", views.review, name="review"),
    path("c/<str:token>/", views.case, name="case"),
    path("i/<str:token>", views.image, name="image"),
    path("api/next", views.api_next, name="api-next"),
    path("api/submit", views.api_submit, name="api-submit"),
    path("join/<str:token>/", onboarding.join, name="join"),
    path("practice/<int:pk>/", onboarding.practice, name="practice"),
    path("practice/<int:pk>/<int:case>.png", onboarding.practice_image, name="practice-image"),
]

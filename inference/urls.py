from django.urls import path

from . import views

app_name = "inference"
urlpatterns = [path("clean/", views.clean_preview, name="clean-preview")]

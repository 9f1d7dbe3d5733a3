from django.urls import path

from inference import views

app_name = "inference"
urlpatterns = [path("clean/", views.clean_preview, name="clean-preview")]

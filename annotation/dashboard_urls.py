from django.urls import path

from . import dashboard

app_name = "dashboard"
urlpatterns = [
    path("rounds/<int:pk>/report/", dashboard.round_report, name="round-report"),
    path("rounds/<int:pk>/report/refresh/", dashboard.round_report_refresh, name="round-report-refresh"),
]

from django.contrib.auth import views as auth_views
from django.urls import include, path

from feedback import api, views

pages = [
    path("annotate/", views.annotate, name="annotate"),
    path("annotate/vote/", views.vote, name="vote"),
    path("annotate/compare/", views.compare_vote, name="compare_vote"),
    path("annotate/skip/", views.skip, name="skip"),
    path("annotate/undo/", views.undo, name="undo"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/snapshot/", views.create_snapshot, name="create_snapshot"),
    path("dashboard/import/", views.import_page, name="import"),
    path("dashboard/jobs/<int:job_id>/", views.job_page, name="job"),
]

api_v1 = [
    path("generations/", api.GenerationCreateView.as_view(), name="generations"),
    path("generations/batch/", api.GenerationBatchView.as_view(), name="generations-batch"),
    path("votes/", api.VoteView.as_view(), name="votes"),
    path("imports/", api.ImportView.as_view(), name="imports"),
    path("snapshots/", api.SnapshotListCreateView.as_view(), name="snapshots"),
    path("jobs/<int:job_id>/", api.JobView.as_view(), name="job"),
    path("jobs/<int:job_id>/skipped/", api.JobSkippedView.as_view(), name="job-skipped"),
    path("jobs/<int:job_id>/skipped/csv/", api.JobSkippedCsvView.as_view(), name="job-skipped-csv"),
]

urlpatterns = [
    # Global names: settings.LOGIN_URL / LOGIN_REDIRECT_URL refer to these.
    path("", views.home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    # The API before the pages: URL resolution tries patterns in order, and the vote endpoint
    # is the busiest route of the app.
    path("api/v1/", include((api_v1, "feedback-api"))),
    path("", include((pages, "feedback"))),
]

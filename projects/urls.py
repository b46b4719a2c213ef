from django.urls import path

from projects import views

app_name = "projects"

urlpatterns = [
    path("keys/", views.api_keys, name="api_keys"),
    path("keys/<str:prefix>/revoke/", views.revoke_key, name="revoke_key"),
    path("members/", views.members, name="members"),
    path("members/<int:user_id>/remove/", views.remove_member, name="remove_member"),
]

"""The project admin's API keys page: create (the key shown once), list, revoke.

Views stay thin: reads through projects.selectors, writes through projects.services.
"""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from projects import roles, selectors, services
from projects.models import SCOPES, ApiClient
from projects.web import project_permission_required

manage_keys_required = project_permission_required(roles.MANAGE_KEYS, "project admins only")

SCOPE_HELP = {
    "generations:write": "send generations (prompt + completion)",
    "votes:write": "send end users' thumbs up / down",
    "generate": "call the active model",
    "import": "bulk imports, snapshots, and the steering fields votes_wanted / model_version",
    "read": "list snapshots",
}


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=50, required=False, help_text="What the key is for, e.g. “mobile app”.")
    scopes = forms.MultipleChoiceField(
        choices=[(scope, f"{scope} — {SCOPE_HELP[scope]}") for scope in SCOPES],
        widget=forms.CheckboxSelectMultiple, initial=["generations:write", "votes:write", "generate"],
    )
    expires_days = forms.IntegerField(min_value=1, max_value=3650, required=False, label="Expires after (days)",
                                      help_text="Blank: never expires (revoke it when it is no longer needed).")
    rate = forms.CharField(max_length=32, required=False, label="Rate limit",
                           help_text="e.g. 100/s or 6000/min; blank: the installation's default.")

    def clean_rate(self):
        rate = self.cleaned_data["rate"].strip()
        if rate:
            try:
                services.validate_rate(rate)
            except ValidationError as exc:
                raise ValidationError(exc.message_dict["rate"]) from None
        return rate


@manage_keys_required
def api_keys(request):
    new_key = None
    if request.method == "POST":
        form = ApiKeyForm(request.POST)
        if form.is_valid():
            try:
                client, new_key = services.create_api_key(
                    request.project, scopes=form.cleaned_data["scopes"], name=form.cleaned_data["name"],
                    expires_days=form.cleaned_data["expires_days"], rate=form.cleaned_data["rate"],
                    created_by=request.user)
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                form = ApiKeyForm()
                new_key = {"client": client, "key": new_key}
    else:
        form = ApiKeyForm()
    response = render(request, "projects/api_keys.html", {
        "form": form, "new_key": new_key, "clients": selectors.api_clients(request.project),
    })
    if new_key:
        # The key is in this page only: never cached, never stored.
        response["Cache-Control"] = "no-store"
    return response


@require_POST
@manage_keys_required
def revoke_key(request, prefix: str):
    client = get_object_or_404(ApiClient, prefix=prefix, project=request.project)
    services.revoke_api_key(client)
    messages.success(request, f"Key {client.prefix} ({client.name}) is revoked: it is refused from now on.")
    return redirect("projects:api_keys")

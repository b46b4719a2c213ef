"""The project admin's API keys page: create (the key shown once), list, revoke.

Views stay thin: reads through projects.selectors, writes through projects.services.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from projects import roles, selectors, services
from projects.models import SCOPES, ApiClient, Membership
from projects.web import project_permission_required

manage_keys_required = project_permission_required(roles.MANAGE_KEYS, "project admins only")
manage_members_required = project_permission_required(roles.MANAGE_MEMBERS, "project admins only")

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
        widget=forms.CheckboxSelectMultiple,
        initial=["generations:write", "votes:write", "generate"],
    )
    expires_days = forms.IntegerField(
        min_value=1,
        max_value=3650,
        required=False,
        label="Expires after (days)",
        help_text="Blank: never expires (revoke it when it is no longer needed).",
    )
    rate = forms.CharField(
        max_length=32,
        required=False,
        label="Rate limit",
        help_text="e.g. 100/s or 6000/min; blank: the installation's default.",
    )

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
                    request.project,
                    scopes=form.cleaned_data["scopes"],
                    name=form.cleaned_data["name"],
                    expires_days=form.cleaned_data["expires_days"],
                    rate=form.cleaned_data["rate"],
                    created_by=request.user,
                )
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                form = ApiKeyForm()
                new_key = {"client": client, "key": new_key}
    else:
        form = ApiKeyForm()
    response = render(
        request,
        "projects/api_keys.html",
        {
            "form": form,
            "new_key": new_key,
            "clients": selectors.api_clients(request.project),
        },
    )
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


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="An existing account (create accounts with add_annotator).")
    role = forms.ChoiceField(choices=Membership.Role.choices)

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise ValidationError(f"no active account named {username!r}")
        return user


@manage_members_required
def members(request):
    if request.method == "POST":
        form = MemberForm(request.POST)
        if form.is_valid():
            user, role = form.cleaned_data["username"], form.cleaned_data["role"]
            services.set_membership(request.project, user, role)
            messages.success(
                request,
                f"{user.get_username()} is now {Membership.Role(role).label.lower()} of {request.project.name}.",
            )
            return redirect("projects:members")
    else:
        form = MemberForm()
    return render(
        request,
        "projects/members.html",
        {
            "form": form,
            "members": selectors.members(request.project),
            "roles": Membership.Role.choices,
        },
    )


@require_POST
@manage_members_required
def remove_member(request, user_id: int):
    membership = get_object_or_404(Membership, project=request.project, user_id=user_id)
    if membership.user_id == request.user.pk:
        messages.error(request, "You cannot remove yourself; ask another project admin.")
    else:
        services.remove_membership(request.project, membership.user)
        messages.success(request, f"{membership.user.get_username()} no longer has a role in {request.project.name}.")
    return redirect("projects:members")

"""Admin for projects, memberships and API clients. An API client's key is never shown: only its
prefix (the public half, what a log line or a support request names) is listed; the hash stays
out of every form and list."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from projects import services
from projects.models import ApiClient, Membership, Project

# The library's own concrete key model is unused here (our keys are ApiClient rows, one project each).
admin.site.unregister(APIKey)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)
    raw_id_fields = ("user",)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "base_model", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "project", "role", "created_at")
    list_filter = ("project", "role")
    search_fields = ("user__username", "project__name")
    raw_id_fields = ("user",)


class ApiClientForm(forms.ModelForm):
    class Meta:
        model = ApiClient
        fields = "__all__"

    def clean_scopes(self):
        try:
            return services.parse_scopes(self.cleaned_data.get("scopes"))
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["scopes"]) from None

    def clean_rate(self):
        rate = (self.cleaned_data.get("rate") or "").strip()
        if rate:
            try:
                services.validate_rate(rate)
            except ValidationError as exc:
                raise ValidationError(exc.message_dict["rate"]) from None
        return rate


@admin.register(ApiClient)
class ApiClientAdmin(APIKeyModelAdmin):
    """The library's key admin (the key shown once, as a message, when a row is added here)."""

    list_display = ("prefix", "name", "project", "scopes", "rate", "expiry_date", "revoked", "last_used_at", "created")
    list_filter = ("project", "revoked", "created")
    search_fields = ("name", "prefix", "project__name")
    fields = ("project", "name", "scopes", "rate", "expiry_date", "revoked", "prefix", "last_used_at", "created_by")
    actions = ("revoke_selected",)
    form = ApiClientForm

    def get_readonly_fields(self, request, obj=None):
        readonly = ("prefix", "last_used_at", "created_by")
        if obj is not None:
            # A key stays in its project; a revoked key stays revoked.
            readonly += ("project",) + (("name", "revoked", "expiry_date", "scopes", "rate") if obj.revoked else ())
        return readonly

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke the selected keys")
    def revoke_selected(self, request, queryset):
        for client in queryset:
            services.revoke_api_key(client)
        self.message_user(request, f"{queryset.count()} key(s) revoked.", messages.SUCCESS)

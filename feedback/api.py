"""The ingestion API under /api/v1/: generations, votes (also from end users of product apps),
bulk imports and dataset snapshots.

Every call acts in one project: the API key's. Generations and votes are the product API: keys
only (scopes `generations:write`, `votes:write`); imports and snapshots also accept a signed-in
project admin's browser session (with CSRF). Another project's ids answer exactly like missing ones.
"""

from __future__ import annotations

import csv
import io
import json

from django.conf import settings
from django.http import HttpResponse
from django.urls import reverse
from django.utils.functional import cached_property
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.utils.mediatypes import media_type_matches
from rest_framework.views import APIView

from config.edge import FiniteFloatField, SafeJSONParser, database_id_field
from feedback import selectors, services
from feedback.content import ContentError, validate_completion, validate_prompt
from feedback.importers import FORMAT_CHOICES, ON_INVALID_CHOICES
from feedback.models import DatasetSnapshot, Generation, Job
from feedback.schema import PROMPT_SCHEMA
from feedback.services import jobs
from feedback.services.generations import GenerationInput
from feedback.uploads import ImportUploadHandler, SavedUpload, claim_upload
from projects import roles
from projects.authentication import ApiKeyAuthentication
from projects.permissions import is_key_caller, request_project, scope_required
from training.models import ModelVersion

MAX_BATCH = 1000
# The product API (generations, votes): API keys only. Admin endpoints (imports, snapshots): a key
# or a project admin's session.
PRODUCT_AUTHENTICATION = [ApiKeyAuthentication]
ADMIN_AUTHENTICATION = [ApiKeyAuthentication, SessionAuthentication]
# Fields that steer the annotation queue or attribute outputs: a key with the `import` scope only.
STEERING_FIELDS = ("votes_wanted", "model_version")
STEERING_SCOPE = "import"


@extend_schema_field(PROMPT_SCHEMA)
class PromptField(serializers.JSONField):
    """A plain string, or a non-empty list of chat messages {role, content}."""

    def to_internal_value(self, data):
        try:
            return validate_prompt(data)
        except ContentError as exc:
            raise serializers.ValidationError(exc.message if exc.field == "prompt" else str(exc)) from None


class GenerationInSerializer(serializers.Serializer):
    prompt = PromptField(help_text="A string, or a list of chat messages [{role, content}, ...].")
    completion = serializers.CharField(trim_whitespace=False)
    source = serializers.CharField(max_length=200, required=False, default="api")
    external_id = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)
    model_version = database_id_field(
        required=False,
        allow_null=True,
        help_text="Id of the project's model version that produced it. Needs a key with the `import` scope.",
    )
    votes_wanted = serializers.IntegerField(
        min_value=1,
        max_value=50,
        required=False,
        allow_null=True,
        help_text="Votes this item should get (default: the server's). Needs a key with the `import` scope.",
    )

    def validate(self, attrs):
        caller = self.context["request"].user
        steering = [name for name in STEERING_FIELDS if attrs.get(name) is not None]
        if steering and not caller.has_scope(STEERING_SCOPE):
            raise serializers.ValidationError(
                {name: f"needs a key with the {STEERING_SCOPE!r} scope (project admins)" for name in steering}
            )
        version_id = attrs.get("model_version")
        if version_id is not None:
            # Another project's version is answered like a missing one.
            if not ModelVersion.objects.filter(pk=version_id, project_id=caller.project_id).exists():
                raise serializers.ValidationError({"model_version": f"no model version {version_id} in this project"})
        return attrs

    def validate_completion(self, value):
        try:
            return validate_completion(value)
        except ContentError as exc:
            raise serializers.ValidationError(exc.message) from None

    def to_generation_input(self) -> GenerationInput:
        data = self.validated_data
        return _generation_input(data)


def _generation_input(data: dict) -> GenerationInput:
    return GenerationInput(
        prompt=data["prompt"],
        completion=data["completion"],
        source=data.get("source") or "api",
        external_id=data.get("external_id"),
        model_version_id=data.get("model_version"),
        votes_wanted=data.get("votes_wanted"),
    )


class GenerationOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prompt_id = serializers.IntegerField()
    external_id = serializers.CharField(allow_null=True)
    created = serializers.BooleanField(help_text="False when this prompt and completion were already known.")


def _generation_out(generation: Generation, created: bool) -> dict:
    return {
        "id": generation.pk,
        "prompt_id": generation.prompt_id,
        "external_id": generation.external_id,
        "created": created,
    }


class GenerationCreateView(APIView):
    authentication_classes = PRODUCT_AUTHENTICATION
    permission_classes = [scope_required("generations:write")]

    @extend_schema(
        operation_id="create_generation",
        summary="Create a generation (a completion for a prompt)",
        description="Idempotent: the same prompt and completion again returns the existing row (200, created=false).",
        request=GenerationInSerializer,
        responses={
            201: GenerationOutSerializer,
            200: GenerationOutSerializer,
            409: OpenApiResponse(
                OpenApiTypes.OBJECT, description="external_id already names another generation: {external_id: [...]}"
            ),
        },
        examples=[
            OpenApiExample(
                "chat prompt",
                request_only=True,
                value={
                    "prompt": [{"role": "user", "content": "What is 12+7?"}],
                    "completion": "19",
                    "external_id": "app-123",
                },
            ),
            OpenApiExample(
                "created",
                response_only=True,
                status_codes=["201"],
                value={"id": 42, "prompt_id": 7, "external_id": "app-123", "created": True},
            ),
            OpenApiExample(
                "already there",
                response_only=True,
                status_codes=["200"],
                value={"id": 42, "prompt_id": 7, "external_id": "app-123", "created": False},
            ),
        ],
        tags=["feedback"],
    )
    def post(self, request):
        payload = GenerationInSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        try:
            generation, created = services.create_generation(payload.to_generation_input(), request_project(request))
        except services.GenerationConflict as exc:
            return Response({"external_id": [str(exc)]}, status=status.HTTP_409_CONFLICT)
        return Response(
            _generation_out(generation, created), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class GenerationBatchInSerializer(serializers.Serializer):
    generations = GenerationInSerializer(many=True, allow_empty=False, max_length=MAX_BATCH)


class GenerationBatchOutSerializer(serializers.Serializer):
    generations = GenerationOutSerializer(many=True)


class GenerationBatchView(APIView):
    authentication_classes = PRODUCT_AUTHENTICATION
    permission_classes = [scope_required("generations:write")]

    @extend_schema(
        operation_id="create_generations_batch",
        summary=f"Create up to {MAX_BATCH} generations at once (all or nothing)",
        description="Errors name the item by its index in `generations` and the field; nothing is saved then.",
        request=GenerationBatchInSerializer,
        responses={
            201: GenerationBatchOutSerializer,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="An external_id conflict: {generations: [...]}"),
        },
        tags=["feedback"],
    )
    def post(self, request):
        payload = GenerationBatchInSerializer(data=request.data, context={"request": request})
        payload.is_valid(raise_exception=True)
        items = [_generation_input(item) for item in payload.validated_data["generations"]]
        try:
            results = services.create_generations(items, request_project(request))
        except services.GenerationConflict as exc:
            return Response({"generations": [str(exc)]}, status=status.HTTP_409_CONFLICT)
        return Response(
            {"generations": [_generation_out(generation, created) for generation, created in results]},
            status=status.HTTP_201_CREATED,
        )


class VoteInSerializer(serializers.Serializer):
    generation_id = database_id_field(required=False)
    generation_external_id = serializers.CharField(max_length=200, required=False)
    desirable = serializers.BooleanField(help_text="true = thumbs up, false = thumbs down.")
    external_user_id = serializers.CharField(
        max_length=200,
        required=False,
        help_text="The end user of your product app who gave the thumbs (yours only: another key's user of the "
        "same id is another person); omit to vote as the key itself.",
    )
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)

    @cached_property
    def fields(self):
        # DRF deep-copies the declared fields for every serializer instance, which was the largest
        # part of this endpoint's CPU time (one request per end-user click). These fields keep no
        # per-request state (no context, no partial updates, no nested serializers), so one bound
        # copy, built on first use, is shared by every instance.
        cls = type(self)
        if "_shared_fields" not in cls.__dict__:
            cls._shared_fields = super().fields
        return cls._shared_fields

    def validate(self, attrs):
        if ("generation_id" in attrs) == ("generation_external_id" in attrs):
            raise serializers.ValidationError("give exactly one of generation_id and generation_external_id")
        return attrs


class VoteOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    generation_id = serializers.IntegerField()
    desirable = serializers.BooleanField()
    created = serializers.BooleanField(help_text="False when this voter had already voted: the first vote stands.")


class JSONOnlyNegotiation(BaseContentNegotiation):
    """The endpoint speaks JSON only: no Accept header to parse on every click."""

    def select_parser(self, request, parsers):
        # A body in another media type (text/plain included) is refused with 415, never parsed.
        content_type = request.content_type or ""
        for parser in parsers:
            if media_type_matches(parser.media_type, content_type):
                return parser
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class VoteView(APIView):
    """POST /api/v1/votes/: the busiest endpoint, one request per end-user click.

    Kept lean where it costs: the key check is one indexed query (ApiKeyAuthentication), JSON is
    the only parser and renderer (no negotiation), and the write is one INSERT … SELECT that also
    checks the generation is the key's project's (services.record_vote).
    """

    authentication_classes = PRODUCT_AUTHENTICATION
    permission_classes = [scope_required("votes:write")]
    parser_classes = [SafeJSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JSONOnlyNegotiation

    @extend_schema(
        operation_id="record_vote",
        summary="Record a thumbs up/down on a generation",
        description=(
            "One vote per voter per generation: repeating it changes nothing (200, created=false) and answers "
            "with this voter's own vote. The voter is `external_user_id` of this key when given (an end user of "
            "your product app), else the key itself. Needs the `votes:write` scope."
        ),
        request=VoteInSerializer,
        responses={
            201: VoteOutSerializer,
            200: VoteOutSerializer,
            404: OpenApiResponse(
                OpenApiTypes.OBJECT,
                description="No such generation in this project: {generation_id: [...]} or "
                "{generation_external_id: [...]}",
            ),
        },
        examples=[
            OpenApiExample(
                "end-user thumbs",
                request_only=True,
                value={"generation_id": 42, "desirable": True, "external_user_id": "user-9"},
            ),
            OpenApiExample(
                "recorded",
                response_only=True,
                status_codes=["201"],
                value={"id": 1001, "generation_id": 42, "desirable": True, "created": True},
            ),
        ],
        tags=["feedback"],
    )
    def post(self, request):
        payload = VoteInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        caller = request.user
        generation_id = data.get("generation_id")
        if generation_id is None:
            generation_id = (
                Generation.objects.filter(project_id=caller.project_id, external_id=data["generation_external_id"])
                .values_list("id", flat=True)
                .first()
            )
            if generation_id is None:
                return Response(
                    {"generation_external_id": [f"no generation has external_id {data['generation_external_id']!r}"]},
                    status=status.HTTP_404_NOT_FOUND,
                )
        try:
            vote, created = services.record_vote(
                project_id=caller.project_id,
                generation_id=generation_id,
                desirable=data["desirable"],
                api_client_id=caller.client_id,
                external_user_id=data.get("external_user_id") or None,
                comment=data["comment"],
                source="api",
            )
        except services.GenerationNotFound:
            return Response(
                {"generation_id": [f"generation {generation_id} does not exist"]}, status=status.HTTP_404_NOT_FOUND
            )
        body = {"id": vote.pk, "generation_id": generation_id, "desirable": vote.desirable, "created": created}
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ImportInSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="A UTF-8 JSONL file (streamed to disk; PROSPECT_IMPORT_MAX_UPLOAD_BYTES at most)."
    )
    format = serializers.ChoiceField(choices=FORMAT_CHOICES, default="auto")
    threshold = FiniteFloatField(required=False, allow_null=True, default=None)
    weight_by_distance = serializers.BooleanField(required=False, default=False)
    one_y_per_x = serializers.BooleanField(
        required=False, default=False, help_text="Pairs: keep only one of chosen/rejected, at random (seeded)."
    )
    on_invalid = serializers.ChoiceField(
        choices=ON_INVALID_CHOICES,
        default="fail",
        help_text="fail: the first bad line rejects the whole file (nothing imported); skip: import every valid "
        "line (or side of a pair), list each skipped one with its reason (the job's `skipped_url`).",
    )


class JobErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(allow_null=True, help_text="Line of the file (imports), when there is one.")
    field = serializers.CharField(allow_null=True)
    detail = serializers.CharField()


class JobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=Job.Kind.choices)
    status = serializers.ChoiceField(
        choices=Job.Status.choices, help_text="queued → running → succeeded or failed (the source of truth)."
    )
    progress = serializers.FloatField(help_text="0 to 1: the share of the file read, or of the votes frozen.")
    result = serializers.DictField(
        allow_null=True,
        help_text="Succeeded: the summary (an import's counts with `import_id`, or the snapshot's fields).",
    )
    errors = JobErrorSerializer(many=True, help_text="Failed: why, naming the line and the field.")
    status_url = serializers.CharField(help_text="GET it until `status` is succeeded or failed.")
    skipped_url = serializers.CharField(
        allow_null=True, help_text="Imports with on_invalid=skip that skipped lines: the list as JSONL (or .csv)."
    )
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


def job_body(request, job: Job) -> dict:
    status_url = request.build_absolute_uri(reverse("feedback-api:job", args=[job.pk]))
    skipped = job.status == Job.Status.SUCCEEDED and (job.result or {}).get("skipped")
    return {
        "id": job.pk,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "result": job.result,
        "errors": job.errors,
        "status_url": status_url,
        "skipped_url": request.build_absolute_uri(reverse("feedback-api:job-skipped", args=[job.pk]))
        if skipped
        else None,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def accepted(request, job: Job) -> Response:
    """202 with the job and where to follow it (also in Location)."""
    body = job_body(request, job)
    return Response(JobSerializer(body).data, status=status.HTTP_202_ACCEPTED, headers={"Location": body["status_url"]})


JOB_DESCRIPTION = (
    "The work runs in a worker, not in this request: the answer is `202 Accepted` with the job, whose "
    "`status_url` (also the `Location` header) tells its status, progress, result and errors."
)


class ImportView(APIView):
    authentication_classes = ADMIN_AUTHENTICATION
    permission_classes = [scope_required("import", or_project_perm=roles.IMPORT)]
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="import_feedback",
        summary="Bulk import a JSONL feedback file (a job: all or nothing, or skipping bad lines)",
        description=(
            "Formats: kto {prompt, completion, label}, paired {prompt, chosen, rejected}, "
            "hh {chosen, rejected} (Anthropic HH transcripts), scored {prompt, completion, score} with a threshold. "
            "With on_invalid=fail (the default) a bad line fails the job (its errors name the line and the field) "
            "and nothing is saved. " + JOB_DESCRIPTION + " A key with the `import` scope, or a project admin's session."
        ),
        request={"multipart/form-data": ImportInSerializer},
        responses={202: JobSerializer},
        tags=["feedback"],
    )
    def post(self, request):
        # Files go to disk chunk by chunk under the size cap (feedback/uploads.py).
        request.upload_handlers = [ImportUploadHandler(request)]
        payload = ImportInSerializer(data=request.data)
        uploads = [upload for upload in request.FILES.values() if isinstance(upload, SavedUpload)]
        if not payload.is_valid():
            for upload in uploads:
                upload.discard()
            raise serializers.ValidationError(payload.errors)
        data = payload.validated_data
        for other in uploads:
            if other is not data["file"]:
                other.discard()
        upload = claim_upload(data["file"])
        upload.close()
        job = jobs.create_import_job(
            project=request_project(request),
            upload_path=upload.saved_path,
            filename=upload.name,
            upload_bytes=upload.size,
            fmt=data["format"],
            threshold=data["threshold"],
            weight_by_distance=data["weight_by_distance"],
            one_y_per_x=data["one_y_per_x"],
            on_invalid=data["on_invalid"],
            user=None if is_key_caller(request) else request.user,
            api_client_id=request.user.client_id if is_key_caller(request) else None,
        )
        return accepted(request, job)


class SnapshotInSerializer(serializers.Serializer):
    holdout = FiniteFloatField(min_value=0, max_value=0.9, required=False)
    target_ratio = FiniteFloatField(min_value=0.01, max_value=100, required=False)
    mode = serializers.ChoiceField(choices=["auto", "downside_first"], default="auto")
    manual_weights = serializers.ListField(
        child=FiniteFloatField(min_value=0.001, max_value=1000),
        min_length=2,
        max_length=2,
        required=False,
        help_text="[λ_D, λ_U] to override the automatic weights.",
    )
    seed = serializers.IntegerField(default=0, min_value=0, max_value=2**32 - 1)


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = [
            "id",
            "sha256",
            "path",
            "n_desirable",
            "n_undesirable",
            "desirable_weight",
            "undesirable_weight",
            "weight_rule",
            "n_train",
            "n_holdout",
            "n_ties_dropped",
            "n_votes",
            "last_vote_id",
            "params",
            "created_at",
        ]


class SnapshotListCreateView(APIView):
    authentication_classes = ADMIN_AUTHENTICATION

    def get_permissions(self):
        if self.request.method == "GET":
            return [scope_required("read", or_project_perm=roles.VIEW_DASHBOARD)()]
        return [scope_required("import", or_project_perm=roles.SNAPSHOT)()]

    @extend_schema(
        operation_id="list_snapshots",
        summary="List dataset snapshots, newest first",
        responses={200: SnapshotSerializer(many=True)},
        tags=["snapshots"],
    )
    def get(self, request):
        snapshots = DatasetSnapshot.objects.filter(project=request_project(request)).order_by("-id")[:100]
        return Response(SnapshotSerializer(snapshots, many=True).data)

    @extend_schema(
        operation_id="create_snapshot",
        summary="Freeze the current votes into a balanced KTO dataset snapshot (a job)",
        description=JOB_DESCRIPTION
        + " A job that cannot make a trainable dataset (no votes, a single class) fails with the reason.",
        request=SnapshotInSerializer,
        responses={202: JobSerializer},
        tags=["snapshots"],
    )
    def post(self, request):
        payload = SnapshotInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        job = jobs.create_snapshot_job(
            project=request_project(request),
            holdout=data.get("holdout", settings.SNAPSHOT_HOLDOUT),
            target_ratio=data.get("target_ratio", settings.KTO_TARGET_RATIO),
            mode=data["mode"],
            manual_weights=tuple(data["manual_weights"]) if data.get("manual_weights") else None,
            seed=data["seed"],
            user=None if is_key_caller(request) else request.user,
            api_client_id=request.user.client_id if is_key_caller(request) else None,
        )
        return accepted(request, job)


def _project_job(request, job_id: int) -> Job:
    """The caller's project's job, or 404 (another project's job answers like a missing one)."""
    job = selectors.project_job(request_project(request), job_id)
    if job is None:
        raise NotFound(f"no job {job_id} in this project")
    return job


class JobView(APIView):
    authentication_classes = ADMIN_AUTHENTICATION
    permission_classes = [scope_required("import", or_project_perm=roles.VIEW_DASHBOARD)]

    @extend_schema(
        operation_id="get_job",
        summary="Status, progress, result and errors of an import or snapshot job",
        responses={200: JobSerializer},
        tags=["jobs"],
    )
    def get(self, request, job_id: int):
        return Response(JobSerializer(job_body(request, _project_job(request, job_id))).data)


class AnyAcceptNegotiation(JSONOnlyNegotiation):
    """The download answers its own media type whatever Accept says; errors are JSON."""


class JobSkippedView(APIView):
    """GET the lines an import with on_invalid=skip left out, as JSONL (this view) or CSV (below)."""

    authentication_classes = ADMIN_AUTHENTICATION
    permission_classes = [scope_required("import", or_project_perm=roles.VIEW_DASHBOARD)]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = AnyAcceptNegotiation
    extension = "jsonl"

    @extend_schema(
        operation_id="get_job_skipped_lines",
        summary="The lines an import with on_invalid=skip left out, one {line, field, reason} object a line",
        responses={(200, "application/x-ndjson"): OpenApiTypes.STR},
        tags=["jobs"],
    )
    def get(self, request, job_id: int):
        job = _project_job(request, job_id)
        batch = job.import_batch
        if batch is None or not batch.skipped_report:
            raise NotFound(f"job {job.pk} skipped no lines")
        rows = selectors.skipped_lines(batch)
        if self.extension == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=["line", "field", "reason"])
            writer.writeheader()
            writer.writerows(rows)
            body, content_type = out.getvalue(), "text/csv; charset=utf-8"
        else:
            body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            content_type = "application/x-ndjson; charset=utf-8"
        name = f"import-{batch.pk}-skipped.{self.extension}"
        return HttpResponse(
            body, content_type=content_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )


class JobSkippedCsvView(JobSkippedView):
    extension = "csv"

    @extend_schema(
        operation_id="get_job_skipped_lines_csv",
        summary="The lines an import with on_invalid=skip left out, as CSV (line, field, reason)",
        responses={(200, "text/csv"): OpenApiTypes.STR},
        tags=["jobs"],
    )
    def get(self, request, job_id: int):
        return super().get(request, job_id)

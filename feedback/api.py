"""The ingestion API under /api/v1/: generations, votes (also from end users of product apps),
bulk imports and dataset snapshots. Token auth (or a browser session with CSRF); every write of
the API needs an authenticated caller, imports and snapshots need a staff account."""
from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.utils.json import strict_constant
from rest_framework.views import APIView

from feedback import services
from feedback.authentication import CachedTokenAuthentication, token_voter_id
from feedback.content import ContentError, validate_completion, validate_prompt
from feedback.importers import FORMAT_CHOICES, ImportRejected
from feedback.models import DatasetSnapshot, Generation
from feedback.services.generations import GenerationInput
from feedback.services.votes import GenerationNotFound, insert_vote, insert_vote_if_token_valid
from training.models import ModelVersion

MAX_BATCH = 1000
# Every feedback endpoint: a token (checked on every request, see feedback.authentication) or a session.
AUTHENTICATION = [CachedTokenAuthentication, SessionAuthentication]


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
    model_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all(), required=False, allow_null=True)
    votes_wanted = serializers.IntegerField(
        min_value=1, max_value=50, required=False, allow_null=True, help_text="Votes this item should get (default: the server's)."
    )

    def validate_completion(self, value):
        try:
            return validate_completion(value)
        except ContentError as exc:
            raise serializers.ValidationError(exc.message) from None

    def to_generation_input(self) -> GenerationInput:
        data = self.validated_data
        return _generation_input(data)


def _generation_input(data: dict) -> GenerationInput:
    version = data.get("model_version")
    return GenerationInput(
        prompt=data["prompt"],
        completion=data["completion"],
        source=data.get("source") or "api",
        external_id=data.get("external_id"),
        model_version_id=version.pk if version else None,
        votes_wanted=data.get("votes_wanted"),
    )


class GenerationOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    prompt_id = serializers.IntegerField()
    external_id = serializers.CharField(allow_null=True)
    created = serializers.BooleanField(help_text="False when this prompt and completion were already known.")


def _generation_out(generation: Generation, created: bool) -> dict:
    return {"id": generation.pk, "prompt_id": generation.prompt_id, "external_id": generation.external_id, "created": created}


class GenerationCreateView(APIView):
    authentication_classes = AUTHENTICATION
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="create_generation",
        summary="Create a generation (a completion for a prompt)",
        description="Idempotent: the same prompt and completion again returns the existing row (200, created=false).",
        request=GenerationInSerializer,
        responses={201: GenerationOutSerializer, 200: GenerationOutSerializer},
        examples=[
            OpenApiExample("chat prompt", request_only=True, value={
                "prompt": [{"role": "user", "content": "What is 12+7?"}], "completion": "19", "external_id": "app-123"}),
            OpenApiExample("created", response_only=True, status_codes=["201"],
                           value={"id": 42, "prompt_id": 7, "external_id": "app-123", "created": True}),
            OpenApiExample("already there", response_only=True, status_codes=["200"],
                           value={"id": 42, "prompt_id": 7, "external_id": "app-123", "created": False}),
        ],
        tags=["feedback"],
    )
    def post(self, request):
        payload = GenerationInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            generation, created = services.create_generation(payload.to_generation_input())
        except services.GenerationConflict as exc:
            return Response({"external_id": [str(exc)]}, status=status.HTTP_409_CONFLICT)
        return Response(_generation_out(generation, created), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class GenerationBatchInSerializer(serializers.Serializer):
    generations = GenerationInSerializer(many=True, allow_empty=False, max_length=MAX_BATCH)


class GenerationBatchOutSerializer(serializers.Serializer):
    generations = GenerationOutSerializer(many=True)


class GenerationBatchView(APIView):
    authentication_classes = AUTHENTICATION
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="create_generations_batch",
        summary=f"Create up to {MAX_BATCH} generations at once (all or nothing)",
        description="Errors name the item by its index in `generations` and the field; nothing is saved then.",
        request=GenerationBatchInSerializer,
        responses={201: GenerationBatchOutSerializer},
        tags=["feedback"],
    )
    def post(self, request):
        payload = GenerationBatchInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        items = [_generation_input(item) for item in payload.validated_data["generations"]]
        try:
            results = services.create_generations(items)
        except services.GenerationConflict as exc:
            return Response({"generations": [str(exc)]}, status=status.HTTP_409_CONFLICT)
        return Response(
            {"generations": [_generation_out(generation, created) for generation, created in results]},
            status=status.HTTP_201_CREATED,
        )


class VoteInSerializer(serializers.Serializer):
    generation_id = serializers.IntegerField(min_value=1, required=False)
    generation_external_id = serializers.CharField(max_length=200, required=False)
    desirable = serializers.BooleanField(help_text="true = thumbs up, false = thumbs down.")
    external_user_id = serializers.CharField(
        max_length=200, required=False, help_text="The end user of your product app who gave the thumbs; omit to vote as yourself."
    )
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)

    def validate(self, attrs):
        if ("generation_id" in attrs) == ("generation_external_id" in attrs):
            raise serializers.ValidationError("give exactly one of generation_id and generation_external_id")
        return attrs


class VoteOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    generation_id = serializers.IntegerField()
    desirable = serializers.BooleanField()
    created = serializers.BooleanField(help_text="False when this voter had already voted: the first vote stands.")


def parse_vote_payload(data) -> dict:
    """Validate a vote body by hand: the same rules as VoteInSerializer, at a fraction of the cost.

    This endpoint takes one request per end-user click, and a DRF serializer (which deep-copies
    its fields on every instantiation) was a fifth of its CPU time. VoteInSerializer stays the
    documented schema; tests hold both to the same answers.
    """
    if not isinstance(data, dict):
        raise serializers.ValidationError({"non_field_errors": ["expected a JSON object"]})
    errors: dict[str, list[str]] = {}
    cleaned: dict = {}
    generation_id = data.get("generation_id")
    if generation_id is not None:
        if isinstance(generation_id, bool) or not isinstance(generation_id, int) or generation_id < 1:
            errors["generation_id"] = ["a positive integer is required"]
        cleaned["generation_id"] = generation_id
    external_generation = data.get("generation_external_id")
    if external_generation is not None:
        if not isinstance(external_generation, str) or not external_generation or len(external_generation) > 200:
            errors["generation_external_id"] = ["a non-empty string of at most 200 characters is required"]
        cleaned["generation_external_id"] = external_generation
    desirable = data.get("desirable")
    if not isinstance(desirable, bool):
        errors["desirable"] = ["this field is required and must be true or false" if desirable is None else "must be true or false"]
    cleaned["desirable"] = desirable
    external_user_id = data.get("external_user_id")
    if external_user_id is not None:
        if not isinstance(external_user_id, str) or not external_user_id or len(external_user_id) > 200:
            errors["external_user_id"] = ["a non-empty string of at most 200 characters is required"]
    cleaned["external_user_id"] = external_user_id
    comment = data.get("comment", "")
    if not isinstance(comment, str) or len(comment) > 5000:
        errors["comment"] = ["a string of at most 5000 characters is required"]
    cleaned["comment"] = comment if isinstance(comment, str) else ""
    if not errors and ("generation_id" in cleaned) == ("generation_external_id" in cleaned):
        errors["non_field_errors"] = ["give exactly one of generation_id and generation_external_id"]
    if errors:
        raise serializers.ValidationError(errors)
    return cleaned


class VoteEndpointSchema(APIView):
    """What /api/v1/votes/ looks like in /api/schema/; requests are served by `record_vote` below.

    drf-spectacular documents only DRF views. `record_vote` carries this class as its `cls`
    attribute (as `APIView.as_view()` callbacks do), so the schema generator reads the
    authentication, request and responses from here, unchanged from when a DRF view served it.
    """

    authentication_classes = AUTHENTICATION
    permission_classes = [IsAuthenticated]
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    @extend_schema(
        operation_id="record_vote",
        summary="Record a thumbs up/down on a generation",
        description=(
            "One vote per voter per generation: repeating it changes nothing (200, created=false). "
            "The voter is `external_user_id` when given (an end user of a product app), else the caller."
        ),
        request=VoteInSerializer,
        responses={201: VoteOutSerializer, 200: VoteOutSerializer},
        examples=[
            OpenApiExample("end-user thumbs", request_only=True,
                           value={"generation_id": 42, "desirable": True, "external_user_id": "user-9"}),
            OpenApiExample("recorded", response_only=True, status_codes=["201"],
                           value={"id": 1001, "generation_id": 42, "desirable": True, "created": True}),
        ],
        tags=["feedback"],
    )
    def post(self, request):
        # Never routed (see the class docstring); kept callable so the class stays a real view.
        return record_vote(request._request)


class _TokenKeyAuthentication(TokenAuthentication):
    """DRF's parsing of `Authorization: Token <key>` and its messages for a malformed header;
    returns the key unchecked: the caller checks it (token_voter_id, or inside the vote's INSERT)."""

    def authenticate_credentials(self, key):
        return key, None


_token_key_authentication = _TokenKeyAuthentication()
_session_authentication = SessionAuthentication()


def _json_response(payload, status_code: int, **headers) -> HttpResponse:
    # Rendered as DRF's JSONRenderer does (compact, UTF-8, no NaN), without its negotiation.
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return HttpResponse(body, status=status_code, content_type="application/json", headers=headers or None)


def _error_response(exc: exceptions.APIException) -> HttpResponse:
    detail = exc.detail if isinstance(exc.detail, (dict, list)) else {"detail": exc.detail}
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        # As DRF answers when the first authenticator is the token one: 401 with a challenge.
        return _json_response(detail, 401, **{"WWW-Authenticate": _token_key_authentication.authenticate_header(None)})
    return _json_response(detail, exc.status_code)


def _session_caller_id(request) -> int:
    """A request without a token: a logged-in, active session user who passes Django's CSRF check
    (the view is csrf_exempt only because token requests carry no cookie), as DRF's
    SessionAuthentication; else 401 as DRF with AUTHENTICATION."""
    user = getattr(request, "user", None)
    if user is None or not user.is_active:
        raise exceptions.NotAuthenticated()
    _session_authentication.enforce_csrf(request)  # raises PermissionDenied("CSRF Failed: ...")
    return user.pk


def _parse_json_body(request):
    body = request.body
    if not body:
        return {}  # as DRF: an empty body is an empty object, then fails validation by field
    try:
        return json.loads(body.decode(request.encoding or settings.DEFAULT_CHARSET), parse_constant=strict_constant)
    except ValueError as exc:
        raise exceptions.ParseError(f"JSON parse error - {exc}") from None


def _vote_response(vote_id: int, generation_id: int, desirable: bool, created: bool) -> HttpResponse:
    return _json_response(
        {"id": vote_id, "generation_id": generation_id, "desirable": desirable, "created": created}, 201 if created else 200)


def _generation_not_found(generation_id) -> HttpResponse:
    return _json_response({"generation_id": [f"generation {generation_id} does not exist"]}, 404)


@csrf_exempt
def record_vote(request):
    """POST /api/v1/votes/: the busiest endpoint, one request per end-user click.

    A plain Django view rather than a DRF APIView: DRF's request wrapping, negotiation, lazy
    authentication and response rendering were half of this endpoint's CPU time, which set its
    throughput. It keeps DRF's contract (see VoteEndpointSchema): token, or session + CSRF,
    authentication with DRF's messages and precedence (no answer but 401 before the caller is
    known), the same validation and error bodies naming fields, JSON in and out.

    The common case (a token, a valid body naming generation_id) checks the token inside the
    INSERT itself (services.votes.insert_vote_if_token_valid): nothing is written unless the
    token is valid at that instant. Every other path checks the token first, on its own.
    """
    try:
        token = _token_key_authentication.authenticate(request)  # None: no token; raises on a malformed header
        token_key = token[0] if token is not None else None
        caller_id = _session_caller_id(request) if token_key is None else None
        if request.method != "POST":
            raise exceptions.MethodNotAllowed(request.method)
        try:
            data = parse_vote_payload(_parse_json_body(request))
        except exceptions.APIException:
            if token_key is not None:
                token_voter_id(token_key)  # an invalid token is 401 whatever the body
            raise
        generation_id = data.get("generation_id")
        external_user_id = data["external_user_id"]
        if token_key is not None and generation_id is not None:
            vote_id = insert_vote_if_token_valid(
                token_key=token_key, generation_id=generation_id, desirable=data["desirable"],
                external_user_id=external_user_id, comment=data["comment"], source="api",
            )
            if vote_id is not None:
                return _vote_response(vote_id, generation_id, data["desirable"], True)
            # Nothing inserted: a token no longer valid (401 just below), or most likely a repeated
            # vote, which the general path answers with the standing vote.
        if token_key is not None:
            caller_id = token_voter_id(token_key)
    except exceptions.APIException as exc:
        return _error_response(exc)
    except GenerationNotFound:
        return _generation_not_found(generation_id)
    if generation_id is None:
        generation_id = Generation.objects.filter(external_id=data["generation_external_id"]).values_list("id", flat=True).first()
        if generation_id is None:
            return _json_response(
                {"generation_external_id": [f"no generation has external_id {data['generation_external_id']!r}"]}, 404)
    try:
        vote_id, desirable, created = insert_vote(
            generation_id=generation_id,
            desirable=data["desirable"],
            **_voter(caller_id, external_user_id),
            comment=data["comment"],
            source="api",
        )
    except GenerationNotFound:
        return _generation_not_found(generation_id)
    return _vote_response(vote_id, generation_id, desirable, created)


def _voter(caller_id: int, external_user_id: str | None) -> dict:
    """The voter: the end user when the caller names one, else the caller."""
    return {"external_user_id": external_user_id} if external_user_id else {"annotator_id": caller_id}


# drf-spectacular finds views by this attribute (see VoteEndpointSchema).
record_vote.cls = VoteEndpointSchema
record_vote.initkwargs = {}


class ImportInSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="A UTF-8 JSONL file.")
    format = serializers.CharField(default="auto", help_text=f"One of {', '.join(FORMAT_CHOICES)}.")
    threshold = serializers.FloatField(required=False, allow_null=True, default=None)
    weight_by_distance = serializers.BooleanField(required=False, default=False)
    one_y_per_x = serializers.BooleanField(
        required=False, default=False, help_text="Pairs: keep only one of chosen/rejected, at random (seeded)."
    )


class ImportOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    sha256 = serializers.CharField()
    format = serializers.CharField()
    lines = serializers.IntegerField()
    prompts_created = serializers.IntegerField()
    generations_created = serializers.IntegerField()
    votes_created = serializers.IntegerField()
    votes_existing = serializers.IntegerField()
    dropped_at_threshold = serializers.IntegerField()


class ImportView(APIView):
    authentication_classes = AUTHENTICATION
    permission_classes = [IsAdminUser]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="import_feedback",
        summary="Bulk import a JSONL feedback file (all or nothing)",
        description=(
            "Formats: kto {prompt, completion, label}, paired {prompt, chosen, rejected}, "
            "hh {chosen, rejected} (Anthropic HH transcripts), scored {prompt, completion, score} with a threshold. "
            "A bad line rejects the whole file (400 naming the line and the field) and saves nothing. Staff only."
        ),
        request={"multipart/form-data": ImportInSerializer},
        responses={201: ImportOutSerializer},
        tags=["feedback"],
    )
    def post(self, request):
        payload = ImportInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        upload = data["file"]
        try:
            batch = services.import_feedback(
                upload,
                filename=upload.name,
                fmt=data["format"],
                threshold=data["threshold"],
                weight_by_distance=data["weight_by_distance"],
                one_y_per_x=data["one_y_per_x"],
                user=request.user,
            )
        except ImportRejected as exc:
            return Response(
                {"detail": f"{exc}; nothing was imported", "line": exc.line, "field": exc.field},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response({"id": batch.pk, **batch.summary()}, status=status.HTTP_201_CREATED)


class SnapshotInSerializer(serializers.Serializer):
    holdout = serializers.FloatField(min_value=0, max_value=0.9, required=False)
    target_ratio = serializers.FloatField(min_value=0.01, required=False)
    mode = serializers.ChoiceField(choices=["auto", "downside_first"], default="auto")
    manual_weights = serializers.ListField(
        child=serializers.FloatField(),
        min_length=2, max_length=2, required=False, help_text="[λ_D, λ_U] to override the automatic weights.",
    )
    seed = serializers.IntegerField(default=0)


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetSnapshot
        fields = [
            "id", "sha256", "path", "n_desirable", "n_undesirable", "desirable_weight", "undesirable_weight",
            "weight_rule", "n_train", "n_holdout", "n_ties_dropped", "n_votes", "last_vote_id", "params", "created_at",
        ]


class SnapshotListCreateView(APIView):
    authentication_classes = AUTHENTICATION
    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="list_snapshots", summary="List dataset snapshots, newest first",
                   responses={200: SnapshotSerializer(many=True)}, tags=["snapshots"])
    def get(self, request):
        snapshots = DatasetSnapshot.objects.order_by("-id")[:100]
        return Response(SnapshotSerializer(snapshots, many=True).data)

    @extend_schema(
        operation_id="create_snapshot",
        summary="Freeze the current votes into a balanced KTO dataset snapshot",
        description="400 with the reason when the data cannot be trained on (no votes, a single class).",
        request=SnapshotInSerializer,
        responses={201: SnapshotSerializer},
        tags=["snapshots"],
    )
    def post(self, request):
        payload = SnapshotInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        try:
            snapshot = services.create_snapshot(
                holdout=data.get("holdout", settings.SNAPSHOT_HOLDOUT),
                target_ratio=data.get("target_ratio", settings.KTO_TARGET_RATIO),
                mode=data["mode"],
                manual_weights=tuple(data["manual_weights"]) if data.get("manual_weights") else None,
                seed=data["seed"],
            )
        except services.SnapshotRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)

"""The ingestion API under /api/v1/: generations, votes (also from end users of product apps),
bulk imports and dataset snapshots. Token auth (or a browser session with CSRF); every write of
the API needs an authenticated caller, imports and snapshots need a staff account."""
from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from feedback import services
from projects.authentication import ApiKeyAuthentication as CachedTokenAuthentication, ApiKeyAuthentication as VoterTokenAuthentication
from feedback.content import ContentError, validate_completion, validate_prompt
from feedback.importers import FORMAT_CHOICES, ImportRejected
from feedback.models import DatasetSnapshot, Generation
from feedback.services.generations import GenerationInput
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


class VoteView(APIView):
    """POST /api/v1/votes/: the busiest endpoint, one request per end-user click.

    Kept lean where it costs: the token check is one indexed query that yields only the caller's
    id (VoterTokenAuthentication), JSON is the only parser and renderer (no negotiation), and the
    write is one INSERT (services.record_vote).
    """

    authentication_classes = [VoterTokenAuthentication, SessionAuthentication]
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
        payload = VoteInSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        generation_id = data.get("generation_id")
        if generation_id is None:
            generation_id = Generation.objects.filter(external_id=data["generation_external_id"]).values_list(
                "id", flat=True).first()
            if generation_id is None:
                return Response({"generation_external_id": [
                    f"no generation has external_id {data['generation_external_id']!r}"]}, status=status.HTTP_404_NOT_FOUND)
        # The voter: the end user when the caller names one, else the caller.
        voter = ({"external_user_id": data["external_user_id"]} if data.get("external_user_id")
                 else {"annotator_id": request.user.pk})
        try:
            vote, created = services.record_vote(generation_id=generation_id, desirable=data["desirable"],
                                                 comment=data["comment"], source="api", **voter)
        except services.GenerationNotFound:
            return Response({"generation_id": [f"generation {generation_id} does not exist"]},
                            status=status.HTTP_404_NOT_FOUND)
        body = {"id": vote.pk, "generation_id": generation_id, "desirable": vote.desirable, "created": created}
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


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

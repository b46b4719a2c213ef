"""JSON API of the training app: call the deployed (active) model version.

The model runs in the serving process, not here: this view checks the caller's key and input, then
asks the serving process over HTTP (training.serving_client), so a web worker never loads torch.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.edge import ErrorSerializer, FiniteFloatField
from feedback.content import ContentError, validate_prompt
from feedback.schema import PROMPT_SCHEMA
from projects.authentication import ApiKeyAuthentication
from projects.permissions import request_project, scope_required
from training import serving_client
from training.serving_client import DEFAULT_MAX_NEW_TOKENS


@extend_schema_field(PROMPT_SCHEMA)
class PromptField(serializers.JSONField):
    """A plain string, or a non-empty list of chat messages {role, content}."""

    def to_internal_value(self, data):
        # The feedback app's validation: the same prompt rules (and hash) as every other entry point.
        try:
            return validate_prompt(data, field="prompt")
        except ContentError as exc:
            raise serializers.ValidationError(str(exc)) from None


class GenerateRequestSerializer(serializers.Serializer):
    prompt = PromptField(help_text="A string, or a list of chat messages [{role, content}, ...].")
    max_new_tokens = serializers.IntegerField(
        required=False, default=DEFAULT_MAX_NEW_TOKENS, min_value=1, max_value=1024
    )
    temperature = FiniteFloatField(
        required=False, default=0.0, min_value=0.0, max_value=5.0, help_text="0 = greedy decoding."
    )
    user = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Your end user's id, the same you send as external_user_id with their thumbs: during a "
        "canary one end user always gets the same model version, and their thumbs count for it.",
    )


class GenerateResponseSerializer(serializers.Serializer):
    generation_id = serializers.IntegerField(help_text="Send the end user's thumbs for this id to the vote endpoint.")
    completion = serializers.CharField()
    model_version = serializers.CharField(
        help_text="Name of the model version that produced the completion (a candidate during its canary)."
    )
    model_version_id = serializers.IntegerField()


class GenerateView(APIView):
    # The product API: API keys with the `generate` scope; the key's project's active version answers.
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [scope_required("generate")]

    @extend_schema(
        operation_id="generate",
        summary="Generate a completion from the active model version",
        description=(
            "Runs the key's project's active model version on the prompt and stores the result as a generation, so "
            "the product app can later record the end user's thumbs up/down for `generation_id`. "
            "Answers 503 while no version is active, 502 when the model produced an empty completion."
        ),
        request=GenerateRequestSerializer,
        responses={
            200: GenerateResponseSerializer,
            502: OpenApiResponse(ErrorSerializer, description="The model produced an empty completion."),
            503: OpenApiResponse(ErrorSerializer, description="No model version of the project is active."),
        },
        examples=[
            OpenApiExample("plain prompt", request_only=True, value={"prompt": "What is 12+7?", "max_new_tokens": 16}),
            OpenApiExample(
                "completion",
                response_only=True,
                status_codes=["200"],
                value={"generation_id": 42, "completion": "19", "model_version": "run-3", "model_version_id": 4},
            ),
        ],
        tags=["generate"],
    )
    def post(self, request):
        payload = GenerateRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            generated = serving_client.generate(
                project_id=request_project(request).pk,
                prompt=payload.validated_data["prompt"],
                source="api",
                routing_key=payload.validated_data.get("user") or None,
                max_new_tokens=payload.validated_data["max_new_tokens"],
                temperature=payload.validated_data["temperature"],
            )
        except serving_client.ServingUnavailable as exc:
            return Response(
                {"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"}
            )
        except serving_client.ServingError as exc:
            # 503: no version is active; 502: the model produced an empty completion (nothing to
            # store or rate; the caller may retry with sampling, temperature > 0).
            code = exc.status if exc.status in (502, 503) else status.HTTP_502_BAD_GATEWAY
            return Response({"detail": exc.detail}, status=code)
        return Response(GenerateResponseSerializer(generated).data)

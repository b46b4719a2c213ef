"""OpenAPI description of the API-key authentication (drf-spectacular extension)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "projects.authentication.ApiKeyAuthentication"
    name = "projectApiKey"
    priority = 1

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "A project API key: `Api-Key <key>` (also accepted: `Bearer <key>`). "
            "Create one with `manage.py create_api_key` or on the project's Keys page.",
        }


# A prompt in the OpenAPI schema: what feedback.content.validate_prompt accepts.
PROMPT_SCHEMA = {
    "oneOf": [
        {"type": "string", "minLength": 1, "example": "What is 12+7?"},
        {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                    "content": {"type": "string"},
                },
            },
        },
    ]
}

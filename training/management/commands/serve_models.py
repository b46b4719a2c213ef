"""`python manage.py serve_models`: the serving process (models, the OpenAI-compatible API).

Holds each project's model versions (the active one, and a candidate when a canary routes a share
to it), follows promotions and rollbacks without a restart, and answers the web app's generate
calls and the `/v1/` API (see training/openai_api.py). With PROSPECT_SERVING=vllm it drives a vLLM
server instead of loading weights itself (training/vllm_backend.py).
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from training.serving_http import serve


class Command(BaseCommand):
    help = "Serve model versions over HTTP (OpenAI-compatible /v1/ API; the web app's generate calls)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8001, help="Port to listen on (default 8001).")

    def handle(self, *args, **options):
        self.stdout.write(
            f"serving models ({settings.PROSPECT_SERVING}: {settings.PROSPECT_INFERENCE_BACKEND}) "
            f"on http://{options['host']}:{options['port']}/v1/",
        )
        self.stdout.flush()
        serve(options["host"], options["port"])

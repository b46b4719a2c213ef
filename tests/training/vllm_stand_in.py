"""A STAND-IN for a vLLM OpenAI server, for machines without CUDA: NOT vLLM.

It implements only the endpoints Prospect's vLLM backend uses, with vLLM's request and response
shapes: GET /v1/models (the base model, and each loaded LoRA adapter with `parent` set),
POST /v1/load_lora_adapter and /v1/unload_lora_adapter (400 for a name already loaded, 404 for an
unknown one, as vLLM), POST /v1/completions and /v1/chat/completions (also `stream: true`), which
answer "<model>|<prompt>" instead of generating, so a test can tell which adapter answered. Plus
POST /stand-in/restart {"model": path}: what restarting `vllm serve <path>` does (new base, no
adapters). The real vLLM path runs in bench/serving_vllm_gpu.py on a GPU machine.

    python tests/training/vllm_stand_in.py --port 8100 --model /path/to/base
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class StandInVLLM:
    def __init__(self, model: str, host: str = "127.0.0.1", port: int = 0, served_name: str | None = None):
        self.root = model
        self.served_name = served_name or model
        self.adapters: dict[str, str] = {}  # lora_name -> lora_path
        self.requests: list[tuple[str, dict]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": stand_in.models()})
                elif self.path == "/health":
                    self._send(200, b"", "text/plain")
                else:
                    self._send(404, {"error": {"message": "not found", "type": "NotFoundError", "code": 404}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                stand_in.requests.append((self.path, body))
                status, answer = stand_in.answer(self.path, body)
                if isinstance(answer, list):  # server-sent events
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for event in answer:
                        self.wfile.write(f"data: {event}\n\n".encode())
                        self.wfile.flush()
                    self.close_connection = True
                else:
                    self._send(status, answer, "application/json" if isinstance(answer, dict) else "text/plain")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def models(self) -> list[dict]:
        entries = [{"id": self.served_name, "object": "model", "root": self.root, "parent": None}]
        entries += [
            {"id": name, "object": "model", "root": path, "parent": self.served_name}
            for name, path in self.adapters.items()
        ]
        return entries

    def answer(self, path: str, body: dict):
        if path == "/v1/load_lora_adapter":
            name, lora_path = body.get("lora_name"), body.get("lora_path")
            if name in self.adapters:
                return 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}}
            if not lora_path or not (Path(lora_path) / "adapter_config.json").is_file():
                return 400, {"error": {"message": f"No adapter found at {lora_path}"}}
            self.adapters[name] = lora_path
            return 200, f"Success: LoRA adapter '{name}' added successfully.".encode()
        if path == "/v1/unload_lora_adapter":
            name = body.get("lora_name")
            if self.adapters.pop(name, None) is None:
                return 404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}}
            return 200, f"Success: LoRA adapter '{name}' removed successfully.".encode()
        if path == "/stand-in/restart":
            self.root = self.served_name = body["model"]
            self.adapters.clear()
            return 200, {"restarted": self.root}
        if path in ("/v1/completions", "/v1/chat/completions"):
            model = body.get("model")
            if model != self.served_name and model not in self.adapters:
                return 404, {"error": {"message": f"The model `{model}` does not exist.", "code": 404}}
            prompt = body.get("prompt") if "prompt" in body else body["messages"][-1]["content"]
            text = f"{model}|{prompt}"
            chat = path.endswith("chat/completions")
            if body.get("stream"):
                pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
                events = [
                    json.dumps(
                        {"choices": [{"index": 0, "delta": {"content": p}} if chat else {"index": 0, "text": p}]}
                    )
                    for p in pieces
                ]
                return 200, events + ["[DONE]"]
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
            )
            return 200, {"id": "stand-in", "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": model, "choices": [{**choice, "finish_reason": "stop"}]}  # fmt: skip
        return 404, {"error": {"message": f"no endpoint {path}"}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model", required=True)
    options = parser.parse_args()
    stand_in = StandInVLLM(options.model, options.host, options.port)
    print(f"stand-in vLLM (not vLLM) on {stand_in.url}", flush=True)
    stand_in.server.serve_forever()

"""A judge server speaking the OpenAI chat completions protocol, standing in for an LLM.

It stands in for an LLM judge because no model hub or LLM API is reachable here: a real HTTP
server (the `openai` client talks to it exactly as to api.openai.com or a vLLM server) that judges
by a real rule — the demo task's program judge decides which answer is the right sum. It reads the
request and the two answers out of the prompt the LLM judge sent (the default template's layout),
and answers "A", "B" or "tie" (both right or both wrong).

garbage_every=k makes every k-th answer a sentence that is not A, B or tie, to exercise the
judge's unparseable count. It also checks the API key, so the policy's key variable is exercised.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from training.kto.demo import correct_answer

_LAYOUT = re.compile(r"Request:\n(?P<prompt>.*?)\n\nAnswer A:\n(?P<a>.*?)\n\nAnswer B:\n(?P<b>.*?)\n\nWhich", re.S)


def verdict(content: str) -> str:
    match = _LAYOUT.search(content)
    if match is None:
        return "I could not read the request."
    right = correct_answer(match["prompt"])
    a_right, b_right = match["a"].strip() == right, match["b"].strip() == right
    if a_right == b_right:
        return "tie"
    return "A" if a_right else "B"


class StandInJudge:
    def __init__(self, *, api_key: str, garbage_every: int = 0):
        self.api_key, self.garbage_every = api_key, garbage_every
        self.requests = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.headers.get("Authorization") != f"Bearer {judge.api_key}":
                    return self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with judge.lock:
                    judge.requests += 1
                    number = judge.requests
                content = payload["messages"][-1]["content"]
                if judge.garbage_every and number % judge.garbage_every == 0:
                    answer = "Both answers have their merits, it is hard to say."
                else:
                    answer = verdict(content)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{number}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": payload.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 0, "completion_tokens": 1, "total_tokens": 1},
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandInJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

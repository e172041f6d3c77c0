"""An OpenAI-compatible endpoint on 127.0.0.1 for tests (no network): a handler base class that
answers /v1/models and sends JSON, and `serve`, which runs a handler and yields its /v1 URL."""
import contextlib
import http.server
import json
import threading


class OpenAIStub(http.server.BaseHTTPRequestHandler):
    """Subclasses set `model_id` and write do_POST with `self.reply`."""
    model_id = "stub"

    def log_message(self, *a):
        pass

    def reply(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        assert self.path == "/v1/models"
        self.reply({"object": "list", "data": [{"id": self.model_id, "object": "model"}]})


@contextlib.contextmanager
def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()

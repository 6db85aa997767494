"""A local stand-in for Supabase Storage's REST API (storage-api): a real HTTP server that records every request.

Supabase Storage is a hosted service that cannot run here; this is the one edge where a fake is used,
and it answers the way storage-api's routes do (including its HTTP-400-with-the-real-code errors).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

KEY = "service-role-key-for-tests"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # as sent, still percent-encoded
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Scripted:
    status: int
    body: bytes
    content_type: str
    delay: float = 0.0


@dataclass
class FakeSupabaseStorage:
    """The parts of storage-api the worker and API use; errors go out as storage-api sends them."""

    size_limit: int | None = None
    requests: list[Recorded] = field(default_factory=list)
    objects: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    scripted: deque[Scripted] = field(default_factory=deque)
    url: str = ""

    def answer_next(self, status: int, body: dict[str, Any] | str, delay: float = 0.0) -> None:
        """Answer the next request with this, whatever it asks."""
        if isinstance(body, dict):
            self.scripted.append(Scripted(status, json.dumps(body).encode(), "application/json", delay))
        else:
            self.scripted.append(Scripted(status, body.encode(), "text/html", delay))

    def handle(self, request: Recorded) -> tuple[int, Any]:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {KEY}" or request.headers.get("apikey") != KEY:
            return _error("403", "Unauthorized", "invalid signature")
        route = unquote(urlsplit(request.path).path).removeprefix("/storage/v1")
        if request.method == "POST" and route.startswith("/object/sign/"):
            return self.sign(route.removeprefix("/object/sign/"), request.json())
        if request.method == "POST" and route.startswith("/object/"):
            return self.create(route.removeprefix("/object/"), request)
        if request.method == "DELETE" and route.startswith("/object/") and route.count("/") == 2:
            return self.delete_many(route.removeprefix("/object/"), request.json())
        return 404, {"statusCode": 404, "error": "Not Found", "message": f"Route {request.method}:{route}"}

    def create(self, key: str, request: Recorded) -> tuple[int, Any]:
        bucket, path = key.split("/", 1)
        if (bucket, path) in self.objects and request.headers.get("x-upsert") != "true":
            return _error("409", "Duplicate", "The resource already exists")
        if self.size_limit is not None and len(request.body) > self.size_limit:
            return _error("413", "Payload too large", "The object exceeded the maximum allowed size")
        self.objects[bucket, path] = (request.body, request.headers["content-type"])
        return 200, {"Key": key, "Id": "2eb16359-ecd4-4070-8eb1-8408baa42493"}

    def sign(self, key: str, body: Any) -> tuple[int, Any]:
        bucket, path = key.split("/", 1)
        if not isinstance(body.get("expiresIn"), int) or body["expiresIn"] < 1:
            return _error("400", "Bad Request", "body/expiresIn must be >= 1")
        if (bucket, path) not in self.objects:
            return _error("404", "not_found", "Object not found")
        return 200, {"signedURL": f"/object/sign/{key}?token=fake.jwt.token"}

    def delete_many(self, bucket: str, body: Any) -> tuple[int, Any]:
        deleted = [{"name": p, "bucket_id": bucket} for p in body["prefixes"] if (bucket, p) in self.objects]
        for item in deleted:
            del self.objects[bucket, item["name"]]
        return 200, deleted


def error_body(status: str, error: str, message: str) -> dict[str, str]:
    return {"statusCode": status, "error": error, "message": message}


def _error(status: str, error: str, message: str) -> tuple[int, Any]:
    # storage-api sends every non-500 error with HTTP 400 and the real code in the body.
    return (500 if status == "500" else 400), error_body(status, error, message)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the pooled client expects
    fake: FakeSupabaseStorage

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Recorded(self.command, self.path, headers, body)
        if self.fake.scripted:
            self.fake.requests.append(request)
            answer = self.fake.scripted.popleft()
            time.sleep(answer.delay)
            self._send(answer.status, answer.body, answer.content_type)
            return
        status, payload = self.fake.handle(request)
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up on a delayed answer is expected here


@contextmanager
def running_fake(size_limit: int | None = None) -> Iterator[FakeSupabaseStorage]:
    fake = FakeSupabaseStorage(size_limit=size_limit)
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = _Server(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""SupabaseStorage against a real local HTTP server that records each request and answers as Supabase does."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from jobs.storage import ObjectNotFound, ObjectTooLarge, StorageError, SupabaseStorage

KEY = "service-role-key-for-tests"
BUCKET = "sdxl_image_fast"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # not UTF-8: the body must pass untouched


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


def _body(status: str, error: str, message: str) -> dict[str, str]:
    return {"statusCode": status, "error": error, "message": message}


def _error(status: str, error: str, message: str) -> tuple[int, Any]:
    # storage-api sends every non-500 error with HTTP 400 and the real code in the body.
    return (500 if status == "500" else 400), _body(status, error, message)


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


@pytest.fixture
def fake() -> Iterator[FakeSupabaseStorage]:
    fake = FakeSupabaseStorage()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = _Server(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
async def storage(fake: FakeSupabaseStorage) -> AsyncIterator[SupabaseStorage]:
    async with SupabaseStorage(fake.url + "/", KEY) as storage:
        yield storage


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_upload_posts_the_raw_bytes_with_the_service_key(
    fake: FakeSupabaseStorage, storage: SupabaseStorage
) -> None:
    await storage.upload(BUCKET, "user-1/job-1_0.png", PNG_BYTES, "image/png")

    [request] = fake.requests
    assert request.method == "POST"
    assert request.path == f"/storage/v1/object/{BUCKET}/user-1/job-1_0.png"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["apikey"] == KEY
    assert request.headers["content-type"] == "image/png"
    assert request.headers["x-upsert"] == "true"
    assert request.headers["cache-control"] == "max-age=3600"
    assert request.headers["content-length"] == str(len(PNG_BYTES))
    assert request.body == PNG_BYTES
    assert fake.objects[BUCKET, "user-1/job-1_0.png"] == (PNG_BYTES, "image/png")


async def test_upload_again_replaces_the_object(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
    await storage.upload("video_fast", "user-1/v.mp4", b"first", "video/mp4")
    await storage.upload("video_fast", "user-1/v.mp4", b"second", "video/mp4")

    assert fake.objects["video_fast", "user-1/v.mp4"] == (b"second", "video/mp4")


async def test_upload_after_a_server_error_succeeds_on_retry(
    fake: FakeSupabaseStorage, storage: SupabaseStorage
) -> None:
    fake.answer_next(500, {"statusCode": "500", "error": "internal", "message": "Internal Server Error"})

    with pytest.raises(StorageError) as failure:
        await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")
    assert failure.value.retryable
    assert failure.value.status_code == 500

    await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")
    assert [r.body for r in fake.requests] == [PNG_BYTES, PNG_BYTES]
    assert fake.objects[BUCKET, "user-1/a.png"][0] == PNG_BYTES


async def test_path_is_percent_encoded_in_the_url(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
    await storage.upload(BUCKET, "user-1/my file#1.png", b"x", "image/png")

    assert fake.requests[0].path == f"/storage/v1/object/{BUCKET}/user-1/my%20file%231.png"
    assert (BUCKET, "user-1/my file#1.png") in fake.objects


async def test_signed_url_posts_expires_in_and_returns_an_absolute_url(
    fake: FakeSupabaseStorage, storage: SupabaseStorage
) -> None:
    await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")

    url = await storage.signed_url(BUCKET, "user-1/a.png", 3600)

    request = fake.requests[-1]
    assert request.method == "POST"
    assert request.path == f"/storage/v1/object/sign/{BUCKET}/user-1/a.png"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["apikey"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"expiresIn": 3600}
    assert url == f"{fake.url}/storage/v1/object/sign/{BUCKET}/user-1/a.png?token=fake.jwt.token"


async def test_signed_url_of_a_missing_object_is_not_found(storage: SupabaseStorage) -> None:
    with pytest.raises(ObjectNotFound) as failure:
        await storage.signed_url(BUCKET, "user-1/missing.png", 60)

    assert not failure.value.retryable
    assert failure.value.status_code == 404
    assert "Object not found" in str(failure.value)


async def test_signed_url_refuses_a_non_positive_expiry(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        await storage.signed_url(BUCKET, "user-1/a.png", 0)
    assert fake.requests == []


async def test_delete_sends_the_documented_bulk_body(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
    await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")

    await storage.delete(BUCKET, "user-1/a.png")

    request = fake.requests[-1]
    assert request.method == "DELETE"
    assert request.path == f"/storage/v1/object/{BUCKET}"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["apikey"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"prefixes": ["user-1/a.png"]}
    assert fake.objects == {}


async def test_delete_of_a_missing_object_is_not_an_error(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
    await storage.delete(BUCKET, "user-1/never-was.png")

    assert fake.requests[-1].json() == {"prefixes": ["user-1/never-was.png"]}


async def test_a_bucket_size_limit_is_object_too_large(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
    fake.size_limit = 100

    with pytest.raises(ObjectTooLarge) as failure:
        await storage.upload(BUCKET, "user-1/big.png", PNG_BYTES, "image/png")

    assert not failure.value.retryable
    assert failure.value.status_code == 413
    assert fake.objects == {}


@pytest.mark.parametrize(
    ("status", "body", "error", "retryable"),
    [
        (500, _body("500", "internal", "boom"), StorageError, True),
        (502, "<html>502 Bad Gateway</html>", StorageError, True),
        (544, _body("544", "DatabaseTimeout", "timed out"), StorageError, True),
        (400, _body("503", "DatabaseConnectionLimit", "busy"), StorageError, True),
        (429, _body("429", "SlowDown", "slow down"), StorageError, True),
        (404, _body("404", "not_found", "Object not found"), ObjectNotFound, False),
        (400, _body("404", "not_found", "Object not found"), ObjectNotFound, False),
        (400, _body("404", "Bucket not found", "Bucket not found"), ObjectNotFound, False),
        (413, "<html>413 Request Entity Too Large</html>", ObjectTooLarge, False),
        (400, _body("413", "Payload too large", "exceeded"), ObjectTooLarge, False),
        (400, _body("403", "Unauthorized", "invalid signature"), StorageError, False),
        (400, _body("400", "InvalidJWT", "jwt malformed"), StorageError, False),
    ],
)
async def test_error_answers_are_translated(
    fake: FakeSupabaseStorage,
    storage: SupabaseStorage,
    status: int,
    body: dict[str, Any] | str,
    error: type[StorageError],
    retryable: bool,
) -> None:
    fake.answer_next(status, body)

    with pytest.raises(StorageError) as failure:
        await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")

    assert type(failure.value) is error
    assert failure.value.retryable is retryable
    assert failure.value.__cause__ is None  # an answer, not a transport failure


async def test_a_wrong_key_is_refused_and_not_retryable(fake: FakeSupabaseStorage) -> None:
    async with SupabaseStorage(fake.url, "not-the-key") as storage:
        with pytest.raises(StorageError) as failure:
            await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")

    assert not failure.value.retryable
    assert failure.value.status_code == 403


async def test_a_refused_connection_is_retryable() -> None:
    async with SupabaseStorage(f"http://127.0.0.1:{_free_port()}", KEY) as storage:
        with pytest.raises(StorageError) as failure:
            await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")

    assert failure.value.retryable
    assert isinstance(failure.value.__cause__, httpx.ConnectError)


async def test_a_timeout_is_retryable(fake: FakeSupabaseStorage) -> None:
    fake.answer_next(200, {"Key": "x"}, delay=0.5)

    async with SupabaseStorage(fake.url, KEY, timeout=0.1) as storage:
        with pytest.raises(StorageError) as failure:
            await storage.upload(BUCKET, "user-1/a.png", PNG_BYTES, "image/png")

    assert failure.value.retryable
    assert isinstance(failure.value.__cause__, httpx.TimeoutException)


async def test_path_tricks_are_refused_before_any_request(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, bad_path: str
) -> None:
    with pytest.raises(ValueError):
        await storage.upload(BUCKET, bad_path, PNG_BYTES, "image/png")
    with pytest.raises(ValueError):
        await storage.signed_url(BUCKET, bad_path, 60)
    with pytest.raises(ValueError):
        await storage.delete(BUCKET, bad_path)

    assert fake.requests == []


@pytest.mark.parametrize("bucket", ["", "a/b", "..", "../x", "sdxl image", "x\x00"])
async def test_bad_bucket_names_are_refused_before_any_request(
    fake: FakeSupabaseStorage, storage: SupabaseStorage, bucket: str
) -> None:
    with pytest.raises(ValueError):
        await storage.upload(bucket, "user-1/a.png", PNG_BYTES, "image/png")
    with pytest.raises(ValueError):
        await storage.delete(bucket, "user-1/a.png")

    assert fake.requests == []


def test_an_empty_service_key_is_refused() -> None:
    with pytest.raises(ValueError, match="service_key"):
        SupabaseStorage("http://127.0.0.1:1", "")

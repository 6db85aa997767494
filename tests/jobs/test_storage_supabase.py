"""SupabaseStorage against a real local HTTP server that records each request and answers as Supabase does."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fake_supabase import KEY, FakeSupabaseStorage, error_body, running_fake

from jobs.storage import ObjectNotFound, ObjectTooLarge, StorageError, SupabaseStorage

BUCKET = "sdxl_image_fast"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # not UTF-8: the body must pass untouched


@pytest.fixture
def fake() -> Iterator[FakeSupabaseStorage]:
    with running_fake() as server:
        yield server


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


async def test_delete_sends_the_documented_bulkerror_body(fake: FakeSupabaseStorage, storage: SupabaseStorage) -> None:
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
        (500, error_body("500", "internal", "boom"), StorageError, True),
        (502, "<html>502 Bad Gateway</html>", StorageError, True),
        (544, error_body("544", "DatabaseTimeout", "timed out"), StorageError, True),
        (400, error_body("503", "DatabaseConnectionLimit", "busy"), StorageError, True),
        (429, error_body("429", "SlowDown", "slow down"), StorageError, True),
        (404, error_body("404", "not_found", "Object not found"), ObjectNotFound, False),
        (400, error_body("404", "not_found", "Object not found"), ObjectNotFound, False),
        (400, error_body("404", "Bucket not found", "Bucket not found"), ObjectNotFound, False),
        (413, "<html>413 Request Entity Too Large</html>", ObjectTooLarge, False),
        (400, error_body("413", "Payload too large", "exceeded"), ObjectTooLarge, False),
        (400, error_body("403", "Unauthorized", "invalid signature"), StorageError, False),
        (400, error_body("400", "InvalidJWT", "jwt malformed"), StorageError, False),
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

"""The storage buckets: the worker uploads PNG/MP4 files, the API signs URLs to them and deletes them.

Two backends behind one `Storage` protocol: `SupabaseStorage` (Supabase Storage's REST API over httpx)
and `LocalStorage` (a folder, served by the API through HMAC-signed, expiring URLs).

Exceptions::

    StorageError (retryable: bool, status_code: int | None)
     ├── ObjectNotFound        the object (or its bucket) does not exist
     ├── ObjectTooLarge        the server refused the body as too large
     └── InvalidSignature      a LocalStorage URL whose signature does not match
          └── SignatureExpired  ... or whose time is up

A path with tricks in it (`..`, an absolute path, a backslash, ...) is a `ValueError`, raised before
any request is sent or any file touched.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

MAX_PATH_CHARS = 1024
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# 408 and 429 are the 4xx answers that say "try again later"; every 5xx does too.
_RETRYABLE_4XX = frozenset({408, 429})


class StorageError(Exception):
    """A storage operation failed; `retryable` says whether the same call may succeed later."""

    def __init__(self, message: str, *, retryable: bool = False, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


class ObjectNotFound(StorageError):
    """The object, or the bucket that should hold it, does not exist."""


class ObjectTooLarge(StorageError):
    """The server refused the object as larger than the bucket (or the gateway) allows."""


class InvalidSignature(StorageError):
    """A signed URL whose signature does not match its bucket, path and expiry."""


class SignatureExpired(InvalidSignature):
    """A signed URL whose signature matches but whose expiry has passed."""


def validate_bucket(bucket: str) -> str:
    """Return `bucket` if it is a plain bucket name (the job type names are), else raise ValueError."""
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"invalid bucket name: {bucket!r}")
    return bucket


def validate_object_path(path: str) -> str:
    """Return `path` if it is a safe relative object path like `{user_id}/{file}`, else raise ValueError."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"object path must be a non-empty string, got {path!r}")
    if len(path) > MAX_PATH_CHARS:
        raise ValueError(f"object path is {len(path)} characters, over the {MAX_PATH_CHARS} limit")
    if "\\" in path:
        raise ValueError(f"object path must not contain a backslash: {path!r}")
    # NUL and the other control characters: they truncate C strings and split HTTP headers.
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise ValueError(f"object path must not contain control characters: {path!r}")
    if path.startswith("/"):
        raise ValueError(f"object path must be relative: {path!r}")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object path has an empty, '.' or '..' segment: {path!r}")
    return path


class Storage(Protocol):
    """Where generated files live; objects are addressed by bucket (the job type) and `{user_id}/{file}`."""

    async def upload(self, bucket: str, path: str, data: bytes, content_type: str) -> None:
        """Store `data` at `bucket/path`, replacing any object there (so a retried upload succeeds)."""
        ...

    async def signed_url(self, bucket: str, path: str, expires_in: int) -> str:
        """A URL that reads the object without credentials for `expires_in` seconds."""
        ...

    async def delete(self, bucket: str, path: str) -> None:
        """Remove the object; removing an object that does not exist is not an error."""
        ...

    async def aclose(self) -> None:
        """Release connections; the storage is unusable afterwards."""
        ...


# --------------------------------------------------------------------------------------------------
# Supabase Storage
# --------------------------------------------------------------------------------------------------
#
# The request shapes follow the server and its official clients (verified in their sources):
# - supabase/storage src/http/routes/object/createObject.ts: `POST /object/{bucket}/{path}`, raw body,
#   headers `content-type`, `cache-control`, and `x-upsert: true` to overwrite; answers `{Key, Id}`.
#   storage-js StorageFileApi.uploadOrUpdate sends a non-Blob body the same way, with
#   `cache-control: max-age=<cacheControl>` (default 3600) and the client's `apikey` + `Authorization`.
# - getSignedURL.ts: `POST /object/sign/{bucket}/{path}` with JSON `{"expiresIn": <int >= 1>}`, answers
#   `{"signedURL": "/object/sign/{bucket}/{path}?token=..."}`, relative to `/storage/v1`; storage-js
#   createSignedUrl returns `${url}${signedURL}` where url is `{SUPABASE_URL}/storage/v1`.
# - deleteObjects.ts: `DELETE /object/{bucket}` with JSON `{"prefixes": [paths]}` (minItems 1), answers
#   200 with the list of objects deleted, `[]` when none matched; storage-js `remove` and storage-py
#   (storage3) `remove` send exactly this.
# - src/http/error-handler.ts + src/internal/errors/codes.ts: errors are
#   `{"statusCode": "<code as a string>", "error": ..., "message": ...}`, sent with HTTP 400 for every
#   non-500 code (a legacy choice, supabase/storage#323), so the body's statusCode is the real one:
#   "404"/"not_found" (NoSuchKey) or "Bucket not found", "413"/"Payload too large" (EntityTooLarge),
#   "503" for a busy database. A gateway in front may answer a plain 413/502 without that body.

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class SupabaseStorage(Storage):
    """Supabase Storage over its REST API, with the service-role key and one pooled httpx client."""

    def __init__(
        self,
        supabase_url: str,
        service_key: str,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_connections: int = 20,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not service_key:
            raise ValueError("service_key must not be empty")
        self.storage_url = f"{supabase_url.rstrip('/')}/storage/v1"
        self._client = httpx.AsyncClient(
            base_url=self.storage_url,
            headers={"Authorization": f"Bearer {service_key}", "apikey": service_key},
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    async def __aenter__(self) -> SupabaseStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def upload(self, bucket: str, path: str, data: bytes, content_type: str) -> None:
        url = _object_url("/object", bucket, path)
        headers = {"content-type": content_type, "x-upsert": "true", "cache-control": "max-age=3600"}
        await self._send("POST", url, bucket, path, content=data, headers=headers)
        logger.debug("uploaded %s/%s (%d bytes, %s)", bucket, path, len(data), content_type)

    async def signed_url(self, bucket: str, path: str, expires_in: int) -> str:
        if expires_in < 1:
            raise ValueError(f"expires_in must be at least 1 second, got {expires_in}")
        url = _object_url("/object/sign", bucket, path)
        response = await self._send("POST", url, bucket, path, json={"expiresIn": expires_in})
        signed = _json_or_none(response)
        if not isinstance(signed, dict) or not isinstance(signed.get("signedURL"), str):
            raise StorageError(
                f"sign {bucket}/{path}: answer lacks signedURL: {response.text[:200]!r}",
                retryable=False,
                status_code=response.status_code,
            )
        relative: str = signed["signedURL"]
        return f"{self.storage_url}/{relative.lstrip('/')}"

    async def delete(self, bucket: str, path: str) -> None:
        url = f"/object/{quote(validate_bucket(bucket), safe='')}"
        validate_object_path(path)
        response = await self._send("DELETE", url, bucket, path, json={"prefixes": [path]})
        deleted = _json_or_none(response)
        logger.debug("deleted %s/%s (%s)", bucket, path, "gone" if deleted else "was absent")

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(self, method: str, url: str, bucket: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request and translate every failure into the StorageError tree."""
        what = f"{method} {bucket}/{path}"
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TransportError as exc:  # timeouts, refused or reset connections
            raise StorageError(f"{what}: {type(exc).__name__}: {exc}", retryable=True) from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"{what}: {type(exc).__name__}: {exc}", retryable=False) from exc
        if response.is_success:
            return response
        raise _error_from_response(what, response)


def _object_url(prefix: str, bucket: str, path: str) -> str:
    bucket = validate_bucket(bucket)
    path = validate_object_path(path)
    return f"{prefix}/{quote(bucket, safe='')}/{quote(path, safe='/')}"


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_from_response(what: str, response: httpx.Response) -> StorageError:
    """Map a Supabase error answer (real status in the body, often under HTTP 400) to an exception."""
    body = _json_or_none(response)
    body = body if isinstance(body, Mapping) else {}
    status = _body_status(body) or response.status_code
    error = str(body.get("error") or "")
    message = str(body.get("message") or response.text[:200] or response.reason_phrase)
    text = f"{what}: {status} {error}: {message}" if error else f"{what}: {status}: {message}"
    if status == 404 or error == "not_found":
        return ObjectNotFound(text, retryable=False, status_code=status)
    if status == 413 or error == "Payload too large":
        return ObjectTooLarge(text, retryable=False, status_code=status)
    retryable = status >= 500 or status in _RETRYABLE_4XX
    return StorageError(text, retryable=retryable, status_code=status)


def _body_status(body: Mapping[str, Any]) -> int | None:
    try:
        return int(body["statusCode"])
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# A local folder
# --------------------------------------------------------------------------------------------------


class LocalStorage(Storage):
    """Buckets as folders under `root`; URLs signed with HMAC-SHA256 and served by the API's file route."""

    def __init__(
        self,
        root: Path | str,
        secret: str | bytes,
        public_base_url: str = "",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("secret must not be empty")
        self.root = Path(root)
        self.public_base_url = public_base_url.rstrip("/")
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self._clock = clock

    async def upload(self, bucket: str, path: str, data: bytes, content_type: str) -> None:
        target = self._target(bucket, path)
        await asyncio.to_thread(self._write, target, data)
        logger.debug("stored %s/%s (%d bytes, %s)", bucket, path, len(data), content_type)

    async def signed_url(self, bucket: str, path: str, expires_in: int) -> str:
        if expires_in < 1:
            raise ValueError(f"expires_in must be at least 1 second, got {expires_in}")
        target = self._target(bucket, path)
        # As Supabase does: no URL for an object that does not exist.
        if not await asyncio.to_thread(self._is_file, target):
            raise ObjectNotFound(f"sign {bucket}/{path}: object not found", status_code=404)
        expires = int(self._clock()) + expires_in
        signature = self._sign(bucket, path, expires)
        return (
            f"{self.public_base_url}/api/files/{quote(bucket, safe='')}/{quote(path, safe='/')}"
            f"?expires={expires}&signature={signature}"
        )

    async def delete(self, bucket: str, path: str) -> None:
        target = self._target(bucket, path)
        await asyncio.to_thread(self._unlink, target)

    async def aclose(self) -> None:
        return None

    def verify(self, bucket: str, path: str, expires: int | str, signature: str, now: float | None = None) -> Path:
        """The file behind a signed URL's parts; raises ValueError, InvalidSignature, or ObjectNotFound."""
        target = self._target(bucket, path)
        try:
            expires_at = int(expires)
        except (TypeError, ValueError):
            raise InvalidSignature(f"{bucket}/{path}: expires is not a number", status_code=403) from None
        expected = self._sign(bucket, path, expires_at).encode()
        if not hmac.compare_digest(expected, str(signature).encode("utf-8", "replace")):
            raise InvalidSignature(f"{bucket}/{path}: signature does not match", status_code=403)
        if (self._clock() if now is None else now) > expires_at:
            raise SignatureExpired(f"{bucket}/{path}: the URL expired at {expires_at}", status_code=403)
        if not self._is_file(target):
            raise ObjectNotFound(f"{bucket}/{path}: object not found", status_code=404)
        return target

    def _sign(self, bucket: str, path: str, expires: int) -> str:
        message = f"{bucket}/{path}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _target(self, bucket: str, path: str) -> Path:
        return self.root / validate_bucket(bucket) / validate_object_path(path)

    def _check_inside_root(self, target: Path) -> None:
        # Validated paths cannot climb out; a symlink planted inside the root still could.
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"object path leaves the storage root: {target}")

    def _is_file(self, target: Path) -> bool:
        self._check_inside_root(target)
        return target.is_file()

    def _unlink(self, target: Path) -> None:
        self._check_inside_root(target)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"delete {target}: {exc}", retryable=False) from exc

    def _write(self, target: Path, data: bytes) -> None:
        """Write a temp file beside the target, then rename it: readers see the old or the new, never half."""
        self._check_inside_root(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as exc:
            raise StorageError(f"store {target}: {exc}", retryable=False) from exc
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                # Without fsync a crash just after the rename can leave an empty file under the new name.
                os.fsync(file.fileno())
            os.replace(temp_name, target)
        except BaseException as exc:
            Path(temp_name).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise StorageError(f"store {target}: {exc}", retryable=False) from exc
            raise


class StorageSettings(BaseSettings):
    """The storage fields that the API's and the worker's settings share (prefix `OURVIDZ_`)."""

    model_config = SettingsConfigDict(env_prefix="OURVIDZ_", env_file=None, extra="ignore")

    storage: Literal["local", "supabase"] = "local"
    storage_dir: Path = Path("./.ourvidz/storage")
    supabase_url: str | None = None
    supabase_service_key: str | None = None

    def open_storage(self, url_secret: str, public_base_url: str = "") -> Storage:
        """Supabase Storage, or the local folder whose URLs are signed with `url_secret`."""
        if self.storage == "supabase":
            if not self.supabase_url or not self.supabase_service_key:
                raise ValueError("Supabase storage needs OURVIDZ_SUPABASE_URL and OURVIDZ_SUPABASE_SERVICE_KEY")
            return SupabaseStorage(self.supabase_url, self.supabase_service_key)
        return LocalStorage(self.storage_dir, url_secret, public_base_url)

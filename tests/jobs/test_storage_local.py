"""LocalStorage: atomic writes into a folder, and HMAC-signed expiring URLs for the API's file route."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from jobs.storage import (
    InvalidSignature,
    LocalStorage,
    ObjectNotFound,
    SignatureExpired,
    StorageError,
    validate_object_path,
)

SECRET = "local-storage-secret-for-tests"
BUCKET = "image_fast"
PATH = "user-1/job-1_0.png"
NOW = 1_750_000_000.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def storage(root: Path) -> LocalStorage:
    return LocalStorage(root, SECRET, "https://api.example", clock=lambda: NOW)


def _url_parts(url: str) -> tuple[str, str, str, str]:
    """(bucket, path, expires, signature) as the API's `/api/files/{bucket}/{path}` route receives them."""
    parts = urlsplit(url)
    bucket, path = parts.path.removeprefix("/api/files/").split("/", 1)
    query = parse_qs(parts.query)
    return bucket, path, query["expires"][0], query["signature"][0]


def _all_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


async def test_upload_writes_the_bytes_under_bucket_and_path(storage: LocalStorage, root: Path) -> None:
    await storage.upload(BUCKET, PATH, b"\x89PNG data", "image/png")

    assert (root / BUCKET / PATH).read_bytes() == b"\x89PNG data"
    assert _leftovers(root / BUCKET / "user-1") == []


async def test_upload_again_replaces_the_file(storage: LocalStorage, root: Path) -> None:
    await storage.upload(BUCKET, PATH, b"first", "image/png")
    await storage.upload(BUCKET, PATH, b"second", "image/png")

    assert (root / BUCKET / PATH).read_bytes() == b"second"


async def test_upload_never_shows_a_half_written_file(
    storage: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await storage.upload(BUCKET, PATH, b"old", "image/png")
    real_replace = os.replace
    seen_at_rename: list[bytes] = []

    def watching_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        # The new bytes are complete in the temp file while readers still see the old file.
        assert Path(source).read_bytes() == b"new" * 1000
        seen_at_rename.append(Path(target).read_bytes())
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watching_replace)
    await storage.upload(BUCKET, PATH, b"new" * 1000, "image/png")

    assert seen_at_rename == [b"old"]
    assert (root / BUCKET / PATH).read_bytes() == b"new" * 1000


@pytest.mark.parametrize("failing", ["fsync", "replace"])
async def test_a_failed_write_keeps_the_old_file_and_no_temp_file(
    storage: LocalStorage, root: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    await storage.upload(BUCKET, PATH, b"old", "image/png")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(StorageError, match="No space left") as failure:
        await storage.upload(BUCKET, PATH, b"new", "image/png")

    assert isinstance(failure.value.__cause__, OSError)
    assert (root / BUCKET / PATH).read_bytes() == b"old"
    assert _leftovers(root / BUCKET / "user-1") == []


async def test_signed_url_verifies_to_the_file(storage: LocalStorage, root: Path) -> None:
    await storage.upload(BUCKET, PATH, b"png", "image/png")

    url = await storage.signed_url(BUCKET, PATH, 600)

    expires_at = int(NOW) + 600
    assert url.startswith(f"https://api.example/api/files/{BUCKET}/{PATH}?expires={expires_at}&signature=")
    bucket, path, expires, signature = _url_parts(url.removeprefix("https://api.example"))
    assert len(signature) == 64 and int(signature, 16) >= 0
    assert storage.verify(bucket, path, expires, signature, now=NOW + 600) == root / BUCKET / PATH


async def test_signed_url_is_relative_without_a_public_base_url(root: Path) -> None:
    storage = LocalStorage(root, SECRET, clock=lambda: NOW)
    await storage.upload(BUCKET, PATH, b"png", "image/png")

    url = await storage.signed_url(BUCKET, PATH, 60)

    assert url.startswith(f"/api/files/{BUCKET}/{PATH}?expires=")
    assert storage.verify(*_url_parts(url)) == root / BUCKET / PATH  # the real clock: well within 60 s


async def test_signed_url_encodes_the_path_and_signs_it_decoded(storage: LocalStorage, root: Path) -> None:
    await storage.upload(BUCKET, "user-1/my file.png", b"png", "image/png")

    url = await storage.signed_url(BUCKET, "user-1/my file.png", 60)

    assert f"/api/files/{BUCKET}/user-1/my%20file.png?" in url
    _, _, expires, signature = _url_parts(url.removeprefix("https://api.example"))
    assert storage.verify(BUCKET, "user-1/my file.png", expires, signature, now=NOW) == root / BUCKET / (
        "user-1/my file.png"
    )


async def test_an_expired_url_is_refused(storage: LocalStorage) -> None:
    await storage.upload(BUCKET, PATH, b"png", "image/png")
    bucket, path, expires, signature = _url_parts(await storage.signed_url(BUCKET, PATH, 60))

    with pytest.raises(SignatureExpired):
        storage.verify(bucket, path, expires, signature, now=NOW + 61)
    # SignatureExpired is an InvalidSignature, so one except clause serves the route.
    with pytest.raises(InvalidSignature):
        storage.verify(bucket, path, expires, signature, now=NOW + 61)


Tamper = Callable[[str, str, str, str], tuple[str, str, str, str]]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda b, p, e, s: (b, p, e, s[:-1] + ("0" if s[-1] != "0" else "1")), id="signature"),
        pytest.param(lambda b, p, e, s: (b, p, e, s.upper()), id="signature-case"),
        pytest.param(lambda b, p, e, s: (b, p, e, ""), id="signature-empty"),
        pytest.param(lambda b, p, e, s: (b, p, e, "é" * 64), id="signature-non-ascii"),
        pytest.param(lambda b, p, e, s: (b, p, str(int(e) + 86400), s), id="expires-extended"),
        pytest.param(lambda b, p, e, s: (b, p, "soon", s), id="expires-not-a-number"),
        pytest.param(lambda b, p, e, s: (b, "user-2/job-2_0.png", e, s), id="path-other-user"),
        pytest.param(lambda b, p, e, s: ("image_high", p, e, s), id="bucket"),
    ],
)
async def test_a_tampered_url_is_refused(storage: LocalStorage, root: Path, tamper: Tamper) -> None:
    await storage.upload(BUCKET, PATH, b"png", "image/png")
    await storage.upload(BUCKET, "user-2/job-2_0.png", b"someone else's", "image/png")
    await storage.upload("image_high", PATH, b"other bucket", "image/png")
    parts = _url_parts((await storage.signed_url(BUCKET, PATH, 60)).removeprefix("https://api.example"))

    with pytest.raises(InvalidSignature) as failure:
        storage.verify(*tamper(*parts), now=NOW)

    assert not isinstance(failure.value, SignatureExpired)


async def test_a_url_signed_with_another_secret_is_refused(storage: LocalStorage, root: Path) -> None:
    await storage.upload(BUCKET, PATH, b"png", "image/png")
    other = LocalStorage(root, "another-secret", clock=lambda: NOW)

    with pytest.raises(InvalidSignature):
        other.verify(*_url_parts(await storage.signed_url(BUCKET, PATH, 60)), now=NOW)


async def test_verify_refuses_path_tricks(storage: LocalStorage, bad_path: str) -> None:
    with pytest.raises(ValueError):
        storage.verify(BUCKET, bad_path, int(NOW) + 60, "0" * 64, now=NOW)


async def test_upload_refuses_path_tricks_and_writes_nothing(
    storage: LocalStorage, tmp_path: Path, bad_path: str
) -> None:
    with pytest.raises(ValueError):
        await storage.upload(BUCKET, bad_path, b"x", "image/png")
    with pytest.raises(ValueError):
        await storage.signed_url(BUCKET, bad_path, 60)
    with pytest.raises(ValueError):
        await storage.delete(BUCKET, bad_path)

    assert _all_files(tmp_path) == []


async def test_a_symlink_out_of_the_root_is_refused(storage: LocalStorage, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / BUCKET).mkdir(parents=True)
    (root / BUCKET / "user-1").symlink_to(outside)

    with pytest.raises(ValueError, match="leaves the storage root"):
        await storage.upload(BUCKET, PATH, b"x", "image/png")

    assert list(outside.iterdir()) == []


async def test_signed_url_of_a_missing_object_is_not_found(storage: LocalStorage) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.signed_url(BUCKET, PATH, 60)


async def test_delete_removes_the_file_and_its_url_stops_working(storage: LocalStorage, root: Path) -> None:
    await storage.upload(BUCKET, PATH, b"png", "image/png")
    parts = _url_parts((await storage.signed_url(BUCKET, PATH, 60)).removeprefix("https://api.example"))

    await storage.delete(BUCKET, PATH)

    assert not (root / BUCKET / PATH).exists()
    with pytest.raises(ObjectNotFound):
        storage.verify(*parts, now=NOW)


async def test_delete_of_a_missing_object_is_not_an_error(storage: LocalStorage, root: Path) -> None:
    await storage.delete(BUCKET, "user-1/never-was.png")

    assert _all_files(root) == []


async def test_signed_url_refuses_a_non_positive_expiry(storage: LocalStorage) -> None:
    await storage.upload(BUCKET, PATH, b"png", "image/png")
    with pytest.raises(ValueError, match="expires_in"):
        await storage.signed_url(BUCKET, PATH, 0)


def test_an_empty_secret_is_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="secret"):
        LocalStorage(root, "")


@pytest.mark.parametrize(
    "path",
    [
        "user-1/a.png",
        "0f8fad5b-d9cb-469f-a165-70867728950e/job_0.mp4",
        "u/nested/deeper/file.png",
        "u/x" * 300,
    ],
)
def test_validate_object_path_accepts_plain_relative_paths(path: str) -> None:
    assert validate_object_path(path[:1024]) == path[:1024]


def test_validate_object_path_refuses_tricks(bad_path: str) -> None:
    with pytest.raises(ValueError):
        validate_object_path(bad_path)

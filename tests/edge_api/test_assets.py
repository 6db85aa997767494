"""GET /api/assets (cursor pages, filter by kind) and DELETE /api/assets/{id} (the object, then the row)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from harness import Api

from jobs.catalog import DEFAULT_CATALOG
from jobs.tables import assets as assets_table


@pytest.fixture
def api(shared_api: Api) -> Api:
    """Every check here is about the test's own user's assets, so one server and database serve the module."""
    return shared_api


async def completed_job(api: Api, user: uuid.UUID, job_type: str) -> list[str]:
    """A completed job whose files are stored; returns their paths."""
    spec = DEFAULT_CATALOG[job_type]
    job_id = await api.submitted(user, job_type)
    await api.claim(job_id)
    files = [f"{user}/{job_id}_{n}.{spec.file_extension}" for n in range(spec.num_outputs)]
    for path in files:
        await api.state.storage.upload(spec.bucket, path, path.encode(), spec.content_type)
    response = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1, "assets": files})
    assert response.status_code == 200, response.text
    return files


async def list_assets(api: Api, user: uuid.UUID, **params: Any) -> dict[str, Any]:
    response = await api.client.get("/api/assets", params=params, headers=api.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_pages(api: Api, user: uuid.UUID, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        page = await list_assets(api, user, limit=limit, **({"cursor": cursor} if cursor else {}), **params)
        pages.append(page["assets"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


@pytest.fixture
async def library(api: Api, user: uuid.UUID) -> list[str]:
    """Two SDXL batches (12 images) and one video: 13 assets."""
    await api.set_balance(user, 20)
    return [*await completed_job(api, user, "sdxl_image_fast"), *await completed_job(api, user, "video_fast"),
            *await completed_job(api, user, "sdxl_image_high")]


async def test_pages_cover_every_asset_once_newest_first(api: Api, user: uuid.UUID, library: list[str]) -> None:
    pages = await all_pages(api, user, limit=5)
    assert [len(p) for p in pages] == [5, 5, 3]
    listed = [a for page in pages for a in page]
    assert sorted(a["path"] for a in listed) == sorted(library)
    assert len({a["id"] for a in listed}) == len(library)
    keys = [(datetime.fromisoformat(a["created_at"]), uuid.UUID(a["id"])) for a in listed]
    assert keys == sorted(keys, reverse=True)


async def test_pages_have_no_gaps_when_assets_share_a_timestamp(api: Api, user: uuid.UUID,
                                                                library: list[str]) -> None:
    async with api.state.engine.begin() as conn:
        await conn.execute(sa.update(assets_table).where(assets_table.c.user_id == user)
                           .values(created_at=datetime(2026, 1, 1, tzinfo=UTC)))
    for limit in (1, 4, 6, 13, 100):
        listed = [a["path"] for page in await all_pages(api, user, limit=limit) for a in page]
        assert sorted(listed) == sorted(library)
        assert len(listed) == len(set(listed))


async def test_a_page_as_large_as_the_rest_has_no_next_cursor(api: Api, user: uuid.UUID, library: list[str]) -> None:
    page = await list_assets(api, user, limit=len(library))
    assert len(page["assets"]) == len(library) and page["next_cursor"] is None


@pytest.mark.parametrize(("kind", "count"), [("image", 12), ("video", 1)])
async def test_the_kind_filter_holds_across_pages(api: Api, user: uuid.UUID, library: list[str], kind: str,
                                                  count: int) -> None:
    listed = [a for page in await all_pages(api, user, limit=5, kind=kind) for a in page]
    assert len(listed) == count
    assert {a["kind"] for a in listed} == {kind}


async def test_an_asset_view_has_a_url_that_serves_the_file(api: Api, user: uuid.UUID, library: list[str]) -> None:
    page = await list_assets(api, user, kind="video")
    [video] = page["assets"]
    assert (video["bucket"], video["content_type"], video["index"]) == ("video_fast", "video/mp4", 0)
    served = await api.client.get(video["url"])
    assert served.status_code == 200 and served.content == video["path"].encode()


async def test_another_user_sees_none_of_the_assets(api: Api, user: uuid.UUID, library: list[str]) -> None:
    assert await list_assets(api, uuid.uuid4()) == {"success": True, "assets": [], "next_cursor": None}


async def test_delete_removes_the_object_then_the_row(api: Api, user: uuid.UUID, library: list[str]) -> None:
    [video] = (await list_assets(api, user, kind="video"))["assets"]
    stored = api.settings.storage_dir / video["bucket"] / video["path"]
    assert stored.is_file()
    response = await api.client.delete(f"/api/assets/{video['id']}", headers=api.auth(user))
    assert response.status_code == 200
    assert response.json() == {"success": True, "deleted": video["id"]}
    assert not stored.exists()
    assert (await api.client.get(video["url"])).status_code == 404
    remaining = [a for page in await all_pages(api, user, limit=100) for a in page]
    assert len(remaining) == len(library) - 1 and video["id"] not in {a["id"] for a in remaining}
    again = await api.client.delete(f"/api/assets/{video['id']}", headers=api.auth(user))
    assert again.status_code == 404


async def test_delete_of_an_object_already_gone_still_removes_the_row(api: Api, user: uuid.UUID,
                                                                     library: list[str]) -> None:
    [video] = (await list_assets(api, user, kind="video"))["assets"]
    await api.state.storage.delete(video["bucket"], video["path"])
    assert (await api.client.delete(f"/api/assets/{video['id']}", headers=api.auth(user))).status_code == 200
    assert (await list_assets(api, user, kind="video"))["assets"] == []


async def test_another_user_cannot_delete_an_asset(api: Api, user: uuid.UUID, library: list[str]) -> None:
    [video] = (await list_assets(api, user, kind="video"))["assets"]
    response = await api.client.delete(f"/api/assets/{video['id']}", headers=api.auth(uuid.uuid4()))
    assert response.status_code == 404
    assert response.json()["success"] is False and video["path"] not in response.text
    assert (api.settings.storage_dir / video["bucket"] / video["path"]).is_file()
    assert len((await list_assets(api, user, kind="video"))["assets"]) == 1


@pytest.mark.parametrize("asset_id", ["not-a-uuid", str(uuid.uuid4())])
async def test_deleting_an_unknown_asset_is_404(api: Api, user: uuid.UUID, asset_id: str) -> None:
    response = await api.client.delete(f"/api/assets/{asset_id}", headers=api.auth(user))
    assert response.status_code == 404 and response.json()["error"] == "Asset not found"

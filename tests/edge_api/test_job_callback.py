"""POST /api/job-callback: signed, idempotent by webhook-id, fenced by the attempt, refunds on failure."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Api

from jobs.catalog import DEFAULT_CATALOG
from jobs.webhooks import new_secret, signed_headers


@pytest.fixture
def api(shared_api: Api) -> Api:
    """Every check here is about the test's own user and job ids, so one server and database serve the module."""
    return shared_api


def paths(user: uuid.UUID, job_id: str, count: int = 1, ext: str = "png") -> list[str]:
    return [f"{user}/{job_id}_{n}.{ext}" for n in range(count)]


async def queued_job(api: Api, user: uuid.UUID, job_type: str = "image_fast", balance: int = 10) -> str:
    await api.set_balance(user, balance)
    return await api.submitted(user, job_type)


async def running_job(api: Api, user: uuid.UUID, job_type: str = "image_fast", worker: str = "worker-1") -> str:
    job_id = await queued_job(api, user, job_type)
    response = await api.claim(job_id, worker)
    assert response.status_code == 200, response.text
    return job_id


def assert_refused(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["error"]
    assert set(body) == {"success", "error", "details", "retryable", "suggestedAction"}
    return body


# --- The signature ---------------------------------------------------------------------------------


async def test_an_unsigned_callback_is_401(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    response = await api.client.post("/api/job-callback", json={"job_id": job_id, "status": "processing"})
    assert_refused(response, 401)
    assert (await api.job_row(job_id))["status"] == "queued"


async def test_a_callback_signed_with_another_secret_is_401(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    response = await api.callback({"job_id": job_id, "status": "processing"},
                                  secret="whsec_" + "QUJD" * 11)
    assert_refused(response, 401)
    assert (await api.job_row(job_id))["status"] == "queued"


@pytest.mark.parametrize("offset", [timedelta(minutes=-6), timedelta(minutes=6)], ids=["old", "future"])
async def test_a_callback_outside_the_five_minute_window_is_401(api: Api, user: uuid.UUID,
                                                                offset: timedelta) -> None:
    job_id = await queued_job(api, user)
    body = json.dumps({"job_id": job_id, "status": "processing"}).encode()
    headers = signed_headers(api.settings.callback_secret, body, "msg_window", now=datetime.now(UTC) + offset)
    assert_refused(await api.client.post("/api/job-callback", content=body, headers=headers), 401)
    assert (await api.job_row(job_id))["status"] == "queued"


async def test_a_callback_within_the_window_is_accepted(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    body = json.dumps({"job_id": job_id, "status": "processing"}).encode()
    headers = signed_headers(api.settings.callback_secret, body, "msg_recent",
                             now=datetime.now(UTC) - timedelta(minutes=4))
    assert (await api.client.post("/api/job-callback", content=body, headers=headers)).status_code == 200


async def test_a_changed_body_byte_is_401(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    body = json.dumps({"job_id": job_id, "status": "processing", "progress": 10}).encode()
    headers = signed_headers(api.settings.callback_secret, body, "msg_tamper")
    tampered = body.replace(b'"progress": 10', b'"progress": 90')
    assert len(tampered) == len(body)
    assert_refused(await api.client.post("/api/job-callback", content=tampered, headers=headers), 401)
    assert (await api.job_row(job_id))["status"] == "queued"


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
async def test_a_missing_signature_header_is_401(api: Api, user: uuid.UUID, header: str) -> None:
    job_id = await queued_job(api, user)
    body = json.dumps({"job_id": job_id, "status": "processing"}).encode()
    headers = signed_headers(api.settings.callback_secret, body, "msg_missing")
    del headers[header]
    assert_refused(await api.client.post("/api/job-callback", content=body, headers=headers), 401)


async def test_a_bad_signature_is_401_pointing_at_the_callback_secret_not_at_signing_in(
        api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    response = await api.callback({"job_id": job_id, "status": "processing"}, secret=new_secret())
    assert_refused(response, 401)
    advice = response.json()["suggestedAction"]
    assert "OURVIDZ_CALLBACK_SECRET" in advice and "Sign in" not in advice


async def test_the_functions_v1_prefix_takes_callbacks_too(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    body = json.dumps({"jobId": job_id, "status": "processing"}).encode()
    headers = signed_headers(api.settings.callback_secret, body, "msg_functions")
    response = await api.client.post("/functions/v1/job-callback", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert (await api.job_row(job_id))["status"] == "processing"


# --- processing: the claim and progress ------------------------------------------------------------


async def test_processing_claims_the_job_and_answers_the_attempt(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    response = await api.claim(job_id, "gpu-0")
    assert response.status_code == 200
    assert response.json() == {"success": True, "job_id": job_id, "status": "processing", "attempt": 1,
                               "duplicate": False}
    row = await api.job_row(job_id)
    assert (row["status"], row["attempts"], row["worker_id"], row["progress"]) == ("processing", 1, "gpu-0", 0)
    assert row["started_at"] is not None and row["lease_until"] > row["started_at"]


async def test_progress_updates_move_forward_and_extend_the_lease(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    lease = (await api.job_row(job_id))["lease_until"]
    for progress in (40, 30):
        response = await api.callback({"job_id": job_id, "status": "processing", "progress": progress, "attempt": 1})
        assert response.status_code == 200
    row = await api.job_row(job_id)
    assert row["progress"] == 40  # progress never goes backwards
    assert row["lease_until"] >= lease
    assert (await api.client.get(f"/api/jobs/{job_id}", headers=api.auth(user))).json()["progress"] == 40


async def test_another_worker_cannot_claim_a_running_job(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user, worker="worker-1")
    assert_refused(await api.claim(job_id, "worker-2"), 409)
    assert (await api.job_row(job_id))["worker_id"] == "worker-1"


# --- completed -----------------------------------------------------------------------------------


async def test_completed_with_asset_objects_creates_rows_and_merges_metadata(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user, "sdxl_image_fast")
    files = paths(user, job_id, 6)
    response = await api.callback({
        "job_id": job_id, "status": "completed", "attempt": 1,
        "assets": [{"url": p, "type": "image", "metadata": {"size_bytes": 1000 + n, "seed": n}}
                   for n, p in enumerate(files)],
        "metadata": {"generation_seconds": 29.9, "prompt": "overwritten?"},
    })
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    row = await api.job_row(job_id)
    assert (row["status"], row["progress"]) == ("completed", 100)
    assert row["completed_at"] is not None and row["lease_until"] is None
    metadata = row["metadata"]
    assert metadata["all_assets"] == files
    assert metadata["primary_asset"] == files[0]
    assert datetime.fromisoformat(metadata["callback_processed_at"]).tzinfo is not None
    assert metadata["generation_seconds"] == 29.9
    assert metadata["prompt"] == "a red fox"  # what the API recorded at submission is kept
    assets = await api.asset_rows(job_id)
    assert [(a["path"], a["position"], a["kind"], a["size_bytes"]) for a in assets] == [
        (p, n, "image", 1000 + n) for n, p in enumerate(files)]
    assert {(a["bucket"], a["content_type"], a["user_id"]) for a in assets} == {
        ("sdxl_image_fast", "image/png", user)}
    assert await api.ledger_sum(job_id) == -1


async def test_completed_in_the_legacy_spelling_with_plain_paths(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user, "video7b_fast_enhanced")
    files = paths(user, job_id, 1, "mp4")
    response = await api.callback({"jobId": job_id, "status": "completed", "assets": files,
                                   "enhancedPrompt": "a long cinematic description"})
    assert response.status_code == 200, response.text
    row = await api.job_row(job_id)
    assert row["status"] == "completed"
    assert row["metadata"]["primary_asset"] == files[0] and row["metadata"]["all_assets"] == files
    assert row["metadata"]["enhanced_prompt"] == "a long cinematic description"
    [asset] = await api.asset_rows(job_id)
    assert (asset["kind"], asset["content_type"], asset["bucket"]) == ("video", "video/mp4", "video7b_fast_enhanced")


async def test_a_worker_that_never_reported_processing_can_complete(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    response = await api.callback({"job_id": job_id, "status": "completed", "assets": paths(user, job_id)})
    assert response.status_code == 200, response.text
    row = await api.job_row(job_id)
    assert (row["status"], row["attempts"]) == ("completed", 1)


async def test_completed_without_assets_is_400(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    assert_refused(await api.callback({"job_id": job_id, "status": "completed", "attempt": 1}), 400)
    assert (await api.job_row(job_id))["status"] == "processing"


@pytest.mark.parametrize("bad", ["{other}/x.png", "{user}/../{other}/x.png", "/{user}/x.png", "x.png",
                                 "{user}/a/../../x.png", "{user}//x.png", "{user}\\x.png"])
async def test_assets_outside_the_owners_folder_are_400(api: Api, user: uuid.UUID, bad: str) -> None:
    job_id = await running_job(api, user)
    path = bad.format(user=user, other=uuid.uuid4())
    response = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1,
                                   "assets": [*paths(user, job_id), path]})
    assert_refused(response, 400)
    assert (await api.job_row(job_id))["status"] == "processing"
    assert await api.asset_rows(job_id) == []


@pytest.mark.parametrize("metadata", [{"size_bytes": "big"}, {"size_bytes": -1}, {"size_bytes": [1]},
                                      {"content_type": 7}], ids=repr)
async def test_asset_metadata_the_rows_cannot_hold_is_400(api: Api, user: uuid.UUID,
                                                          metadata: dict[str, Any]) -> None:
    job_id = await running_job(api, user)
    response = await api.callback({"job_id": job_id, "status": "completed", "attempt": 1,
                                   "assets": [{"url": paths(user, job_id)[0], "metadata": metadata}]})
    assert_refused(response, 400)
    assert (await api.job_row(job_id))["status"] == "processing"


# --- failed ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["errorMessage", "error_message"])
async def test_failed_records_the_error_and_refunds_at_once(api: Api, user: uuid.UUID, spelling: str) -> None:
    job_id = await running_job(api, user, "video_fast")  # costs 3 of 10
    assert await api.balance(user) == 7
    response = await api.callback({"job_id": job_id, "status": "failed", "attempt": 1, spelling: "CUDA OOM"})
    assert response.status_code == 200, response.text
    row = await api.job_row(job_id)
    assert (row["status"], row["error_message"]) == ("failed", "CUDA OOM")
    assert row["completed_at"] is not None
    assert await api.balance(user) == 10
    assert await api.ledger_sum(job_id) == 0
    assert [e["kind"] for e in await api.ledger(user)] == ["charge", "refund"]


async def test_a_queued_job_can_fail_before_it_ran(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    assert (await api.callback({"job_id": job_id, "status": "failed", "error_message": "bad input"})).status_code == 200
    assert (await api.job_row(job_id))["status"] == "failed"
    assert await api.ledger_sum(job_id) == 0


async def test_a_finished_job_refuses_other_terminal_news(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    assert (await api.callback({"job_id": job_id, "status": "completed", "attempt": 1,
                                "assets": paths(user, job_id)})).status_code == 200
    assert_refused(await api.callback({"job_id": job_id, "status": "failed", "attempt": 1}), 409)
    assert_refused(await api.claim(job_id, "worker-2"), 409)
    row = await api.job_row(job_id)
    assert row["status"] == "completed"
    assert await api.ledger_sum(job_id) == -1


async def test_a_canceled_job_cannot_be_claimed(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    assert (await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))).status_code == 200
    assert_refused(await api.claim(job_id), 409)
    assert (await api.job_row(job_id))["status"] == "canceled"


async def test_a_job_out_of_tries_is_failed_and_refunded_at_its_next_claim(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    for attempt in range(1, api.settings.max_attempts + 1):
        assert (await api.claim(job_id)).json()["attempt"] == attempt
        handed = await api.callback({"job_id": job_id, "status": "queued", "attempt": attempt})
        assert handed.status_code == 200, handed.text
    assert_refused(await api.claim(job_id), 409)
    row = await api.job_row(job_id)
    assert (row["status"], row["attempts"]) == ("failed", api.settings.max_attempts)
    assert await api.balance(user) == 10 and await api.ledger_sum(job_id) == 0


# --- Idempotency by webhook-id ------------------------------------------------------------------------


async def test_a_replayed_callback_gets_the_same_answer_and_changes_nothing(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user, "sdxl_image_high")
    body = {"job_id": job_id, "status": "completed", "attempt": 1, "assets": paths(user, job_id, 6)}
    first = await api.callback(body, msg_id="msg_done")
    row = await api.job_row(job_id)
    replay = await api.callback(body, msg_id="msg_done")
    assert replay.status_code == first.status_code == 200
    assert {**replay.json(), "duplicate": False} == first.json()
    assert replay.json()["duplicate"] is True
    assert await api.job_row(job_id) == row
    assert len(await api.asset_rows(job_id)) == 6


async def test_a_replayed_refusal_gets_the_same_refusal(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    body = {"job_id": job_id, "status": "completed", "attempt": 1, "assets": [f"{uuid.uuid4()}/x.png"]}
    first = await api.callback(body, msg_id="msg_bad")
    replay = await api.callback(body, msg_id="msg_bad")
    assert first.status_code == replay.status_code == 400
    assert first.json() == replay.json()


async def test_the_same_webhook_id_with_another_body_is_409(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    assert (await api.callback({"job_id": job_id, "status": "processing", "attempt": 1, "progress": 10},
                               msg_id="msg_reused")).status_code == 200
    response = await api.callback({"job_id": job_id, "status": "failed", "attempt": 1}, msg_id="msg_reused")
    assert_refused(response, 409)
    row = await api.job_row(job_id)
    assert (row["status"], row["progress"]) == ("processing", 10)
    assert await api.ledger_sum(job_id) == -1


async def test_concurrent_replays_of_one_completion_complete_once(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user, "sdxl_image_fast")
    body = {"job_id": job_id, "status": "completed", "attempt": 1, "assets": paths(user, job_id, 6)}
    responses = await asyncio.gather(*(api.callback(body, msg_id="msg_storm") for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 9
    assert [a["position"] for a in await api.asset_rows(job_id)] == list(range(6))
    assert (await api.job_row(job_id))["status"] == "completed"


async def test_concurrent_completions_with_distinct_webhook_ids_complete_once(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user, "sdxl_image_fast")
    body = {"job_id": job_id, "status": "completed", "attempt": 1, "assets": paths(user, job_id, 6)}
    responses = await asyncio.gather(*(api.callback(body) for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert len(await api.asset_rows(job_id)) == 6


async def test_concurrent_failures_refund_once(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user, "video_high")  # costs 5 of 10
    body = {"job_id": job_id, "status": "failed", "attempt": 1, "error_message": "boom"}
    responses = await asyncio.gather(*(api.callback(body) for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert await api.balance(user) == 10
    assert [e["kind"] for e in await api.ledger(user)] == ["charge", "refund"]


# --- Fencing by attempt -------------------------------------------------------------------------------


async def requeued_and_reclaimed(api: Api, user: uuid.UUID) -> str:
    """A job whose first attempt handed it back and whose second attempt is running."""
    job_id = await running_job(api, user)
    handed = await api.callback({"job_id": job_id, "status": "queued", "attempt": 1})
    assert handed.status_code == 200 and handed.json()["status"] == "queued"
    reclaimed = await api.claim(job_id, "worker-2")
    assert reclaimed.json()["attempt"] == 2
    return job_id


@pytest.mark.parametrize("status", ["completed", "failed", "processing", "queued"])
async def test_a_callback_from_a_stale_attempt_is_409_and_changes_nothing(api: Api, user: uuid.UUID,
                                                                         status: str) -> None:
    job_id = await requeued_and_reclaimed(api, user)
    row = await api.job_row(job_id)
    stale = {"job_id": job_id, "status": status, "attempt": 1, "progress": 50, "assets": paths(user, job_id)}
    assert_refused(await api.callback(stale), 409)
    assert await api.job_row(job_id) == row
    assert await api.asset_rows(job_id) == []
    assert await api.ledger_sum(job_id) == -1


@pytest.mark.parametrize("status", ["completed", "failed", "processing"])
async def test_a_stale_attempt_cannot_touch_the_job_while_it_waits_again(api: Api, user: uuid.UUID,
                                                                         status: str) -> None:
    # Attempt 1 handed the job back (or the sweeper re-queued it); before anyone claims it again,
    # a late callback of attempt 1 arrives.
    job_id = await running_job(api, user)
    assert (await api.callback({"job_id": job_id, "status": "queued", "attempt": 1})).status_code == 200
    row = await api.job_row(job_id)
    stale = {"job_id": job_id, "status": status, "attempt": 1, "progress": 50, "assets": paths(user, job_id)}
    assert_refused(await api.callback(stale), 409)
    assert await api.job_row(job_id) == row
    assert (await api.claim(job_id, "worker-2")).json()["attempt"] == 2


async def test_the_current_attempt_completes_after_a_requeue(api: Api, user: uuid.UUID) -> None:
    job_id = await requeued_and_reclaimed(api, user)
    response = await api.callback({"job_id": job_id, "status": "completed", "attempt": 2,
                                   "assets": paths(user, job_id)})
    assert response.status_code == 200 and response.json()["attempt"] == 2
    assert (await api.job_row(job_id))["status"] == "completed"


# --- Bodies that are not callbacks ----------------------------------------------------------------------


async def test_an_unknown_job_is_404(api: Api) -> None:
    assert_refused(await api.callback({"job_id": str(uuid.uuid4()), "status": "processing"}), 404)
    assert_refused(await api.callback({"job_id": "not-a-uuid", "status": "processing"}), 404)


@pytest.mark.parametrize("body", [{"status": "processing"}, {"job_id": "x", "status": "exploded"},
                                  {"job_id": "x", "status": "processing", "progress": 101}])
async def test_an_invalid_callback_body_is_400(api: Api, body: dict[str, Any]) -> None:
    assert_refused(await api.callback(body), 400)


async def test_a_worker_cannot_report_canceled(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    assert_refused(await api.callback({"job_id": job_id, "status": "canceled", "attempt": 1}), 400)
    assert (await api.job_row(job_id))["status"] == "processing"


async def test_a_malformed_callback_body_is_422(api: Api) -> None:
    assert_refused(await api.callback({}, raw=b'{"job_id": '), 422)



# --- Files of a completion that came too late ------------------------------------------------------------------


async def uploaded(api: Api, job_id: str, names: list[str]) -> list[Path]:
    """Put files in local storage as a worker would, in the job's bucket; returns where they lie."""
    bucket = DEFAULT_CATALOG[(await api.job_row(job_id))["job_type"]].bucket
    for name in names:
        await api.state.storage.upload(bucket, name, b"\x89PNG not really", "image/png")
    return [Path(api.settings.storage_dir) / bucket / name for name in names]


async def test_files_of_a_completion_refused_after_the_job_failed_are_removed(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    assert (await api.callback({"job_id": job_id, "status": "failed", "attempt": 1})).status_code == 200
    files = await uploaded(api, job_id, paths(user, job_id, 2))
    late = {"job_id": job_id, "status": "completed", "attempt": 1, "assets": paths(user, job_id, 2)}
    msg_id = f"msg_{uuid.uuid4().hex}"
    assert_refused(await api.callback(late, msg_id=msg_id), 409)
    assert not any(f.exists() for f in files)
    # A replay gets the same refusal and has nothing left to remove.
    assert_refused(await api.callback(late, msg_id=msg_id), 409)


async def test_files_of_a_completion_refused_after_a_cancel_are_removed(api: Api, user: uuid.UUID) -> None:
    job_id = await queued_job(api, user)
    canceled = await api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.auth(user))
    assert canceled.status_code == 200, canceled.text
    files = await uploaded(api, job_id, paths(user, job_id))
    assert_refused(await api.callback({"job_id": job_id, "status": "completed", "assets": paths(user, job_id)}), 409)
    assert not files[0].exists()


async def test_a_refused_completion_removes_nothing_that_is_not_this_jobs(api: Api, user: uuid.UUID) -> None:
    job_id = await running_job(api, user)
    other_job = await running_job(api, user)
    assert (await api.callback({"job_id": job_id, "status": "failed", "attempt": 1})).status_code == 200
    others = await uploaded(api, job_id, [*paths(user, other_job), f"{user}/avatar.png"])
    late = {"job_id": job_id, "status": "completed", "attempt": 1,
            "assets": [*paths(user, other_job), f"{user}/avatar.png"]}
    assert_refused(await api.callback(late), 409)
    assert all(f.exists() for f in others)


async def test_files_of_a_stale_completion_stay_while_the_job_runs_again(api: Api, user: uuid.UUID) -> None:
    # Attempts of one job upload to the same paths: the running attempt's files must not be touched.
    job_id = await requeued_and_reclaimed(api, user)
    files = await uploaded(api, job_id, paths(user, job_id))
    stale = {"job_id": job_id, "status": "completed", "attempt": 1, "assets": paths(user, job_id)}
    assert_refused(await api.callback(stale), 409)
    assert files[0].exists()
    assert (await api.callback({**stale, "attempt": 2})).status_code == 200
    assert_refused(await api.callback(stale), 409)  # the job is completed now: its files are its assets
    assert files[0].exists()

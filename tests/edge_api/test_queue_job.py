"""POST /api/queue-job over real HTTP: all ten job types, the reference's response, credits, idempotency."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest
from harness import Api, serve_api

from edge_api.settings import ApiSettings
from jobs.catalog import DEFAULT_CATALOG, SDXL_QUEUE, WAN_QUEUE
from jobs.messages import MAX_SEED

JOB_TYPES = DEFAULT_CATALOG.job_types


@pytest.mark.parametrize("job_type", JOB_TYPES)
async def test_each_job_type_is_queued_on_its_queue_with_the_catalog_parameters(api: Api, user: uuid.UUID,
                                                                                job_type: str) -> None:
    spec = DEFAULT_CATALOG[job_type]
    await api.set_balance(user, 100)
    response = await api.submit(user, job_type, prompt="a fox in the snow", negative_prompt="blurry", seed=42)
    assert response.status_code == 200, response.text
    body = response.json()
    job_id = body["job"]["id"]

    [queued] = await api.queued_messages(spec.queue)
    other = WAN_QUEUE if spec.queue == SDXL_QUEUE else SDXL_QUEUE
    assert await api.queued_messages(other) == []
    assert queued["id"] == job_id
    assert queued["type"] == job_type
    assert queued["prompt"] == "a fox in the snow"
    assert queued["user_id"] == str(user)
    assert datetime.fromisoformat(queued["created_at"]).tzinfo is not None
    assert queued["negative_prompt"] == ("blurry" if spec.is_sdxl else None)
    assert queued["model_variant"] == ("lustify_sdxl" if spec.is_sdxl else "wan_2_1_1_3b")
    assert queued["bucket"] == job_type
    config = queued["config"]
    assert config["size"] == ("1024*1024" if spec.is_sdxl else "480*832")
    assert (config["width"], config["height"]) == (spec.width, spec.height)
    assert config["sample_steps"] == spec.steps
    assert config["sample_guide_scale"] == spec.guidance
    assert config["sample_shift"] == spec.shift
    assert config["frame_num"] == spec.frames
    assert config["fps"] == spec.fps
    assert config["num_images"] == spec.num_outputs
    assert config["enhance_prompt"] is spec.enhanced
    assert config["content_type"] == spec.content_type
    assert config["file_extension"] == spec.file_extension
    assert config["max_file_bytes"] == spec.max_file_bytes
    assert config["seed"] == 42
    assert queued["metadata"]["num_images"] == spec.num_outputs
    assert isinstance(queued["metadata"]["queue_timestamp"], float)

    row = await api.job_row(job_id)
    assert (row["status"], row["queue"], row["price"], row["attempts"]) == ("queued", spec.queue, spec.price, 0)
    assert (row["format"], row["quality"], row["model_type"]) == (spec.output, spec.quality, spec.family)
    assert row["enqueued_at"] is not None
    assert await api.balance(user) == 100 - spec.price


@pytest.mark.parametrize("job_type", ["sdxl_image_fast", "video_high"])
async def test_response_has_exactly_the_reference_shape(api: Api, user: uuid.UUID, job_type: str) -> None:
    spec = DEFAULT_CATALOG[job_type]
    await api.set_balance(user, 10)
    response = await api.submit(user, job_type, prompt="beautiful woman in garden", credits=1)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "job", "message", "queueLength", "modelVariant", "isSDXL",
                         "negativePromptSupported", "jobType", "queue"}
    assert (body["jobType"], body["queue"]) == (job_type, spec.queue)  # as the ourvidz edge function answers
    assert set(body["job"]) == {"id", "user_id", "job_type", "status", "created_at", "metadata"}
    assert body["success"] is True
    assert isinstance(body["message"], str) and body["message"]
    assert body["queueLength"] == 1
    assert body["modelVariant"] == spec.model_variant
    assert body["isSDXL"] is spec.is_sdxl
    assert body["negativePromptSupported"] is spec.is_sdxl
    job = body["job"]
    assert uuid.UUID(job["id"])
    assert (job["user_id"], job["job_type"], job["status"]) == (str(user), job_type, "queued")
    assert datetime.fromisoformat(job["created_at"]).tzinfo is not None
    assert job["metadata"]["prompt"] == "beautiful woman in garden"
    assert job["metadata"]["bucket"] == job_type
    assert job["metadata"]["num_images"] == spec.num_outputs
    # The server decides the price: the client's `credits: 1` is not what a video_high costs.
    assert job["metadata"]["credits"] == spec.price
    assert await api.balance(user) == 10 - spec.price


async def test_functions_v1_prefix_serves_the_same_route(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 1)
    response = await api.client.post("/functions/v1/queue-job", headers=api.auth(user),
                                     json={"jobType": "image_fast", "metadata": {"prompt": "a cat"}})
    assert response.status_code == 200, response.text
    assert [m["id"] for m in await api.queued_messages(WAN_QUEUE)] == [response.json()["job"]["id"]]


async def test_queue_length_counts_the_jobs_waiting_on_that_queue(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    lengths = [(await api.submit(user, "sdxl_image_fast")).json()["queueLength"] for _ in range(3)]
    assert lengths == [1, 2, 3]
    assert (await api.submit(user, "image_fast")).json()["queueLength"] == 1


async def test_optional_ids_seed_and_extra_metadata_travel_with_the_job(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    project, video = uuid.uuid4(), uuid.uuid4()
    body = {"jobType": "video_fast", "projectId": str(project), "videoId": str(video),
            "metadata": {"prompt": "waves", "seed": MAX_SEED, "style": "noir", "negative_prompt": "ignored"}}
    response = await api.client.post("/api/queue-job", json=body, headers=api.auth(user))
    assert response.status_code == 200, response.text
    [queued] = await api.queued_messages(WAN_QUEUE)
    assert (queued["project_id"], queued["video_id"], queued["image_id"]) == (str(project), str(video), None)
    assert queued["config"]["seed"] == MAX_SEED
    assert queued["negative_prompt"] is None  # Wan takes no negative prompt
    metadata = response.json()["job"]["metadata"]
    assert metadata["style"] == "noir"
    assert "negative_prompt" not in metadata


async def test_without_a_seed_the_server_picks_one(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    await api.submitted(user, "image_fast")
    [queued] = await api.queued_messages(WAN_QUEUE)
    assert 0 <= queued["config"]["seed"] <= MAX_SEED
    assert queued["metadata"]["seed"] == queued["config"]["seed"]


# --- Credits ---------------------------------------------------------------------------------------


async def test_too_few_credits_is_402_and_leaves_nothing_behind(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 4)
    response = await api.submit(user, "video_high")  # costs 5
    assert response.status_code == 402
    body = response.json()
    assert body["success"] is False and body["error"] == "Insufficient credits"
    assert "5" in body["details"] and "4" in body["details"]
    assert body["suggestedAction"]
    assert await api.job_rows(user) == []
    assert await api.ledger(user) == []
    assert await api.queued_messages(WAN_QUEUE) == []
    assert await api.balance(user) == 4


async def test_a_user_never_seen_has_no_credits_by_default(api: Api, user: uuid.UUID) -> None:
    assert (await api.submit(user)).status_code == 402
    assert await api.balance(user) is None


async def test_each_job_is_charged_its_price_once_in_the_ledger(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    job_ids = [await api.submitted(user, t) for t in ("sdxl_image_high", "video_fast", "image_fast")]
    for job_id, job_type in zip(job_ids, ("sdxl_image_high", "video_fast", "image_fast"), strict=True):
        assert await api.ledger_sum(job_id) == -DEFAULT_CATALOG[job_type].price
    entries = await api.ledger(user)
    assert [(e["kind"], str(e["job_id"])) for e in entries] == [("charge", j) for j in job_ids]
    assert await api.balance(user) == 20 - 2 - 3 - 1


async def test_fifty_concurrent_submits_with_credits_for_twenty_make_exactly_twenty_jobs(api: Api,
                                                                                         user: uuid.UUID) -> None:
    await api.set_balance(user, 20)
    responses = await asyncio.gather(*(api.submit(user, "sdxl_image_fast", prompt=f"fox {n}") for n in range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 20 + [402] * 30
    assert await api.balance(user) == 0
    rows = await api.job_rows(user)
    assert len(rows) == 20
    accepted = {r.json()["job"]["id"] for r in responses if r.status_code == 200}
    assert {str(r["id"]) for r in rows} == accepted
    assert {m["id"] for m in await api.queued_messages(SDXL_QUEUE)} == accepted
    ledger = await api.ledger(user)
    assert len(ledger) == 20 and sum(e["amount"] for e in ledger) == -20


async def test_starting_credits_are_given_to_a_first_seen_user_once(api_settings: ApiSettings,
                                                                    user: uuid.UUID) -> None:
    async for api in serve_api(api_settings.model_copy(update={"starting_credits": 3})):
        assert [(await api.submit(user)).status_code for _ in range(4)] == [200, 200, 200, 402]
        assert await api.balance(user) == 0
        assert len(await api.job_rows(user)) == 3


async def test_starting_credits_survive_concurrent_first_submits(api_settings: ApiSettings) -> None:
    async for api in serve_api(api_settings.model_copy(update={"starting_credits": 3})):
        newcomer = uuid.uuid4()
        responses = await asyncio.gather(*(api.submit(newcomer) for _ in range(8)))
        assert sorted(r.status_code for r in responses) == [200] * 3 + [402] * 5
        assert await api.balance(newcomer) == 0
        assert len(await api.job_rows(newcomer)) == 3


# --- Idempotency-Key --------------------------------------------------------------------------------


async def test_same_idempotency_key_and_body_is_the_same_job_charged_once(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    key = {"Idempotency-Key": "order-1"}
    first = await api.submit(user, "image_fast", headers=key)
    second = await api.submit(user, "image_fast", headers=key)
    assert first.status_code == second.status_code == 200
    assert first.json()["job"] == second.json()["job"]
    assert await api.balance(user) == 9
    assert len(await api.ledger(user)) == 1
    assert len(await api.queued_messages(WAN_QUEUE)) == 1


async def test_concurrent_requests_with_one_idempotency_key_make_one_job(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    responses = await asyncio.gather(*(api.submit(user, "image_fast", headers={"Idempotency-Key": "burst"})
                                       for _ in range(10)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["job"]["id"] for r in responses}) == 1
    assert await api.balance(user) == 9
    assert len(await api.job_rows(user)) == 1
    assert len(await api.queued_messages(WAN_QUEUE)) == 1


async def test_same_idempotency_key_with_another_body_is_409(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 10)
    assert (await api.submit(user, "image_fast", prompt="a", headers={"Idempotency-Key": "k"})).status_code == 200
    response = await api.submit(user, "image_fast", prompt="b", headers={"Idempotency-Key": "k"})
    assert response.status_code == 409
    assert response.json()["success"] is False and "Idempotency-Key" in response.json()["error"]
    assert await api.balance(user) == 9
    assert len(await api.job_rows(user)) == 1


async def test_idempotency_keys_belong_to_one_user(api: Api) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await api.set_balance(alice, 1)
    await api.set_balance(bob, 1)
    a = await api.submit(alice, headers={"Idempotency-Key": "shared"})
    b = await api.submit(bob, headers={"Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 200
    assert a.json()["job"]["id"] != b.json()["job"]["id"]
    assert b.json()["job"]["user_id"] == str(bob)


async def test_an_idempotency_key_over_200_characters_is_400(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 1)
    response = await api.submit(user, headers={"Idempotency-Key": "k" * 201})
    assert response.status_code == 400
    assert await api.balance(user) == 1

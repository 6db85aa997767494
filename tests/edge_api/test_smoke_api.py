"""First light: the API answers over HTTP and a job is accepted and queued."""

import uuid

from harness import Api


async def test_healthz_answers_ok(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.json() == {"status": "ok"}


async def test_submit_charges_and_queues(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    response = await api.submit(user, "sdxl_image_fast")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["queueLength"] == 1

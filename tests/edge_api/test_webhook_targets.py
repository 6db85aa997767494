"""A webhook URL is never a way into our network: private addresses are refused in production, twice."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator

import pytest
from harness import serve_api
from webhook_receiver import Receiver, running_receiver, wait_for

from edge_api.settings import ApiSettings
from edge_api.webhook_targets import RefusedTarget, is_public, parse, resolve


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::",
])
def test_loopback_private_link_local_metadata_and_their_ipv6_forms_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_global_unicast_addresses_are_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(("url", "why"), [
    ("http://example.com/hook", "https://"), ("ftp://example.com/", "https://"),
    ("https://user:secret@example.com/", "credentials"), ("https:///path", "host"),
])
def test_production_urls_must_be_https_with_a_host_and_no_credentials(url: str, why: str) -> None:
    with pytest.raises(RefusedTarget, match=why):
        parse(url, require_https=True)


async def test_a_name_that_resolves_to_loopback_is_refused_and_a_public_address_is_pinned() -> None:
    with pytest.raises(RefusedTarget, match=r"127\.0\.0\.1|::1"):
        await resolve(parse("https://localhost/hook", require_https=True), allow_private=False)
    target = await resolve(parse("https://93.184.216.34:8443/hook?a=1", require_https=True), allow_private=False)
    assert str(target.pinned_url) == "https://93.184.216.34:8443/hook?a=1"
    local = await resolve(parse("http://localhost:9/hook", require_https=False), allow_private=True)
    assert local.address in ("127.0.0.1", "::1") and local.pinned_url.host == local.address


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as r:
        yield r


def production(settings: ApiSettings, receiver: Receiver, **changes: object) -> ApiSettings:
    return settings.model_copy(update={"environment": "production", "webhook_secret": receiver.secret,
                                       "webhook_poll_seconds": 0.05, **changes})


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://localhost/hook", "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.8/hook", "https://[::1]/hook", "https://[::ffff:192.168.0.1]/hook", "http://example.com/hook",
])
async def test_in_production_a_webhook_on_a_private_address_is_refused_at_submit(
        api_settings: ApiSettings, receiver: Receiver, user: uuid.UUID, url: str) -> None:
    async for api in serve_api(production(api_settings, receiver)):
        await api.set_balance(user, 5)
        response = await api.client.post("/api/queue-job", headers=api.auth(user), json={
            "jobType": "sdxl_image_fast", "metadata": {"prompt": "x"}, "webhook": url})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "Invalid webhook" and await api.balance(user) == 5


async def test_in_production_an_address_that_became_private_is_refused_at_delivery(
        api_settings: ApiSettings, receiver: Receiver, user: uuid.UUID) -> None:
    # The default URL is checked at each delivery, as a job's own URL is after DNS changes.
    hook = f"https://localhost:{receiver.url.rsplit(':', 1)[1]}/hook"
    async for api in serve_api(production(api_settings, receiver, webhook_url=hook, webhook_events=["queued"],
                                          webhook_retry_base_seconds=0.05, webhook_retry_max_interval_seconds=0.1)):
        await api.set_balance(user, 5)
        response = await api.submit(user)
        assert response.status_code == 200, response.text
        job_id = response.json()["job"]["id"]

        found: list[dict[str, object]] = []
        for _ in range(400):
            log = (await api.client.get(f"/api/jobs/{job_id}/webhooks", headers=api.auth(user))).json()
            found = log["deliveries"][0]["attempts"]
            if len(found) >= 2:
                break
            await asyncio.sleep(0.05)
        assert len(found) >= 2
        assert all(t["status_code"] is None and "not a public address" in str(t["error"]) for t in found)
        assert receiver.hits == {}


async def test_in_development_a_loopback_receiver_is_reached_at_the_checked_address_with_the_urls_host(
        api_settings: ApiSettings, receiver: Receiver, user: uuid.UUID) -> None:
    settings = api_settings.model_copy(update={"webhook_secret": receiver.secret, "webhook_poll_seconds": 0.05})
    async for local in serve_api(settings):
        await local.set_balance(user, 5)
        port = receiver.url.rsplit(":", 1)[1]
        response = await local.client.post("/api/queue-job", headers=local.auth(user), json={
            "jobType": "sdxl_image_fast", "metadata": {"prompt": "x"}, "webhook": f"http://localhost:{port}/hook",
            "webhookEvents": ["queued"]})
        assert response.status_code == 200, response.text
        await wait_for(lambda: receiver.accepted, what="the delivery")
        assert receiver.hosts == [f"localhost:{port}"]

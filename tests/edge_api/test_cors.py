"""CORS: a page on another origin can call the API with the headers Supabase clients send."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from harness import Api, serve_api

from edge_api.settings import ApiSettings

SUPABASE_HEADERS = "authorization, x-client-info, apikey, content-type, idempotency-key"


async def test_a_preflight_from_any_origin_allows_the_supabase_client_headers(api: Api) -> None:
    response = await api.client.options("/api/queue-job", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": SUPABASE_HEADERS})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].lower().split(",")}
    assert {h.strip() for h in SUPABASE_HEADERS.split(",")} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]


async def test_the_functions_v1_path_answers_preflights_too(api: Api) -> None:
    response = await api.client.options("/functions/v1/queue-job", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-client-info, apikey, content-type"})
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"


async def test_answers_refusals_included_carry_the_origin_and_expose_retry_after(api: Api, user: uuid.UUID) -> None:
    refused = await api.client.get("/api/me", headers={"Origin": "https://app.example.com"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"
    assert "retry-after" in refused.headers["access-control-expose-headers"].lower()


@pytest.fixture
async def only_one_origin(api_settings: ApiSettings) -> AsyncIterator[Api]:
    async for harness in serve_api(api_settings.model_copy(update={"cors_origins": ["https://app.example.com"]})):
        yield harness


async def test_with_a_list_of_origins_only_those_are_allowed(only_one_origin: Api) -> None:
    api = only_one_origin
    ok = await api.client.get("/api/catalog", headers={"Origin": "https://app.example.com"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    other = await api.client.get("/api/catalog", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers
    preflight = await api.client.options("/api/queue-job", headers={
        "Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 400


def test_the_origins_read_from_the_environment_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OURVIDZ_CORS_ORIGINS", "https://a.example.com, https://b.example.com")
    assert ApiSettings().cors_origins == ["https://a.example.com", "https://b.example.com"]

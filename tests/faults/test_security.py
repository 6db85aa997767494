"""No one let in: bad tokens on every user route, another user's ids, forged callbacks, oversized and malformed
bodies, and path tricks in ids and file names. Each family counts the requests wrongly accepted (a 2xx, or
any change in the store) and the ones answered with a 5xx; both must be 0.

tests/edge_api covers single cases of several of these on one route each; here every case meets every
route it applies to, and the outcome is a figure in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
import sqlalchemy as sa
from chaos import FAULT_CATALOG, FakeWorker, served
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import JWT_SECRET, Api
from invariants import Figures, audit, record

from edge_api.settings import ApiSettings
from jobs.tables import assets, callback_receipts, credit_ledger, jobs, profiles
from jobs.webhooks import signed_headers

pytestmark = pytest.mark.timeout(600)

BALANCE = 50


@dataclass
class Scene:
    """A victim with a completed job (and its files), a queued job and a running one; an attacker with a token."""

    api: Api
    victim: uuid.UUID
    attacker: uuid.UUID
    completed: str
    queued: str
    running: str
    running_attempt: int
    asset_id: str
    asset_path: str
    asset_url: str
    tally: Figures = field(default_factory=Figures)
    attempts: int = 0

    def auth(self, user: uuid.UUID) -> dict[str, str]:
        return self.api.auth(user)


async def _snapshot(api: Api) -> tuple[Any, ...]:
    """Everything an accepted attack could change: jobs, ledger, balances, assets."""
    async with api.state.engine.connect() as conn:
        job_rows = sorted((str(r.id), r.status, r.attempts, r.progress, json.dumps(r.metadata, sort_keys=True))
                          for r in await conn.execute(sa.select(jobs)))
        ledger = sorted((str(r.job_id), r.kind, r.amount) for r in await conn.execute(sa.select(credit_ledger)))
        balances = sorted((str(r.id), r.token_balance) for r in await conn.execute(sa.select(profiles)))
        asset_rows = sorted((str(r.id), r.path) for r in await conn.execute(sa.select(assets)))
    return job_rows, ledger, balances, asset_rows


@pytest.fixture
async def scene(api_settings: ApiSettings) -> AsyncIterator[Scene]:
    settings = api_settings.model_copy(update={"catalog_overrides": FAULT_CATALOG,
                                               "public_base_url": "http://testserver"})
    async with served(settings) as api:
        victim, attacker = uuid.uuid4(), uuid.uuid4()
        await api.set_balance(victim, BALANCE)
        await api.set_balance(attacker, BALANCE)
        worker = FakeWorker(api, "gpu-honest")
        await worker.heartbeat()
        done = await api.submitted(victim, "sdxl_image_high", prompt="the victim's secret prompt")
        taken = await worker.take(timeout=1)
        assert taken is not None and taken[1]["id"] == done
        attempt = await worker.claim(done)
        files = worker.assets(taken[1], 1)
        for item in files:
            await api.state.storage.upload("sdxl_image_high", item["url"], b"\x89PNG victim", "image/png")
        answer = await worker.report(done, "completed", attempt=attempt, assets=files)
        assert answer.status_code == 200, answer.text
        running = await api.submitted(victim, "sdxl_image_fast", prompt="the victim's running job")
        taken = await worker.take(timeout=1)
        assert taken is not None
        running_attempt = await worker.claim(running)
        assert running_attempt is not None
        queued = await api.submitted(victim, "sdxl_image_fast", prompt="the victim's queued job")
        view = (await api.client.get(f"/api/jobs/{done}", headers=api.auth(victim))).json()
        [asset] = view["assets"]
        yield Scene(api, victim, attacker, done, queued, running, running_attempt, asset["id"], asset["path"],
                    asset["url"])


async def _attack(scene: Scene, what: str, request: Callable[[], Any], allowed: set[int],
                  leak: str | None = None, owner: bool = False) -> httpx.Response:
    """Send one hostile request; count it wrongly accepted if it got a 2xx/3xx, changed the store, or leaked.

    `owner`: the request is the owner's own (a strange spelling of a legitimate request): only a 5xx or a
    change in the store counts against it."""
    before = await _snapshot(scene.api)
    response: httpx.Response = await request()
    after = await _snapshot(scene.api)
    scene.attempts += 1
    if response.status_code >= 500:
        scene.tally.server_errors += 1
        scene.tally.problems.append(f"{what}: {response.status_code} {response.text[:200]}")
    elif owner:
        if before != after:
            scene.tally.wrongly_accepted += 1
            scene.tally.problems.append(f"{what}: the store changed")
    elif response.status_code < 400 or before != after:
        scene.tally.wrongly_accepted += 1
        scene.tally.problems.append(f"{what}: accepted with {response.status_code}; store changed: {before != after}")
    elif leak is not None and leak in response.text:
        scene.tally.wrongly_accepted += 1
        scene.tally.problems.append(f"{what}: the answer leaks {leak!r}")
    elif response.status_code not in allowed:
        scene.tally.problems.append(f"{what}: refused with {response.status_code}, expected one of {sorted(allowed)}")
    return response


async def _finish(scene: Scene, family: str, started: float) -> None:
    figures = await audit(scene.api.state.engine, scene.api.state.catalog, require_terminal=False,
                          starting_balances={scene.victim: BALANCE, scene.attacker: BALANCE})
    figures.wrongly_accepted += scene.tally.wrongly_accepted
    figures.server_errors += scene.tally.server_errors
    figures.problems.extend(scene.tally.problems)
    refused_otherwise = [p for p in scene.tally.problems if "expected one of" in p]
    record(f"security-{family}", figures, started, requests=scene.attempts, refused_unexpectedly=len(refused_otherwise))
    assert not refused_otherwise, refused_otherwise


# --- Tokens ------------------------------------------------------------------------------------------


def _claims(user: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": str(user), "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 600,
            **overrides}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(user: uuid.UUID) -> dict[str, str]:
    good = jwt.encode(_claims(user), JWT_SECRET)
    header, payload, signature = good.split(".")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "forged with another secret": jwt.encode(_claims(user), "another-secret-that-is-long-enough-for-it"),
        "expired": jwt.encode(_claims(user, exp=int(time.time()) - 60), JWT_SECRET),
        "not yet valid": jwt.encode(_claims(user, nbf=int(time.time()) + 600), JWT_SECRET),
        "wrong audience": jwt.encode(_claims(user, aud="another-app"), JWT_SECRET),
        "anon role": jwt.encode(_claims(user, role="anon"), JWT_SECRET),
        "service_role": jwt.encode(_claims(user, role="service_role"), JWT_SECRET),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg None with the old signature": f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{payload}.{signature}",
        "RS256 with a key not in any JWKS": jwt.encode(_claims(user), rsa_key, algorithm="RS256"),
        "HS256 signed with the empty secret": _hs256_empty(user),
        "payload of another user under a valid signature": f"{header}.{_b64(_claims(uuid.uuid4()))}.{signature}",
        "signature stripped": f"{header}.{payload}.",
        "sub not a user id": jwt.encode(_claims(user, sub="../admin"), JWT_SECRET),
    }


def _hs256_empty(user: uuid.UUID) -> str:
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(_claims(user))}"
    digest = hmac.new(b"", signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


def user_routes(scene: Scene) -> list[tuple[str, str, dict[str, Any] | None]]:
    body = {"jobType": "sdxl_image_fast", "metadata": {"prompt": "let me in"}}
    return [
        ("POST", "/api/queue-job", body), ("POST", "/functions/v1/queue-job", body), ("GET", "/api/jobs", None),
        ("GET", f"/api/jobs/{scene.completed}", None), ("POST", f"/api/jobs/{scene.queued}/cancel", None),
        ("GET", f"/api/jobs/{scene.completed}/events", None), ("GET", "/api/assets", None),
        ("DELETE", f"/api/assets/{scene.asset_id}", None), ("GET", "/api/me", None),
    ]


async def test_no_bad_token_gets_into_any_user_route(scene: Scene, started: float) -> None:
    for name, token in bad_tokens(scene.victim).items():
        for method, path, body in user_routes(scene):
            await _attack(scene, f"{name} on {method} {path}",
                          lambda m=method, p=path, b=body, t=token: scene.api.client.request(
                              m, p, json=b, headers={"Authorization": f"Bearer {t}"}), {401},
                          leak="secret prompt")
    # The stream also takes `?access_token=` (EventSource cannot send headers): the same tokens there.
    for name, token in bad_tokens(scene.victim).items():
        await _attack(scene, f"{name} as ?access_token=",
                      lambda t=token: scene.api.client.get(f"/api/jobs/{scene.completed}/events",
                                                          params={"access_token": t}), {401}, leak="secret prompt")
    # `?access_token=` is the stream's alone: elsewhere a valid token in the query opens nothing.
    valid = scene.api.token(scene.victim)
    for method, path, body in user_routes(scene):
        if path.endswith("/events"):
            continue
        await _attack(scene, f"valid token in the query of {method} {path}",
                      lambda m=method, p=path, b=body: scene.api.client.request(m, p, json=b,
                                                                                params={"access_token": valid}),
                      {401}, leak="secret prompt")
    await _finish(scene, "tokens", started)


# --- Another user's ids --------------------------------------------------------------------------------


async def test_another_users_jobs_and_assets_are_404_and_never_shown(scene: Scene, started: float) -> None:
    mine = scene.auth(scene.attacker)
    for job_id in (scene.completed, scene.queued, scene.running):
        await _attack(scene, f"read {job_id}", lambda j=job_id: scene.api.client.get(f"/api/jobs/{j}", headers=mine),
                      {404}, leak="secret prompt")
        await _attack(scene, f"cancel {job_id}",
                      lambda j=job_id: scene.api.client.post(f"/api/jobs/{j}/cancel", headers=mine), {404})
        await _attack(scene, f"stream {job_id}",
                      lambda j=job_id: scene.api.client.get(f"/api/jobs/{j}/events", headers=mine), {404})
    await _attack(scene, "delete the victim's asset",
                  lambda: scene.api.client.delete(f"/api/assets/{scene.asset_id}", headers=mine), {404})
    # The same key the victim could use makes the attacker's own job, never hands out the victim's.
    own = await scene.api.client.get("/api/jobs", headers=mine)
    listed = await scene.api.client.get("/api/assets", headers=mine)
    scene.attempts += 2
    for response in (own, listed):
        if response.status_code != 200 or scene.victim.hex[:8] in response.text or "secret prompt" in response.text:
            scene.tally.wrongly_accepted += 1
            scene.tally.problems.append(f"the attacker's own lists show the victim's data: {response.text[:200]}")
    await _finish(scene, "cross-user", started)


# --- Callbacks -------------------------------------------------------------------------------------------


async def test_forged_stale_and_tricky_callbacks_change_nothing(scene: Scene, started: float) -> None:
    api = scene.api
    secret = api.settings.callback_secret
    job = scene.running
    ext = "png"

    def completion(*paths: str, attempt: int | None = None) -> dict[str, Any]:
        return {"job_id": job, "status": "completed", "attempt": attempt or scene.running_attempt,
                "assets": [{"url": p, "type": "image"} for p in paths]}

    def post(body: bytes, headers: dict[str, str]) -> Callable[[], Any]:
        return lambda: api.client.post("/api/job-callback", content=body, headers=headers)

    good_path = f"{scene.victim}/{job}_0.{ext}"
    body = json.dumps(completion(good_path)).encode()
    fresh = signed_headers(secret, body, "msg_forged")
    cases: dict[str, tuple[bytes, dict[str, str], set[int]]] = {
        "unsigned": (body, {"content-type": "application/json"}, {401}),
        "signed with another secret": (body, signed_headers("whsec_" + base64.b64encode(b"x" * 32).decode(), body,
                                                            "msg_other"), {401}),
        "six minutes old": (body, signed_headers(secret, body, "msg_old", datetime.now(UTC) - timedelta(minutes=6)),
                            {401}),
        "six minutes ahead": (body, signed_headers(secret, body, "msg_ahead",
                                                   datetime.now(UTC) + timedelta(minutes=6)), {401}),
        "one body byte changed": (body.replace(b'"completed"', b'"completes"'), fresh, {401}),
        "signature of another webhook-id": (body, {**fresh, "webhook-id": "msg_someone_else"}, {401}),
        "empty signature": (body, {**fresh, "webhook-signature": "v1,"}, {401}),
        "signature without version": (body, {**fresh, "webhook-signature": fresh["webhook-signature"][3:]}, {401}),
        "timestamp not a number": (body, {**fresh, "webhook-timestamp": "soon"}, {401}),
    }
    for name, (raw, headers, allowed) in cases.items():
        await _attack(scene, f"callback {name}", post(raw, headers), allowed)

    # Signed by the real secret (a worker's own bug, or a leaked secret used carelessly): still refused.
    tricky_paths = {
        "a .. segment": f"{scene.victim}/../{scene.attacker}/{job}_0.{ext}",
        "only ..": "..",
        "an absolute path": f"/etc/{job}_0.{ext}",
        "another user's folder": f"{scene.attacker}/{job}_0.{ext}",
        "a backslash": f"{scene.victim}\\..\\{job}_0.{ext}",
        "a NUL byte": f"{scene.victim}/{job}_0.{ext}\x00.txt",
        "an empty segment": f"{scene.victim}//{job}_0.{ext}",
        "the owner's folder as a prefix of another": f"{scene.victim}x/{job}_0.{ext}",
    }
    for name, path in tricky_paths.items():
        await _attack(scene, f"asset path with {name}",
                      lambda p=path: api.callback(completion(p)), {400})
    stale = completion(good_path, attempt=scene.running_attempt + 1)
    await _attack(scene, "a stale attempt", lambda: api.callback(stale), {409})
    await _attack(scene, "a worker reporting canceled",
                  lambda: api.callback({"job_id": job, "status": "canceled", "attempt": scene.running_attempt}), {400})
    await _attack(scene, "a job id that is a path", lambda: api.callback({"job_id": "../../etc/passwd",
                                                                         "status": "failed"}), {404})
    # A webhook-id reused with another body: 409, and the first answer is kept.
    first = await api.callback({"job_id": job, "status": "processing", "attempt": scene.running_attempt,
                                "progress": 5}, msg_id="msg_reused")
    assert first.status_code == 200, first.text
    await _attack(scene, "a webhook-id reused with another body",
                  lambda: api.callback({"job_id": job, "status": "failed", "attempt": scene.running_attempt},
                                       msg_id="msg_reused"), {409})
    async with api.state.engine.connect() as conn:
        receipt = (await conn.execute(sa.select(callback_receipts.c.status_code)
                                      .where(callback_receipts.c.webhook_id == "msg_reused"))).scalar_one()
    assert receipt == 200
    # A worker's free text with U+0000 in it (an exception's message, a model's output): recorded, not a 500.
    for body in ({"job_id": job, "status": "processing", "attempt": scene.running_attempt,
                  "metadata": {"note\u0000": "a\u0000b"}},
                 {"job_id": scene.queued, "status": "failed", "error_message": "CUDA error\u0000"}):
        response = await api.callback(body)
        scene.attempts += 1
        if response.status_code != 200:
            scene.tally.server_errors += response.status_code >= 500
            scene.tally.problems.append(f"NUL in a worker's text: {response.status_code} {response.text[:200]}")
    await _finish(scene, "callbacks", started)


# --- Bodies ------------------------------------------------------------------------------------------------


async def test_oversized_and_malformed_bodies_are_refused_cleanly(scene: Scene, started: float) -> None:
    api = scene.api
    mine = {**scene.auth(scene.attacker), "content-type": "application/json"}
    limit = api.settings.max_body_bytes

    def submit(raw: bytes, headers: dict[str, str] | None = None) -> Callable[[], Any]:
        return lambda: api.client.post("/api/queue-job", content=raw, headers={**mine, **(headers or {})})

    def chunks(raw: bytes) -> AsyncIterator[bytes]:
        async def stream() -> AsyncIterator[bytes]:
            for start in range(0, len(raw), 8192):
                yield raw[start:start + 8192]
        return stream()

    big = json.dumps({"jobType": "sdxl_image_fast", "metadata": {"prompt": "x", "pad": "y" * limit}}).encode()
    nested = b'{"jobType": "sdxl_image_fast", "metadata": {"prompt": "x", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}"

    def job(**metadata: Any) -> bytes:
        return json.dumps({"jobType": "sdxl_image_fast", "metadata": {"prompt": "a fox", **metadata}}).encode()

    cases: dict[str, tuple[Callable[[], Any], set[int]]] = {
        "a body over the limit": (submit(big), {413}),
        "a chunked body over the limit": (lambda: api.client.post("/api/queue-job", content=chunks(big),
                                                                  headers=mine), {413}),
        "a callback over the limit": (lambda: api.callback({}, raw=big), {413}),
        "not JSON": (submit(b"{not json"), {422}),
        "JSON, not an object": (submit(b"[1, 2, 3]"), {400, 422}),
        "truncated JSON": (submit(job()[:-3]), {422}),
        "a number for jobType": (submit(b'{"jobType": 7, "metadata": {"prompt": "x"}}'), {400}),
        "metadata as a string": (submit(b'{"jobType": "sdxl_image_fast", "metadata": "x"}'), {400}),
        "a prompt over 4000 characters": (submit(job(prompt="p" * 4001)), {413}),
        "an empty prompt": (submit(job(prompt="   ")), {400}),
        "a NUL in the prompt": (submit(job(prompt="a fox\u0000")), {400}),
        "a NUL in a metadata key": (submit(job(**{"k\u0000": 1})), {400}),
        "a lone surrogate": (submit(b'{"jobType": "sdxl_image_fast", "metadata": {"prompt": "\\ud800"}}'),
                             {400, 422}),
        "JSON nested 5000 deep": (submit(nested), {400, 413, 422}),
        "a negative seed": (submit(job(seed=-1)), {400}),
        "a seed over 2^32": (submit(job(seed=2**40)), {400}),
        "credits offered by the client": (submit(job(credits=0)), {200, 400}),
        "a job type that is a path": (submit(json.dumps({"jobType": "../sdxl_image_fast",
                                                          "metadata": {"prompt": "x"}}).encode()), {400}),
        "a project id that is a path": (submit(json.dumps({"jobType": "sdxl_image_fast", "projectId": "../x",
                                                            "metadata": {"prompt": "x"}}).encode()), {400}),
        "an Idempotency-Key of 201 characters": (submit(job(), {"Idempotency-Key": "k" * 201}), {400}),
        "a bucket of another job type": (submit(job(bucket="video_high")), {400}),
    }
    for name, (request, allowed) in cases.items():
        if 200 in allowed:  # a client's price is checked, never trusted: accepted at the catalog's price
            response = await request()
            scene.attempts += 1
            if response.status_code == 200 and response.json()["job"]["metadata"]["credits"] != 1:
                scene.tally.wrongly_accepted += 1
                scene.tally.problems.append(f"{name}: the client's price was taken")
            continue
        await _attack(scene, name, request, allowed)
    await _finish(scene, "bodies", started)


# --- Paths ------------------------------------------------------------------------------------------------


async def raw_request(api: Api, method: str, target: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """The request line exactly as given: no client between (httpx would resolve `..` before sending)."""
    host, port = urlsplit(api.url).netloc.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", "Content-Length: 0",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return httpx.Response(int(head.split(b" ")[1]), content=body)


async def test_path_tricks_in_ids_and_file_names_reach_nothing(scene: Scene, started: float) -> None:
    api = scene.api
    mine = scene.auth(scene.attacker)
    theirs = scene.auth(scene.victim)
    ids = ["..", "../x", "%2e%2e", "%2e%2e%2fhealthz", "..%2f..%2fmetrics", "%00", scene.completed + "%00",
           f"{scene.completed}/../{scene.completed}", "x" * 5000, "%E2%80%AE" + scene.completed,
           "%20" + scene.completed, f"..%2f{scene.completed}", f"{scene.completed}%2f..%2f..%2fmetrics"]
    for job_id in ids:
        for headers, who in ((mine, "attacker"), (theirs, "owner")):
            for method, template in (("GET", "/api/jobs/{}"), ("POST", "/api/jobs/{}/cancel"),
                                     ("GET", "/api/jobs/{}/events"), ("DELETE", "/api/assets/{}")):
                target = template.format(job_id)
                await _attack(scene, f"{who}: {method} {target[:60]}",
                              lambda m=method, t=target, h=headers: raw_request(api, m, t, h), {404, 405, 414},
                              leak="secret prompt" if who == "attacker" else None, owner=who == "owner")
    # The file route: a signed URL opens its own object, and no trick opens another (or leaves the root).
    signed = urlsplit(scene.asset_url)
    ok = await raw_request(api, "GET", f"{signed.path}?{signed.query}")
    assert ok.status_code == 200 and ok.content == b"\x89PNG victim"
    bucket = "sdxl_image_high"
    for name, path in {
        "a .. segment": f"{scene.victim}/../{scene.victim}/{scene.completed}_0.png",
        "encoded ..": f"{scene.victim}/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "double-encoded ..": f"%252e%252e/%252e%252e/{scene.victim}/{scene.completed}_0.png",
        "a climb out of the root": "../../../../../../etc/passwd",
        "an absolute path": "/etc/passwd",
        "another object under the same signature": f"{scene.victim}/{scene.queued}_0.png",
        "a NUL byte": f"{scene.victim}/{scene.completed}_0.png%00.txt",
        "a backslash": f"{scene.victim}%5c..%5c{scene.completed}_0.png",
    }.items():
        await _attack(scene, f"file route with {name}",
                      lambda p=path: raw_request(api, "GET", f"/api/files/{bucket}/{p}?{signed.query}"), {403, 404},
                      leak="PNG victim")
    await _attack(scene, "file route with .. as the bucket",
                  lambda: raw_request(api, "GET", f"/api/files/../{scene.asset_path}?{signed.query}"), {403, 404},
                  leak="PNG victim")
    expired = signed.query.replace("expires=", "expires=1&x=")
    await _attack(scene, "file route with an expired signature",
                  lambda: raw_request(api, "GET", f"{signed.path}?{expired}"), {403, 422}, leak="PNG victim")
    for name in ("../pyproject.toml", "..%2f..%2fpyproject.toml", "%2e%2e%2fsettings.py", "..%5c..%5cpyproject.toml",
                 "__init__.py", ".hidden.js", "../app.py", "%2e%2e/%2e%2e/cli.py"):
        await _attack(scene, f"static {name}", lambda n=name: raw_request(api, "GET", f"/static/{n}"), {404},
                      leak="import")
    await _finish(scene, "paths", started)

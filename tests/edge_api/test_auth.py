"""Authentication: Supabase JWTs (HS256 with the secret, RS256/ES256 from a cached JWKS); every refusal a 401."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import JWT_SECRET, Api, serve_api, serve_asgi
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from servers import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from edge_api import auth
from edge_api.auth import Authenticator, User, VerifiedTokens
from edge_api.errors import ApiError
from edge_api.settings import ApiSettings


@pytest.fixture
def api(shared_api: Api) -> Api:
    """Who gets in is the same question on any server: one server and database serve the module (the
    tests that count JWKS fetches start their own)."""
    return shared_api


def claims(user: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": str(user), "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 600,
            **overrides}


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert set(body) == {"success", "error", "details", "retryable", "suggestedAction"}
    assert body["success"] is False and body["retryable"] is False
    assert body["error"] == "Authentication failed" and body["details"]


async def get_assets(api: Api, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return await api.client.get("/api/assets", headers=headers)


# --- HS256 -------------------------------------------------------------------------------------------


async def test_a_valid_token_gets_in(api: Api, user: uuid.UUID) -> None:
    response = await get_assets(api, f"Bearer {api.token(user)}")
    assert response.status_code == 200
    assert response.json() == {"success": True, "assets": [], "next_cursor": None}


async def test_the_bearer_scheme_is_case_insensitive(api: Api, user: uuid.UUID) -> None:
    assert (await get_assets(api, f"bearer {api.token(user)}")).status_code == 200


def _alg_none(user: uuid.UUID) -> str:
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(user))}."


BAD_AUTHORIZATION = {
    "missing header": lambda user: None,
    "empty": lambda user: "",
    "not bearer": lambda user: f"Basic {base64.b64encode(b'user:pass').decode()}",
    "bearer without token": lambda user: "Bearer",
    "garbage token": lambda user: "Bearer not-a-jwt",
    "three garbage parts": lambda user: "Bearer aaa.bbb.ccc",
    "expired": lambda user: "Bearer " + jwt.encode(claims(user, exp=int(time.time()) - 60), JWT_SECRET),
    "wrong audience": lambda user: "Bearer " + jwt.encode(claims(user, aud="another-app"), JWT_SECRET),
    "no audience": lambda user: "Bearer " + jwt.encode({k: v for k, v in claims(user).items() if k != "aud"},
                                                       JWT_SECRET),
    "no expiry": lambda user: "Bearer " + jwt.encode({k: v for k, v in claims(user).items() if k != "exp"},
                                                     JWT_SECRET),
    "role anon": lambda user: "Bearer " + jwt.encode(claims(user, role="anon"), JWT_SECRET),
    "role service_role": lambda user: "Bearer " + jwt.encode(claims(user, role="service_role"), JWT_SECRET),
    "alg none": lambda user: "Bearer " + _alg_none(user),
    "forged with another secret": lambda user: "Bearer " + jwt.encode(claims(user), "another-secret-" * 3),
    "HS512 with the right secret": lambda user: "Bearer " + _hs512(user),
    "sub not a uuid": lambda user: "Bearer " + jwt.encode(claims(user, sub="not-a-uuid"), JWT_SECRET),
    "no sub": lambda user: "Bearer " + jwt.encode({k: v for k, v in claims(user).items() if k != "sub"},
                                                  JWT_SECRET),
    "tampered payload": lambda user: "Bearer " + _tampered(user),
}


def _hs512(user: uuid.UUID) -> str:
    with warnings.catch_warnings():  # the test secret is short for SHA-512; the API refuses HS512 anyway
        warnings.simplefilter("ignore")
        return jwt.encode(claims(user), JWT_SECRET, algorithm="HS512")


def _tampered(user: uuid.UUID) -> str:
    header, _, signature = jwt.encode(claims(user), JWT_SECRET).split(".")
    return f"{header}.{b64(claims(uuid.uuid4()))}.{signature}"


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
async def test_a_bad_token_is_401_in_the_envelope(api: Api, user: uuid.UUID, case: str) -> None:
    assert_unauthorized(await get_assets(api, BAD_AUTHORIZATION[case](user)))


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/queue-job"), ("GET", "/api/jobs"), ("GET", f"/api/jobs/{uuid.uuid4()}"),
    ("POST", f"/api/jobs/{uuid.uuid4()}/cancel"), ("GET", "/api/assets"), ("DELETE", f"/api/assets/{uuid.uuid4()}"),
    ("POST", "/functions/v1/queue-job"),
])
async def test_every_user_route_needs_a_token(api: Api, method: str, path: str) -> None:
    body = {"jobType": "image_fast", "metadata": {"prompt": "x"}} if method == "POST" else None
    assert_unauthorized(await api.client.request(method, path, json=body))


async def test_a_refused_submit_creates_nothing(api: Api, user: uuid.UUID) -> None:
    await api.set_balance(user, 5)
    response = await api.client.post("/api/queue-job", json={"jobType": "image_fast", "metadata": {"prompt": "x"}},
                                     headers={"Authorization": BAD_AUTHORIZATION["forged with another secret"](user)})
    assert_unauthorized(response)
    assert await api.job_rows(user) == []
    assert await api.balance(user) == 5


# --- RS256 / ES256 from a JWKS ----------------------------------------------------------------------


@dataclass
class Jwks:
    url: str
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    fetches: list[str] = field(default_factory=list)

    def token(self, user: uuid.UUID, alg: str = "RS256", kid: str | None = "rsa-1", key: Any = None,
              **overrides: Any) -> str:
        signing_key = key or (self.rsa_key if alg == "RS256" else self.ec_key)
        headers = {} if kid is None else {"kid": kid}
        return jwt.encode(claims(user, **overrides), signing_key, algorithm=alg, headers=headers)


@pytest.fixture(scope="module")
def signing_keys() -> tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1())


@contextlib.asynccontextmanager
async def serve_jwks(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> AsyncIterator[Jwks]:
    """The project's JWKS, served over HTTP by a small app of its own that counts its requests."""
    keys = [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1", "alg": "RS256", "use": "sig"},
        {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1", "alg": "ES256", "use": "sig"},
        {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"},  # not a public key: skipped
    ]
    fetches: list[str] = []

    async def serve_keys(request: Request) -> JSONResponse:
        fetches.append(request.url.path)
        return JSONResponse({"keys": keys})

    app = Starlette(routes=[Route("/auth/v1/.well-known/jwks.json", serve_keys)])
    async with serve_asgi(app) as url:
        yield Jwks(f"{url}/auth/v1/.well-known/jwks.json", rsa_key, ec_key, fetches)


@pytest.fixture
async def jwks(signing_keys: tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]) -> AsyncIterator[Jwks]:
    async with serve_jwks(*signing_keys) as served:
        yield served


@pytest.fixture
async def jwks_api(api_settings: ApiSettings, jwks: Jwks) -> AsyncIterator[Api]:
    """An API whose JWKS cache starts empty, for the tests that count fetches."""
    async for api in serve_api(api_settings.model_copy(update={"jwks_url": jwks.url})):
        yield api


@pytest.fixture(scope="module")
async def shared_jwks(signing_keys: tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]) -> AsyncIterator[Jwks]:
    async with serve_jwks(*signing_keys) as served:
        yield served


@pytest.fixture(scope="module")
async def shared_jwks_api(shared_settings: ApiSettings, shared_jwks: Jwks) -> AsyncIterator[Api]:
    """One API with the JWKS for the tests that only check who gets in."""
    async for api in serve_api(shared_settings.model_copy(update={"jwks_url": shared_jwks.url})):
        yield api


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "rsa-1"), ("ES256", "ec-1")])
async def test_an_asymmetric_token_from_the_jwks_gets_in(shared_jwks_api: Api, shared_jwks: Jwks, user: uuid.UUID,
                                                         alg: str, kid: str) -> None:
    response = await get_assets(shared_jwks_api, f"Bearer {shared_jwks.token(user, alg, kid)}")
    assert response.status_code == 200, response.text


async def test_hs256_tokens_still_work_beside_the_jwks(shared_jwks_api: Api, user: uuid.UUID) -> None:
    assert (await get_assets(shared_jwks_api, f"Bearer {shared_jwks_api.token(user)}")).status_code == 200


async def test_the_jwks_is_fetched_once_for_many_requests(jwks_api: Api, jwks: Jwks, user: uuid.UUID) -> None:
    tokens = [jwks.token(user, "RS256", "rsa-1"), jwks.token(user, "ES256", "ec-1")] * 10
    responses = await asyncio.gather(*(get_assets(jwks_api, f"Bearer {t}") for t in tokens))
    assert {r.status_code for r in responses} == {200}
    for token in tokens:
        assert (await get_assets(jwks_api, f"Bearer {token}")).status_code == 200
    assert len(jwks.fetches) == 1


async def test_an_unknown_kid_is_401_without_refetching_at_once(jwks_api: Api, jwks: Jwks, user: uuid.UUID) -> None:
    assert (await get_assets(jwks_api, f"Bearer {jwks.token(user, 'RS256', 'rsa-1')}")).status_code == 200
    for _ in range(5):
        assert_unauthorized(await get_assets(jwks_api, f"Bearer {jwks.token(user, 'RS256', 'rotated-away')}"))
    assert len(jwks.fetches) == 1  # a stream of unknown kids cannot turn the API into a JWKS hammer


def _other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


BAD_ASYMMETRIC = {
    "unknown kid": lambda j, u: j.token(u, "RS256", "nobody"),
    "no kid with several keys": lambda j, u: j.token(u, "RS256", None),
    "signed by another RSA key": lambda j, u: j.token(u, "RS256", "rsa-1", key=_other_rsa_key()),
    "signed by another EC key": lambda j, u: j.token(u, "ES256", "ec-1", key=ec.generate_private_key(ec.SECP256R1())),
    "RS256 naming the EC key": lambda j, u: j.token(u, "RS256", "ec-1"),
    "ES256 naming the RSA key": lambda j, u: j.token(u, "ES256", "rsa-1"),
    "the symmetric jwk": lambda j, u: j.token(u, "RS256", "symmetric"),
    "expired": lambda j, u: j.token(u, "RS256", "rsa-1", exp=int(time.time()) - 60),
    "wrong audience": lambda j, u: j.token(u, "ES256", "ec-1", aud="elsewhere"),
    "role anon": lambda j, u: j.token(u, "RS256", "rsa-1", role="anon"),
    "HS256 signed with the public key": lambda j, u: _hs256_with_public_key(j, u),
}


def _hs256_with_public_key(jwks: Jwks, user: uuid.UUID) -> str:
    """The algorithm-confusion attack: an HMAC keyed with the (public) RSA PEM, by hand (PyJWT refuses to)."""
    pem = jwks.rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64(claims(user))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.mark.parametrize("case", list(BAD_ASYMMETRIC))
async def test_a_bad_asymmetric_token_is_401(shared_jwks_api: Api, shared_jwks: Jwks, user: uuid.UUID,
                                             case: str) -> None:
    assert_unauthorized(await get_assets(shared_jwks_api, f"Bearer {BAD_ASYMMETRIC[case](shared_jwks, user)}"))


async def test_an_unreachable_jwks_is_401_not_a_crash(api_settings: ApiSettings, shared_jwks: Jwks,
                                                      user: uuid.UUID) -> None:
    settings = api_settings.model_copy(update={"jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"})
    async for api in serve_api(settings):
        assert_unauthorized(await get_assets(api, f"Bearer {shared_jwks.token(user)}"))
        assert (await get_assets(api, f"Bearer {api.token(user)}")).status_code == 200


async def test_without_a_jwks_asymmetric_tokens_are_refused(api: Api, shared_jwks: Jwks, user: uuid.UUID) -> None:
    assert_unauthorized(await get_assets(api, f"Bearer {shared_jwks.token(user)}"))


# --- the cache of verified tokens ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def a_user() -> User:
    return User(id=uuid.uuid4(), role="authenticated")


def test_a_cached_token_is_forgotten_when_it_expires() -> None:
    clock = Clock()
    cache = VerifiedTokens(clock=clock)
    user = a_user()
    cache.put("token", user, expires_at=clock.now + 10)
    assert cache.get("token") == user
    clock.now += 10
    assert cache.get("token") is None


def test_a_cached_token_is_verified_again_after_max_age_even_if_valid_longer() -> None:
    clock = Clock()
    cache = VerifiedTokens(max_age=60, clock=clock)
    cache.put("token", a_user(), expires_at=clock.now + 3600)
    clock.now += 59
    assert cache.get("token") is not None
    clock.now += 1
    assert cache.get("token") is None


def test_a_full_cache_forgets_its_oldest_token() -> None:
    cache = VerifiedTokens(size=2)
    first, second, third = a_user(), a_user(), a_user()
    for name, user in (("a", first), ("b", second), ("c", third)):
        cache.put(name, user, expires_at=time.time() + 60)
    assert cache.get("a") is None
    assert cache.get("b") == second and cache.get("c") == third


async def test_a_token_is_verified_once_then_served_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting_decode)
    authenticator = Authenticator("authenticated", JWT_SECRET)
    user_id = uuid.uuid4()
    token = jwt.encode(claims(user_id), JWT_SECRET, algorithm="HS256")
    for _ in range(3):
        assert (await authenticator.authenticate(f"Bearer {token}")).id == user_id
    assert decoded == [token]


async def test_a_changed_byte_of_a_cached_token_is_still_refused() -> None:
    authenticator = Authenticator("authenticated", JWT_SECRET)
    token = jwt.encode(claims(uuid.uuid4()), JWT_SECRET, algorithm="HS256")
    await authenticator.authenticate(f"Bearer {token}")
    forged = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(ApiError) as refused:
        await authenticator.authenticate(f"Bearer {forged}")
    assert refused.value.status == 401


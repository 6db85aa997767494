"""Supabase JWTs: HS256 with the project's secret, RS256/ES256 with keys from the project's JWKS (cached).

Only `authenticated` users get in; `alg: none`, unknown algorithms, a wrong audience, an expired or
forged token are all a 401 in the reference's envelope.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from edge_api.errors import ApiError, unauthorized

log = logging.getLogger(__name__)

ASYMMETRIC = frozenset({"RS256", "ES256"})
_KEY_TYPES: dict[str, type] = {"RS256": RSAPublicKey, "ES256": EllipticCurvePublicKey}


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    role: str
    email: str | None = None


class JwksCache:
    """The project's public keys by `kid`, fetched with httpx and kept for `ttl` seconds."""

    def __init__(self, url: str, client: httpx.AsyncClient, ttl: float = 600.0, min_refetch: float = 30.0) -> None:
        self._url = url
        self._client = client
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> Any:
        now = time.monotonic()
        if now - self._fetched_at > self._ttl or (kid not in self._keys and now - self._fetched_at > self._min_refetch):
            async with self._lock:
                if time.monotonic() - self._fetched_at > self._min_refetch or not self._keys:
                    await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid not in self._keys:
            raise unauthorized("the token's signing key is not in the project's JWKS")
        return self._keys[kid]

    async def _refresh(self) -> None:
        try:
            response = await self._client.get(self._url, timeout=5.0)
            response.raise_for_status()
            keys = response.json().get("keys", [])
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed: %s", self._url, exc)
            if not self._keys:
                raise unauthorized("the project's signing keys cannot be fetched") from exc
            return
        parsed = {}
        for jwk in keys:
            algorithm = RSAAlgorithm if jwk.get("kty") == "RSA" else ECAlgorithm if jwk.get("kty") == "EC" else None
            if algorithm is not None:
                parsed[jwk.get("kid")] = algorithm.from_jwk(json.dumps(jwk))
        self._keys = parsed
        self._fetched_at = time.monotonic()


class VerifiedTokens:
    """Tokens already verified, with their user, until they expire (or `max_age` passes, so a key
    dropped from the JWKS stops letting its tokens in soon after).

    A client sends the same token with every request, and verifying it again costs more than the rest
    of a status read (PyJWT checks the token's characters one by one in Python: ≈ 60 µs). The cache is
    keyed by the whole token string, so only the exact bytes that passed verification ever hit it.
    """

    def __init__(self, size: int = 10_000, max_age: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self._size = size
        self._max_age = max_age
        self._clock = clock
        self._entries: dict[str, tuple[User, float]] = {}

    def get(self, token: str) -> User | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[token]
            return None
        return entry[0]

    def put(self, token: str, user: User, expires_at: float) -> None:
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]  # the oldest: dicts keep insertion order
        self._entries[token] = (user, min(expires_at, self._clock() + self._max_age))


class Authenticator:
    def __init__(self, audience: str, secret: str | None = None, jwks: JwksCache | None = None,
                 verified: VerifiedTokens | None = None) -> None:
        self._audience = audience
        self._secret = secret
        self._jwks = jwks
        self._verified = verified if verified is not None else VerifiedTokens()

    async def authenticate(self, authorization: str | None) -> User:
        token = _bearer(authorization)
        user = self._verified.get(token)
        if user is None:
            user, expires_at = await self._verify(token)
            self._verified.put(token, user, expires_at)
        return user

    async def is_service(self, authorization: str | None, service_key: str | None) -> bool:
        """Whether the bearer is the project's service role: its service-role key itself (compared in constant
        time), or a JWT of the project with `role: service_role` (Supabase's legacy keys carry no `aud`).
        How existing ourvidz workers sign their callbacks."""
        try:
            token = _bearer(authorization)
        except ApiError:
            return False
        if service_key and hmac.compare_digest(token.encode(), service_key.encode()):
            return True
        try:
            header = jwt.get_unverified_header(token)
            algorithm = str(header.get("alg"))
            key = await self._key_for(algorithm, header.get("kid"))
            claims = jwt.decode(token, key, algorithms=[algorithm], leeway=5,
                                options={"require": ["exp"], "verify_aud": False})
        except (jwt.PyJWTError, ApiError):
            return False
        return claims.get("role") == "service_role"

    async def _verify(self, token: str) -> tuple[User, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise unauthorized("the token is not a JWT") from exc
        algorithm = str(header.get("alg"))
        key = await self._key_for(algorithm, header.get("kid"))
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm], audience=self._audience,
                                options={"require": ["exp", "sub"]}, leeway=5)
        except jwt.ExpiredSignatureError as exc:
            raise unauthorized("the token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise unauthorized("the token is for another audience") from exc
        except jwt.PyJWTError as exc:
            raise unauthorized(f"the token is invalid: {exc}") from exc
        return _user_from(claims), float(claims["exp"])

    async def _key_for(self, algorithm: str | None, kid: str | None) -> Any:
        if algorithm == "HS256" and self._secret:
            return self._secret
        if algorithm in ASYMMETRIC and self._jwks is not None:
            key = await self._jwks.key(kid)
            # The header names both the algorithm and the key: an RSA key for ES256 (or the reverse)
            # is a forged token, not a key for PyJWT to choke on.
            if not isinstance(key, _KEY_TYPES[algorithm]):
                raise unauthorized(f"the key {kid!r} is not a {algorithm} key")
            return key
        raise unauthorized(f"tokens signed with {algorithm!r} are not accepted")


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise unauthorized("the Authorization header is missing")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _user_from(claims: dict[str, Any]) -> User:
    if claims.get("role") != "authenticated":
        raise unauthorized(f"the role {claims.get('role')!r} cannot use this API; sign in first")
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError as exc:
        raise unauthorized("the token's subject is not a user id") from exc
    email = claims.get("email")
    return User(id=user_id, role="authenticated", email=email if isinstance(email, str) else None)


def mint_token(secret: str, user_id: uuid.UUID, *, audience: str = "authenticated", ttl: int = 3600 * 24 * 30,
               role: str = "authenticated") -> str:
    """An HS256 token as Supabase issues them, for the embedded mode and tests."""
    now = int(time.time())
    claims = {"sub": str(user_id), "aud": audience, "role": role, "iat": now, "exp": now + ttl, "iss": "ourvidz"}
    return jwt.encode(claims, secret, algorithm="HS256")

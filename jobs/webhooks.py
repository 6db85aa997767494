"""Signing and verifying the worker's callbacks in the Standard Webhooks manner.

`webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256("{id}.{ts}.{body}")>`,
with a five-minute tolerance; the `standardwebhooks` package does the cryptography.
"""

from __future__ import annotations

import binascii
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime

from standardwebhooks import Webhook, WebhookVerificationError


class BadSignature(Exception):
    """Missing headers, a timestamp outside the tolerance, or a signature that does not match."""


def new_secret() -> str:
    """A fresh shared secret in the `whsec_<base64>` form that Standard Webhooks libraries read."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(secret: str, body: bytes, msg_id: str, now: datetime | None = None) -> dict[str, str]:
    """The three headers for one callback; the same `msg_id` on a retry makes it idempotent."""
    moment = now or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, moment, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> str:
    """Check a callback's signature; returns its `webhook-id`."""
    wanted = {name: headers.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    try:
        Webhook(secret).verify(body, wanted, json_parse=False)
    except (WebhookVerificationError, ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadSignature(str(exc) or "invalid signature") from exc
    return wanted["webhook-id"]

"""Signed documents: a JSON body, the signer's public key and an RSA-PSS signature over the body.

Used for the run configuration: whoever stores it in the DHT, a reader checks the signature itself
and that the signer's key is the one the run id is bound to.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from crowdtrain.errors import RunConfigError


class SignatureError(RunConfigError):
    """A signed document is malformed or its signature does not verify."""


def run_id_for(public_key: bytes) -> str:
    """The run id bound to a coordinator's public key."""
    return "run-" + hashlib.sha256(public_key).hexdigest()[:16]


def sign_document(body: Mapping[str, Any], key: RSAPrivateKey) -> dict[str, bytes]:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return {"body": raw, "public_key": key.get_public_key().to_bytes(), "signature": key.sign(raw)}


def verify_document(document: Any) -> tuple[dict[str, Any], bytes]:
    """Returns (body, signer public key); raises :class:`SignatureError` if anything is off."""
    if not isinstance(document, Mapping) or set(document) != {"body", "public_key", "signature"}:
        raise SignatureError("signed document must have exactly body, public_key and signature")
    raw, public_key, signature = document["body"], document["public_key"], document["signature"]
    if not all(isinstance(x, bytes) for x in (raw, public_key, signature)):
        raise SignatureError("signed document fields must be bytes")
    try:
        verified = RSAPublicKey.from_bytes(public_key).verify(raw, signature)
    except Exception as e:  # malformed key material
        raise SignatureError(f"signed document has an unusable public key ({type(e).__name__})") from None
    if not verified:
        raise SignatureError("signature of the document does not match its body")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SignatureError("signed document body is not JSON") from None
    if not isinstance(body, dict):
        raise SignatureError("signed document body must be a JSON object")
    return body, public_key

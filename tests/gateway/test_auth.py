"""Each way a token can be wrong gives 401; HS256, RS256 and ES256 tokens are accepted; keys rotate."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from montage_gateway.settings import DEV_JWT_SECRET

from tests.gateway.conftest import Gateways, Orchestrator, token


class Jwks:
    """A local JWKS endpoint whose key set the test can change."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0

    def add_rsa(self, kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys[kid] = {
            **jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True),
            "kid": kid,
            "alg": "RS256",
        }
        return key

    def add_ec(self, kid: str) -> ec.EllipticCurvePrivateKey:
        key = ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = {
            **jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True),
            "kid": kid,
            "alg": "ES256",
        }
        return key

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": list(self.keys.values())})


def claims(user: str = "user-1", **over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user, "aud": "authenticated", "iat": now, "exp": now + 600, "role": "authenticated", **over}


@pytest.fixture
async def jwks(serve: Callable[[web.Application], Awaitable[TestServer]]) -> tuple[Jwks, str]:
    j = Jwks()
    app = web.Application()
    app.router.add_get("/jwks.json", j.handle)
    server = await serve(app)
    return j, str(server.make_url("/jwks.json"))


async def status_of(client: Any, tok: str) -> tuple[int, dict[str, Any]]:
    resp = await client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {tok}"})
    return resp.status, await resp.json()


async def test_valid_hs256_is_accepted_and_user_forwarded(gw: Any, orchestrator: Orchestrator) -> None:
    orchestrator.fake.add_job("alice")
    status, body = await status_of(gw, token("alice"))
    assert status == 200
    assert body["total"] == 1


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: jwt.encode(claims(exp=int(time.time()) - 120), DEV_JWT_SECRET, "HS256"), id="expired"),
        pytest.param(lambda: jwt.encode(claims(aud="anon"), DEV_JWT_SECRET, "HS256"), id="wrong_aud"),
        pytest.param(lambda: jwt.encode(claims(), "another-secret", "HS256"), id="bad_signature"),
        pytest.param(lambda: jwt.encode(claims(nbf=int(time.time()) + 600), DEV_JWT_SECRET, "HS256"), id="nbf"),
        pytest.param(
            lambda: jwt.encode({k: v for k, v in claims().items() if k != "sub"}, DEV_JWT_SECRET, "HS256"), id="no_sub"
        ),
        pytest.param(lambda: jwt.encode(claims(), DEV_JWT_SECRET, "HS384"), id="alg_not_allowed"),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
    ],
)
async def test_bad_hs256_tokens_are_401(gw: Any, make: Callable[[], str]) -> None:
    status, body = await status_of(gw, make())
    assert status == 401
    assert body["code"] == "UNAUTHORIZED" and body["retryable"] is False and "error" in body


async def test_alg_none_is_401(gw: Any) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    status, _ = await status_of(gw, f"{header}.{payload}.")
    assert status == 401


async def test_missing_token_is_401(gw: Any) -> None:
    resp = await gw.get("/api/v1/jobs")
    assert resp.status == 401
    assert (await resp.json())["code"] == "UNAUTHORIZED"


async def test_asymmetric_keys_and_confusion(gateways: Gateways, jwks: tuple[Jwks, str]) -> None:
    j, url = jwks
    rsa_key = j.add_rsa("rsa-1")
    ec_key = j.add_ec("ec-1")
    gw = await gateways.start(supabase_jwks_url=url, jwks_min_refetch_seconds=0)

    assert (await status_of(gw, jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "rsa-1"})))[0] == 200
    assert (await status_of(gw, jwt.encode(claims(), ec_key, "ES256", headers={"kid": "ec-1"})))[0] == 200

    # HS256 "signed" with the RSA public key (the classic confusion attack) is refused.
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = jwt.api_jws.PyJWS(algorithms=["HS256"])
    forged._algorithms["HS256"].prepare_key = lambda key: key  # type: ignore[method-assign]  # let PyJWT sign with a PEM
    tok = forged.encode(json.dumps(claims()).encode(), pem, algorithm="HS256", headers={"kid": "rsa-1"})
    assert (await status_of(gw, tok))[0] == 401

    # Unknown kid, and a kid whose key type does not match the alg.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (await status_of(gw, jwt.encode(claims(), other, "RS256", headers={"kid": "nope"})))[0] == 401
    assert (await status_of(gw, jwt.encode(claims(), rsa_key, "RS256", headers={"kid": "ec-1"})))[0] == 401
    # Right key id, wrong signer.
    assert (await status_of(gw, jwt.encode(claims(), other, "RS256", headers={"kid": "rsa-1"})))[0] == 401


async def test_key_rotation_is_honoured(gateways: Gateways, jwks: tuple[Jwks, str]) -> None:
    j, url = jwks
    old = j.add_rsa("k1")
    gw = await gateways.start(supabase_jwks_url=url, jwks_min_refetch_seconds=0)
    assert (await status_of(gw, jwt.encode(claims(), old, "RS256", headers={"kid": "k1"})))[0] == 200
    fetched = j.fetches
    new = j.add_rsa("k2")  # rotation: a new key appears, then the old one is retired
    assert (await status_of(gw, jwt.encode(claims(), new, "RS256", headers={"kid": "k2"})))[0] == 200
    assert j.fetches == fetched + 1


async def test_unknown_kid_refetch_is_rate_limited(gateways: Gateways, jwks: tuple[Jwks, str]) -> None:
    j, url = jwks
    key = j.add_rsa("k1")
    gw = await gateways.start(supabase_jwks_url=url, jwks_min_refetch_seconds=3600)
    assert (await status_of(gw, jwt.encode(claims(), key, "RS256", headers={"kid": "k1"})))[0] == 200
    for i in range(5):
        assert (await status_of(gw, jwt.encode(claims(), key, "RS256", headers={"kid": f"forged-{i}"})))[0] == 401
    assert j.fetches == 1


async def test_redis_token_cache_never_outlives_exp(gateways: Gateways, redis: Any, keys: Any) -> None:
    gw = await gateways.start(jwt_cache="redis", jwt_cache_seconds=300)
    tok = token("bob", ttl=5)
    assert (await status_of(gw, tok))[0] == 200
    cached = [k async for k in redis.scan_iter(match=keys.jwt_valid("*"))]
    assert len(cached) == 1
    assert 0 < await redis.ttl(cached[0]) <= 5

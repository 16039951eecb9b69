"""Python libraries nobody on the team wrote, judging the broker as a new user would.

Each check is run with the library's defaults (no algorithm allow-lists added where the
library does not ask for one), and its outcome is reported, not asserted: the Rust test
(tests/e2e/conformance.rs) decides what each outcome must be.

  metadata        authlib AuthorizationServerMetadata(...).validate() on the RFC 8414
                  document, plus each of its per-field validators on its own, so that a
                  refusal names every field it concerns;
  authlib_rfc9068 authlib's RFC 9068 resource-server validator (JWTBearerTokenValidator)
                  with the JWKS from the metadata's jwks_uri;
  joserfc         jwt.decode with a KeySet of that JWKS, then JWTClaimsRegistry checks;
  pyjwt           PyJWKClient(jwks_uri) + jwt.decode(algorithms=[the expected alg], ...).

Inputs (environment): BROKER_ISSUER_URL, ACCESS_TOKEN (minted by the test),
EXPECTED_AUDIENCE, EXPECTED_ALG, CA_FILE (TLS only: the test CA). Prints one JSON object;
exits 0 when every check ran (whatever its outcome), 1 when the script itself broke.
"""

import json
import os
import ssl
import sys
import urllib.request

import jwt as pyjwt
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

ISSUER = os.environ["BROKER_ISSUER_URL"]
TOKEN = os.environ["ACCESS_TOKEN"]
AUDIENCE = os.environ["EXPECTED_AUDIENCE"]
ALG = os.environ["EXPECTED_ALG"]
# The test CA for the TLS run; None means the system's trust store (plain HTTP needs none).
SSL_CONTEXT = ssl.create_default_context(cafile=os.environ.get("CA_FILE") or None)


def get_json(url):
    """GET a JSON document, trusting the test CA."""
    with urllib.request.urlopen(url, context=SSL_CONTEXT, timeout=30) as res:
        return json.load(res)


def outcome(check):
    """Runs `check`; {"ok": true, ...its result} or {"ok": false, "error": ...}."""
    try:
        return {"ok": True, **(check() or {})}
    except Exception as e:  # noqa: BLE001 - every refusal is an outcome to report
        cause = e.__cause__ or e.__context__
        err = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if cause is not None:
            err["cause"] = f"{type(cause).__name__}: {cause}"
        return err


def check_metadata(metadata):
    """authlib's validate(), and which per-field validators refuse (and why)."""
    m = AuthorizationServerMetadata(metadata)
    result = outcome(m.validate)
    refused = {}
    for key in AuthorizationServerMetadata.REGISTRY_KEYS:
        try:
            getattr(m, f"validate_{key}")()
        except ValueError as e:
            refused[key] = str(e)
    result["refused_fields"] = refused
    return result


def check_authlib_rfc9068(jwks):
    """authlib's RFC 9068 validator, configured the way its documentation shows."""

    class Validator(JWTBearerTokenValidator):
        def get_jwks(self):
            # A KeySet, as authlib's deprecation warning for a plain JWKS dict asks.
            return KeySet.import_key_set(jwks)

    v = Validator(issuer=ISSUER, resource_server=AUDIENCE)
    claims = v.authenticate_token(TOKEN)
    v.validate_token(claims, scopes=[], request=None)
    return {"sub": claims["sub"], "client_id": claims["client_id"]}


def check_joserfc(jwks):
    """joserfc's jwt.decode with the published key set, then the claims registry."""
    token = jose_jwt.decode(TOKEN, KeySet.import_key_set(jwks))
    if token.header.get("typ") != "at+jwt":
        raise ValueError(f"typ is {token.header.get('typ')!r}, not 'at+jwt'")
    registry = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
        client_id={"essential": True},
    )
    registry.validate(token.claims)
    return {"alg": token.header["alg"], "sub": token.claims["sub"]}


def check_pyjwt(jwks_uri):
    """PyJWT: keys from jwks_uri by the token's kid, the one expected algorithm."""
    header = pyjwt.get_unverified_header(TOKEN)
    if header.get("typ") != "at+jwt":
        raise ValueError(f"typ is {header.get('typ')!r}, not 'at+jwt'")
    client = pyjwt.PyJWKClient(jwks_uri, ssl_context=SSL_CONTEXT)
    key = client.get_signing_key_from_jwt(TOKEN)
    claims = pyjwt.decode(
        TOKEN,
        key,
        algorithms=[ALG],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    return {"alg": header["alg"], "sub": claims["sub"]}


def main():
    metadata = get_json(f"{ISSUER.rstrip('/')}/.well-known/oauth-authorization-server")
    jwks = get_json(metadata["jwks_uri"])
    report = {
        "metadata": check_metadata(metadata),
        "authlib_rfc9068": outcome(lambda: check_authlib_rfc9068(jwks)),
        "joserfc": outcome(lambda: check_joserfc(jwks)),
        "pyjwt": outcome(lambda: check_pyjwt(metadata["jwks_uri"])),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - the script broke before reporting
        print(json.dumps({"script_error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)

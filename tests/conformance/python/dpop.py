"""DPoP proofs (RFC 9449) made with authlib's JOSE implementation, for the e2e tests.

Reads {"alg": "ES256" | "EdDSA", "key": <private JWK, optional>, "proofs": [{"htm", "htu",
"iat_offset", "ath_of", "nonce"}]} on stdin; makes (or reuses) one key pair and a proof per entry ("ath_of": an access token whose hash
goes in "ath"); prints {"jkt": <RFC 7638 thumbprint>, "proofs": [<compact JWS>, ...], "key": <private JWK>}.
"""
import base64
import hashlib
import json
import sys
import time
import uuid

from authlib.jose import JsonWebKey, JsonWebSignature

inp = json.load(sys.stdin)
alg = inp["alg"]
if inp.get("key"):
    key = JsonWebKey.import_key(inp["key"])
elif alg == "ES256":
    key = JsonWebKey.generate_key("EC", "P-256", is_private=True)
else:
    key = JsonWebKey.generate_key("OKP", "Ed25519", is_private=True)
public = key.as_dict(is_private=False)
for k in ("kid", "use", "alg", "key_ops"):
    public.pop(k, None)
jws = JsonWebSignature(algorithms=[alg])
out = []
for p in inp["proofs"]:
    claims = {
        "jti": str(uuid.uuid4()),
        "htm": p["htm"],
        "htu": p["htu"],
        "iat": int(time.time()) + int(p.get("iat_offset", 0)),
    }
    if p.get("ath_of"):
        digest = hashlib.sha256(p["ath_of"].encode()).digest()
        claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    if p.get("nonce"):
        claims["nonce"] = p["nonce"]
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": public}
    token = jws.serialize_compact(header, json.dumps(claims).encode(), key)
    out.append(token.decode())
print(json.dumps({"jkt": key.thumbprint(), "proofs": out, "key": key.as_dict(is_private=True)}))

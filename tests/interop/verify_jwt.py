"""Verify a JWT with PyJWT (an independent implementation) against a JWKS URL.

usage: verify_jwt.py JWKS_URL TOKEN EXPECTED_TYP AUDIENCE ISSUER
Prints {"header": …, "claims": …} on success; exits 1 with a message otherwise.
"""
import json
import sys

import jwt  # PyJWT


def main() -> int:
    jwks_url, token, expected_typ, audience, issuer = sys.argv[1:6]
    header = jwt.get_unverified_header(token)
    if header.get("typ", "").lower() != expected_typ.lower():
        print(f"typ is {header.get('typ')!r}, expected {expected_typ!r}", file=sys.stderr)
        return 1
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["ES256", "RS256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "aud", "iat"]},
    )
    print(json.dumps({"header": header, "claims": claims}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # report any verification failure as a test failure
        print(f"verification failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)

"""Interoperability check: drives a running Portcullis with authlib, an
independent OAuth 2.0 / OpenID Connect client library.

Discovery -> authorization code + PKCE S256 (login form, consent) -> token ->
id_token validated by authlib -> userinfo -> refresh with rotation -> reuse of
a used refresh token revokes the whole family.

Environment: ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, USERNAME,
PASSWORD, optional EMAIL (then userinfo must return it). Exits non-zero with
a message on the first failed check; on success the last line of stdout is a
JSON summary. Run by tests/suite/oauth/interop.rs.
"""

import html
import json
import os
import re
import sys
from urllib.parse import parse_qs, urljoin, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oauth2.rfc8414 import get_well_known_url as oauth_well_known_url
from authlib.oidc.core import CodeIDToken, UserInfo
from authlib.oidc.discovery import OpenIDProviderMetadata, get_well_known_url
from joserfc import jwt  # authlib's own JOSE backend (authlib.jose is deprecated)
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

# The issuer is plain http on loopback in tests; authlib insists on https otherwise.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
TIMEOUT = 30
checks = []


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, name, detail=""):
    if not cond:
        fail(f"{name}{': ' + str(detail) if detail else ''}")
    checks.append(name)


def env(name):
    value = os.environ.get(name)
    if not value:
        fail(f"environment variable {name} is not set")
    return value


def form_fields(page):
    """The form's action and its <input> name -> value pairs (attribute order free)."""
    action = re.search(r'<form[^>]*\baction="([^"]*)"', page)
    fields = {}
    for tag in re.findall(r"<input\b[^>]*>", page):
        attrs = dict(re.findall(r'\b([\w-]+)="([^"]*)"', tag))
        if "name" in attrs:
            fields[attrs["name"]] = html.unescape(attrs.get("value", ""))
    return (html.unescape(action.group(1)) if action else None), fields


def browse(browser, url, issuer, redirect_uri, username, password):
    """A user agent: follows redirects by hand, fills the login form, allows
    consent; returns the redirect to the client and whether consent was asked."""
    consent_shown = False
    resp = browser.get(url, allow_redirects=False, timeout=TIMEOUT)
    for _ in range(12):
        if resp.status_code in (301, 302, 303, 307, 308):
            location = urljoin(resp.url, resp.headers.get("Location", ""))
            if location.startswith(redirect_uri):
                return location, consent_shown
            if not location.startswith(issuer + "/"):
                fail(f"redirected away from the issuer to {location}")
            resp = browser.get(location, allow_redirects=False, timeout=TIMEOUT)
            continue
        if resp.status_code != 200:
            fail(f"{resp.request.method} {resp.url} -> HTTP {resp.status_code}: {resp.text[:300]}")
        action, fields = form_fields(resp.text)
        for hidden in ("csrf_token", "request"):
            check(fields.get(hidden), f"{hidden} hidden input on {urlsplit(resp.url).path}", resp.text[:300])
        if "password" in fields:
            form = {k: fields[k] for k in ("csrf_token", "request")}
            form.update(username=username, password=password)
        elif re.search(r'name="decision"[^>]*value="allow"|value="allow"[^>]*name="decision"', resp.text):
            consent_shown = True
            form = {k: fields[k] for k in ("csrf_token", "request")}
            form["decision"] = "allow"
        else:
            fail(f"unexpected page at {resp.url}: {resp.text[:300]}")
        resp = browser.post(urljoin(resp.url, action or ""), data=form, allow_redirects=False, timeout=TIMEOUT)
        if "password" in form:
            check(resp.status_code == 303, "login accepted", f"HTTP {resp.status_code}: {resp.text[:300]}")
            check("pc_session" in browser.cookies, "session cookie pc_session set", browser.cookies.keys())
    fail("too many redirects before reaching the redirect_uri")


def validate_id_token(id_token, metadata, jwks, client_id, nonce, access_token):
    """What authlib's OpenIDMixin.parse_id_token does: signature against the
    JWKS with the advertised algorithms, then CodeIDToken claim checks."""
    registry = JWSRegistry(algorithms=metadata["id_token_signing_alg_values_supported"])
    try:
        token = jwt.decode(id_token, KeySet.import_key_set(jwks), registry=registry)
    except JoseError as err:
        fail(f"id_token signature rejected by authlib: {type(err).__name__}: {err}")
    options = {
        "iss": {"essential": True, "value": metadata["issuer"]},
        "aud": {"essential": True, "value": client_id},
        "exp": {"essential": True},
    }
    params = {"nonce": nonce, "client_id": client_id, "access_token": access_token}
    claims = CodeIDToken(token.claims, token.header, options, params)
    try:
        claims.validate(leeway=5)
    except JoseError as err:
        fail(f"id_token claims rejected by authlib: {type(err).__name__}: {err} in {dict(claims)}")
    check(token.header.get("kid"), "id_token header has kid", token.header)
    return claims


def main():
    issuer, client_id, client_secret = env("ISSUER"), env("CLIENT_ID"), env("CLIENT_SECRET")
    redirect_uri, username, password = env("REDIRECT_URI"), env("USERNAME"), env("PASSWORD")
    email = os.environ.get("EMAIL")

    # Discovery (OIDC and RFC 8414), validated by authlib.
    plain = requests.Session()
    plain.trust_env = False  # never send loopback traffic through a proxy
    meta = plain.get(get_well_known_url(issuer, external=True), timeout=TIMEOUT)
    check(meta.status_code == 200, "openid-configuration 200", meta.status_code)
    metadata = OpenIDProviderMetadata(meta.json())
    metadata.validate()
    check(metadata["issuer"] == issuer, "discovery issuer equals ISSUER", metadata["issuer"])
    check("S256" in metadata.get("code_challenge_methods_supported", []), "S256 advertised")
    check(metadata.get("authorization_response_iss_parameter_supported") is True, "iss parameter advertised")
    rfc8414 = plain.get(oauth_well_known_url(issuer, external=True), timeout=TIMEOUT)
    check(rfc8414.status_code == 200 and rfc8414.json() == dict(metadata), "oauth-authorization-server same JSON")
    jwks = plain.get(metadata["jwks_uri"], timeout=TIMEOUT).json()
    check(jwks.get("keys"), "jwks has keys", jwks)

    client = OAuth2Session(
        client_id, client_secret, scope="openid profile email", redirect_uri=redirect_uri,
        code_challenge_method="S256", token_endpoint_auth_method="client_secret_basic",
    )
    client.trust_env = False
    code_verifier, nonce = generate_token(48), generate_token(20)
    auth_url, state = client.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=code_verifier, nonce=nonce
    )

    # The browser part.
    browser = requests.Session()
    browser.trust_env = False
    callback, consent_shown = browse(browser, auth_url, issuer, redirect_uri, username, password)
    params = parse_qs(urlsplit(callback).query)
    check("code" in params, "authorization response has a code", callback)
    check(params.get("iss") == [issuer], "authorization response iss equals issuer (RFC 9207)", params.get("iss"))

    # Token request: authlib checks state, sends the PKCE verifier and Basic auth.
    token = client.fetch_token(
        metadata["token_endpoint"], authorization_response=callback, state=state, code_verifier=code_verifier
    )
    check(token.get("token_type", "").lower() == "bearer", "token_type Bearer", token)
    check(token.get("refresh_token") and token.get("id_token"), "refresh_token and id_token issued", list(token))
    claims = validate_id_token(token["id_token"], metadata, jwks, client_id, nonce, token["access_token"])
    checks.append("id_token validated by authlib (signature, iss, aud, exp, nonce)")

    info = client.get(metadata["userinfo_endpoint"], timeout=TIMEOUT)
    check(info.status_code == 200, "userinfo 200", f"HTTP {info.status_code}: {info.text[:300]}")
    userinfo = UserInfo(info.json())
    check(userinfo["sub"] == claims["sub"], "userinfo sub equals id_token sub", userinfo)
    check(userinfo.get("preferred_username") == username, "userinfo preferred_username", userinfo)
    if email:
        check(userinfo.get("email") == email, "userinfo email", userinfo)

    # Refresh: rotation, and a new id_token for the same subject.
    first_refresh = token["refresh_token"]
    refreshed = client.refresh_token(metadata["token_endpoint"], refresh_token=first_refresh)
    newest_refresh = refreshed.get("refresh_token")
    check(newest_refresh and newest_refresh != first_refresh, "refresh rotates the refresh token")
    check(refreshed["access_token"] != token["access_token"], "refresh issues a new access token")
    check(refreshed.get("id_token"), "refresh response has an id_token", list(refreshed))
    again = validate_id_token(refreshed["id_token"], metadata, jwks, client_id, None, refreshed["access_token"])
    check(again["sub"] == claims["sub"], "refreshed id_token has the same sub")

    # Reuse of the used refresh token: invalid_grant, and the family is revoked.
    for name, rt in (("old refresh token reuse", first_refresh), ("newest refresh token after reuse", newest_refresh)):
        try:
            client.refresh_token(metadata["token_endpoint"], refresh_token=rt)
        except OAuthError as err:
            check(err.error == "invalid_grant", f"{name} gives invalid_grant", err.error)
        else:
            fail(f"{name} was accepted")
    dead = plain.get(
        metadata["userinfo_endpoint"], headers={"Authorization": f"Bearer {refreshed['access_token']}"}, timeout=TIMEOUT
    )
    check(dead.status_code == 401, "access token of the revoked family is refused at userinfo", dead.status_code)

    summary = {"result": "ok", "issuer": issuer, "sub": claims["sub"], "id_token_alg": claims.header["alg"],
               "consent_shown": consent_shown, "checks": checks}
    print(json.dumps(summary))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as err:  # authlib / joserfc / requests errors: one clear line
        fail(f"{type(err).__name__}: {err}")

"""Production sign-in: the portal against an OpenID Connect provider shaped like Keycloak
(tests/browser/oidc_provider.py), the API verifying its RS256 tokens from the JWKS. Authorization
code with PKCE, the token refreshed before it expires, and sign-out ending the provider's session."""
from __future__ import annotations

import dataclasses
import re

import pytest
from playwright.sync_api import expect

from tests.browser.oidc_provider import REALM, Provider
from tests.conftest import ServerThread

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def sso(lab):
    from controlplane import create_app
    provider = Provider(client_id="cds-portal", redirect_uri="", token_ttl=40)
    idp = ServerThread(provider.app).start()
    provider.issuer = idp.url + REALM
    settings = dataclasses.replace(lab.settings, jwt_secret="", lab=False, jwt_issuer=provider.issuer,
                                   jwt_jwks_url=provider.issuer + "/protocol/openid-connect/certs",
                                   oidc_client_id="cds-portal")
    portal = ServerThread(create_app(settings)).start()
    provider.redirect_uri = portal.url + "/"
    yield provider, portal
    portal.stop()
    idp.stop()


def test_sign_in_with_keycloak_refresh_and_sign_out(sso, new_page, shots):
    provider, portal = sso
    page = new_page()
    page.goto(portal.url + "/")
    expect(page.get_by_label("User ID")).to_have_count(0)  # no lab form outside the lab
    page.get_by_role("button", name="Sign in with Keycloak").click()
    expect(page).to_have_title("Sign in to cds")
    page.get_by_label("Username").fill("alice")
    page.get_by_role("button", name="Sign In").click()

    # Back on the portal, signed in; the code is gone from the address; the API and /ws took the token.
    expect(page.get_by_role("heading", name="Create your desktop")).to_be_visible()
    expect(page.get_by_text("alice", exact=True)).to_be_visible()
    assert "code=" not in page.url and page.url.startswith(portal.url)
    expect(page.locator("#live")).to_have_text(re.compile("live updates on"))
    assert provider.calls[:3] == ["authorize", "login", "token:authorization_code"]
    shots(page, "signed-in")
    first = page.evaluate("sessionStorage.getItem('cds.token')")

    # The 40 s token is refreshed about 30 s before it expires, and the page keeps working with it.
    # (Waiting on the stored token, not on the provider's call log: the provider logs the call when it
    # arrives, and the page stores the new token only once it has read the answer.)
    page.wait_for_function("first => sessionStorage.getItem('cds.token') !== first", arg=first, timeout=50_000)
    assert "token:refresh_token" in provider.calls, provider.calls
    assert page.evaluate("sessionStorage.getItem('cds.token')") is not None
    page.get_by_role("link", name="Projects").click()
    expect(page.get_by_text("No projects yet")).to_be_visible()

    with page.expect_navigation(url=portal.url + "/"):  # through the provider's logout and back
        page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in with Keycloak")).to_be_visible()
    assert provider.calls[-1] == "logout"
    assert page.evaluate("sessionStorage.getItem('cds.token')") is None
    assert not page.errors, page.errors


def test_a_replayed_sign_in_answer_is_refused(sso, new_page):
    """An answer from the provider this page did not ask for (no matching state) signs nobody in."""
    provider, portal = sso
    page = new_page()
    page.goto(portal.url + "/?code=stolen&state=whatever")
    expect(page.get_by_role("status")).to_contain_text("does not match this page's request")
    expect(page.get_by_role("button", name="Sign in with Keycloak")).to_be_visible()
    assert "token:authorization_code" not in provider.calls

"""The API documents (/api/v1/docs) in a real browser with the network blocked: Swagger UI and the
OpenAPI document come from this server alone (offline machines: nothing from a CDN)."""
from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import expect


def test_the_api_docs_render_with_every_other_host_blocked(lab, new_page, shots):
    page = new_page()
    ours = urlsplit(lab.url).netloc
    blocked, served = [], []

    def only_ours(route):
        url = route.request.url
        if urlsplit(url).netloc == ours:
            served.append(url)
            route.continue_()
        else:
            blocked.append(url)
            route.abort()
    page.route("**/*", only_ours)
    page.goto(lab.url + "/api/v1/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Cloud Desktop Service", timeout=30_000)
    # the operations of both APIs, read from this server's OpenAPI document
    expect(page.locator(".opblock-summary-path", has_text="/api/v1/desktops").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/api/projects").first).to_be_visible()
    shots(page, "api-docs")
    assert blocked == [], blocked
    assert any(url.endswith("/api/v1/openapi.json") for url in served), served
    assert page.errors == []

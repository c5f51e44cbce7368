"""The OpenAPI page (/api/v1/docs) loads Swagger UI from this server, never from a CDN (offline machines)."""
from __future__ import annotations

import re


def test_the_docs_page_and_its_assets_are_served_locally(client):
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and not [a for a in assets if "://" in a or a.startswith("//")], assets
    for asset in assets:
        got = client.get(asset)
        assert got.status_code == 200 and got.data, asset
    assert client.get("/api/v1/docs/assets/../../../etc/passwd").status_code == 404

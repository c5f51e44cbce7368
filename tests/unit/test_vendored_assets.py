"""The portal's vendored assets are their releases' files, unchanged (vendor/*/SOURCE says where each
came from; SHA256SUMS holds their digests), and the page loads exactly the version vendored."""
from __future__ import annotations

import hashlib
from pathlib import Path

import controlplane.portal as portal

VENDOR = Path(portal.STATIC) / "vendor"


def test_every_vendored_file_matches_its_recorded_digest():
    folders = [d for d in VENDOR.iterdir() if d.is_dir()]
    assert folders, "nothing vendored?"
    for folder in folders:
        sums = dict(reversed(line.split("  ", 1)) for line in (folder / "SHA256SUMS").read_text().splitlines())
        files = {p.name for p in folder.iterdir()} - {"SHA256SUMS", "SOURCE"}
        assert set(sums) == files, folder
        for name, digest in sums.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, folder / name
        assert "LICENSE" in files and (folder / "SOURCE").read_text().strip()


def test_the_page_loads_the_vendored_version():
    script = (Path(portal.STATIC) / "account.js").read_text()
    [folder] = [d.name for d in VENDOR.iterdir() if d.name.startswith("uplot-")]
    assert f"./vendor/{folder}/uPlot.esm.js" in script and f"/portal/static/vendor/{folder}/uPlot.min.css" in script

"""The portal in a real browser: Playwright drives Debian's headless Chromium (installed by
scripts/ensure-debian-packages.sh from `make test`; CONTROLPLANE_TEST_CHROMIUM names another binary) against
the lab of tests/conftest.py (fakepve, the Guacamole stand-in, real workers, the API over HTTP).

Screenshots of every step are saved under var/test-artifacts/browser/<test>/ (CONTROLPLANE_TEST_ARTIFACTS
moves them), kept whether the test passes or fails; a failing test also gets `failure.png`.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = os.environ.get("CONTROLPLANE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CONTROLPLANE_TEST_ARTIFACTS") or REPO / "var" / "test-artifacts") / "browser"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/browser/" in str(item.path):
            item.add_marker(pytest.mark.browser)


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def playwright_instance():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"No Chromium at {CHROMIUM}: `make test` installs Debian's chromium (scripts/ensure-debian-packages.sh), "
                    "or set CONTROLPLANE_TEST_CHROMIUM", pytrace=False)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def chromium(playwright_instance):
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                  args=["--no-sandbox", "--disable-dev-shm-usage"])
    yield browser
    browser.close()


class Shots:
    """Numbered screenshots of one test's pages."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.count = 0
        self.pages = []

    def __call__(self, page, name: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(request):
    directory = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    yield Shots(directory)


@pytest.fixture
def new_page(chromium, shots, request):
    """Pages in their own browser contexts (separate sessionStorage: separate people)."""
    contexts = []

    def make(viewport=None):
        context = chromium.new_context(viewport=viewport or {"width": 1280, "height": 900})
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        # Console errors are the page's own (a CSP refusal, a bug); an API's 4xx answer is logged by the
        # browser as a failed resource, which the tests that expect one check on screen.
        # The tests' API runs on werkzeug's server, which writes its HTTP response line after a WebSocket
        # the browser closed ("Invalid frame header"); gunicorn, as under `make lab`, does not.
        page.on("console", lambda msg: page.errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                and not msg.text.endswith("failed: Invalid frame header") else None)
        shots.pages.append(page)
        return page

    yield make
    if request.node.stash.get(_FAILED, False):  # each page as the failure left it
        for n, page in enumerate(shots.pages, 1):
            try:
                page.screenshot(path=str(shots.directory / f"failure-page{n}.png"), full_page=True)
            except Exception:  # a page the test closed
                pass
    for context in contexts:
        context.close()


def sign_in(page, base_url: str, user: str, admin: bool = False):
    """The lab's sign-in form, as a person fills it in."""
    page.goto(base_url + "/")
    page.get_by_label("User ID").fill(user)
    if admin:
        page.get_by_label("Sign in as an administrator").check()
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


@pytest.fixture
def screens(lab, tmp_path):
    """The lab's screens on, for this test (the other tests' VMs need none)."""
    from controlplane.lab.screens import LabScreens, missing
    lacks = missing()
    if lacks:
        pytest.fail(f"the lab's screens need {', '.join(lacks)}: `make test` installs them "
                    "(scripts/ensure-debian-packages.sh); Debian: apt-get install xvfb x11vnc xterm novnc", pytrace=False)
    made = LabScreens(tmp_path / "screens", lab.services.config.vnc_password)
    lab.services.call(lambda: setattr(lab.services.proxmox, "screens", made))
    lab.services.guacamole.screens = made
    yield made
    lab.services.call(lambda: setattr(lab.services.proxmox, "screens", None))
    lab.services.guacamole.screens = None
    lab.services.call(made.stop)

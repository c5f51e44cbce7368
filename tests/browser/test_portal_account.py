"""The user's own pages in the portal (issue 21, item 4): Usage, with its totals, a chart per day drawn
by the vendored charting library (served by the API: the page fetches nothing from elsewhere) and a
table per model; Settings, the chat settings form, saved and refused as the API says. Both with the
keyboard alone."""
from __future__ import annotations

import datetime as dt

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import sign_in

pytestmark = pytest.mark.timeout(300)


def add_usage(user: str, model: str, tokens: int, cost: float, days_ago: int) -> None:
    from controlplane.extensions import db
    from controlplane.models import UsageRecord, utcnow
    with db.connection_context():
        UsageRecord.create(user_id=user, model=model, tokens=tokens, cost=cost,
                           created_at=utcnow() - dt.timedelta(days=days_ago))


def test_usage_page_shows_totals_a_chart_per_day_and_each_model(lab, new_page, shots, fresh_user):
    add_usage(fresh_user, "openai/gpt-4", 1200, 0.36, 3)
    add_usage(fresh_user, "openrouter/openai/gpt-4", 800, 0.24, 1)
    add_usage(fresh_user, "anthropic/claude-3-opus", 500, 0.75, 1)
    add_usage(fresh_user, "openai/gpt-4", 9000, 2.7, 60)  # outside the last 30 days
    page = new_page()
    elsewhere = []
    page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith((lab.url, "data:")) else None)
    sign_in(page, lab.url, fresh_user)
    page.get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
    expect(page.locator("[data-total=tokens]")).to_have_text("2,500")
    expect(page.locator("[data-total=cost]")).to_have_text("$1.35")
    expect(page.locator("[data-total=requests]")).to_have_text("3")
    # The chart per day: the library drew it (a canvas with the models as its series' labels).
    chart = page.get_by_role("figure", name="Tokens per day")
    expect(chart.locator(".plot canvas")).to_have_count(1)
    expect(chart.locator(".u-legend")).to_contain_text("gpt-4")
    expect(chart.locator(".u-legend")).to_contain_text("claude-3-opus")
    # Per model: one row per model, whichever provider served it.
    rows = page.get_by_role("table", name="Usage per model").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("gpt-4")
    expect(rows.nth(0)).to_contain_text("2,000")
    shots(page, "usage")

    # The period, with the keyboard: all time adds the old usage.
    page.get_by_label("Period").focus()
    page.keyboard.press("End")  # the last option: All time
    expect(page.get_by_label("Period")).to_have_value("all_time")
    expect(page.locator("[data-total=tokens]")).to_have_text("11,500")
    page.get_by_text("The figures").click()
    days = page.get_by_role("table", name="Tokens per day and model").locator("tbody tr")
    expect(days).to_have_count(3)
    assert not elsewhere, elsewhere  # the page and its chart library came from the API alone


def test_settings_page_saves_and_shows_the_apis_refusal(lab, new_page, shots, fresh_user):
    page = new_page()
    sign_in(page, lab.url, fresh_user)
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("heading", name="Settings", level=1)).to_be_visible()
    shots(page, "settings")

    # A temperature the API refuses: its message, on the field.
    page.get_by_label("Temperature").fill("5")
    page.get_by_role("button", name="Save settings").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("model_parameters.temperature")
    expect(page.get_by_label("Temperature")).to_have_attribute("aria-invalid", "true")

    # Filled and saved with the keyboard alone.
    page.get_by_label("Preferred model").fill("anthropic/claude-3-opus")
    page.get_by_label("Temperature").fill("0.4")
    page.get_by_label("Max tokens per answer").fill("1500")
    page.get_by_label("Custom models").fill("compat/llama3\nopenrouter/mistralai/mistral-large")
    page.get_by_label("Max tokens per answer").focus()
    page.keyboard.press("Enter")  # submits the form
    expect(page.get_by_role("status")).to_contain_text("Settings saved: anthropic/claude-3-opus")
    saved = requests.get(f"{lab.url}/api/user/settings", timeout=10,
                         headers={"Authorization": f"Bearer {lab.token(fresh_user)}"}).json()
    assert saved["preferred_model"] == "anthropic/claude-3-opus"
    assert saved["model_parameters"] == {"temperature": 0.4, "max_tokens": 1500}
    assert saved["custom_models"] == ["compat/llama3", "openrouter/mistralai/mistral-large"]
    page.reload()
    expect(page.get_by_label("Preferred model")).to_have_value("anthropic/claude-3-opus")
    expect(page.get_by_label("Custom models")).to_have_value("compat/llama3\nopenrouter/mistralai/mistral-large")

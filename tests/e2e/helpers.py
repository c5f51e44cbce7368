"""Small HTTP helpers for the end-to-end tests (the contract's own client is in contract_client.py)."""
from __future__ import annotations

import time

import requests

TRANSITIONAL = {"PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "STOPPING", "DELETING"}


class Api:
    def __init__(self, base_url: str, token: str):
        self.base = base_url.rstrip("/") + "/api/v1/desktops"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def create(self, user_id: str, plan: str = "STANDARD", name: str | None = None):
        body = {"userId": user_id, "plan": plan}
        if name is not None:
            body["name"] = name
        return self.session.post(self.base, json=body, timeout=10)

    def get(self, desktop_id: int):
        return self.session.get(f"{self.base}/{desktop_id}", timeout=10)

    def status(self, desktop_id: int, refresh: bool = False):
        return self.session.get(f"{self.base}/{desktop_id}/status", params={"refresh": str(refresh).lower()},
                                timeout=10)

    def connect(self, desktop_id: int):
        return self.session.get(f"{self.base}/{desktop_id}/connect", timeout=10)

    def start(self, desktop_id: int):
        return self.session.post(f"{self.base}/{desktop_id}/start", timeout=10)

    def stop(self, desktop_id: int, force: bool | None = None):
        kwargs = {} if force is None else {"json": {"force": force}}
        return self.session.post(f"{self.base}/{desktop_id}/stop", timeout=10, **kwargs)

    def delete(self, desktop_id: int):
        return self.session.delete(f"{self.base}/{desktop_id}", timeout=10)

    def wait_settled(self, desktop_id: int, timeout: float = 90, refresh: bool = False) -> dict:
        """Poll until the desktop leaves the transitional states; return its status data."""
        deadline = time.monotonic() + timeout
        data = None
        while time.monotonic() < deadline:
            response = self.status(desktop_id, refresh=refresh)
            assert response.status_code == 200, response.text
            data = response.json()["data"]
            if data["status"] not in TRANSITIONAL:
                return data
            time.sleep(0.3)
        raise AssertionError(f"desktop {desktop_id} still {data and data['status']} after {timeout}s")


def events(desktop_id: int) -> list[tuple[str, str, str]]:
    """(status, message, source) of every recorded status change, in order."""
    from controlplane.extensions import db
    from controlplane.models import DesktopEvent
    with db.connection_context():
        return [(e.status, e.message, e.source) for e in
                DesktopEvent.select().where(DesktopEvent.desktop == desktop_id).order_by(DesktopEvent.id)]


def desktop_row(desktop_id: int):
    from controlplane.extensions import db
    from controlplane.models import Desktop
    with db.connection_context():
        return Desktop.get_by_id(desktop_id)


def wait_for_status_event(listener, seen_now, wanted, timeout: float = 60) -> None:
    """Wait for the status event `wanted` ((status, message)) on `listener` (a Redis pub/sub subscribed to the
    record's channel before its status could change), unless `seen_now()` (the record as it is) shows it
    already; no polling: each wait is for the next published event, up to the deadline."""
    import json
    if seen_now() == wanted:
        return
    deadline = time.monotonic() + timeout
    last = None
    while (left := deadline - time.monotonic()) > 0:
        message = listener.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is None:
            continue
        event = json.loads(message["data"])
        last = (event.get("status"), event.get("statusMessage", event.get("status_message")))
        if last == wanted:
            return
    raise AssertionError(f"never saw {wanted}; last event {last}")

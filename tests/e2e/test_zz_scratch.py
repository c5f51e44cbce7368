import time
from .helpers import Api, desktop_row, events

def test_timing(lab, fresh_user):
    api = Api(lab.url, lab.token(fresh_user))
    t = time.monotonic()
    d = api.create(fresh_user, plan="BASIC").json()["data"]["id"]
    print("create", api.wait_settled(d)["status"], time.monotonic() - t)
    for e in events(d): print(e)
    t = time.monotonic()
    api.delete(d)
    print("delete", api.wait_settled(d)["status"], time.monotonic() - t)

"""`controlplane lab`'s settings for its API and workers (issue 22, item 9): the user's own CONTROLPLANE_*
win over the lab's defaults (a real Guacamole, another Proxmox), as the lab says; the lab stays the lab
and keeps the Redis it chose."""
from __future__ import annotations

from controlplane.lab.main import with_users_settings


def test_the_users_settings_win_over_the_labs_defaults():
    lab = {"CONTROLPLANE_LAB": "true", "CONTROLPLANE_GUACAMOLE_URL": "http://127.0.0.1:8090/guacamole",
           "CONTROLPLANE_PROXMOX_HOST": "127.0.0.1", "CONTROLPLANE_REDIS_URL": "unix:///lab/redis.sock"}
    users = {"CONTROLPLANE_GUACAMOLE_URL": "https://guacamole.example.com/guacamole",
             "CONTROLPLANE_LOG_FORMAT": "json", "CONTROLPLANE_LAB": "false",
             "CONTROLPLANE_REDIS_URL": "redis://elsewhere:6379/0", "HOME": "/root"}
    got = with_users_settings(lab, users)
    assert got == {"CONTROLPLANE_LAB": "true", "CONTROLPLANE_GUACAMOLE_URL": "https://guacamole.example.com/guacamole",
                   "CONTROLPLANE_PROXMOX_HOST": "127.0.0.1", "CONTROLPLANE_REDIS_URL": "unix:///lab/redis.sock",
                   "CONTROLPLANE_LOG_FORMAT": "json"}
    assert with_users_settings(lab, {}) == lab

"""User text reaches Redis channel names only as a digest (SECURITY.md: an anonymous client or another user)."""
import re

from controlplane.services.queue import EVENTS_CHANNEL_PREFIX, project_channel, user_channel

ODD_IDS = ["alice", "a*", "bob\r\nPUBLISH x y", "user:alice", "Zoë", "x" * 5000, "\ud800", "project:p1", ""]


def test_user_text_reaches_event_channels_only_as_a_digest():
    channels = [user_channel(u) for u in ODD_IDS] + [project_channel(p) for p in ODD_IDS]
    for channel in channels:
        assert re.fullmatch(re.escape(EVENTS_CHANNEL_PREFIX) + r"(user|project):[0-9a-f]{64}", channel), channel
    assert len(set(channels)) == len(channels)  # no two ids, and no user and project, share a channel

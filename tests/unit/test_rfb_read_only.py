"""The lab relay's read-only filter (lab/rfb.py ReadOnly): a viewer's browser may ask for pictures,
never type, point or paste, as guacd keeps a connection whose `read-only` parameter is true."""
from __future__ import annotations

import struct

import pytest

from controlplane.lab.rfb import ReadOnly, RfbError

SET_PIXEL_FORMAT = bytes([0]) + bytes(19)
SET_ENCODINGS = struct.pack(">BxHii", 2, 2, 0, -223)
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 1024, 768)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 1, 10, 20)
CUT_TEXT = struct.pack(">BxxxI", 6, 5) + b"hello"
EXTENDED_CUT_TEXT = struct.pack(">Bxxxi", 6, -8) + struct.pack(">II", 0x01000001, 100)  # noVNC's clipboard caps
QEMU_KEY = struct.pack(">BBHII", 255, 0, 1, 0x61, 30)
FENCE = struct.pack(">BxxxIB", 248, 0, 3) + b"abc"
CLIENT_INIT = bytes([1])  # shared: what the browser sends first after the security handshake


def test_only_the_requests_for_pictures_pass():
    stream = (CLIENT_INIT + SET_PIXEL_FORMAT + SET_ENCODINGS + KEY + POINTER + UPDATE_REQUEST + CUT_TEXT + QEMU_KEY
              + FENCE)
    assert ReadOnly().feed(stream) == CLIENT_INIT + SET_PIXEL_FORMAT + SET_ENCODINGS + UPDATE_REQUEST + FENCE


def test_messages_split_anywhere_are_framed_the_same():
    stream = CLIENT_INIT + KEY + SET_ENCODINGS + CUT_TEXT + EXTENDED_CUT_TEXT + UPDATE_REQUEST + POINTER
    for cut in range(len(stream)):
        guard = ReadOnly()
        assert guard.feed(stream[:cut]) + guard.feed(stream[cut:]) == CLIENT_INIT + SET_ENCODINGS + UPDATE_REQUEST, cut


def test_an_unknown_message_or_an_oversized_one_ends_the_relay():
    with pytest.raises(RfbError, match="unknown"):
        ReadOnly().feed(CLIENT_INIT + bytes([99, 0, 0, 0]))
    with pytest.raises(RfbError, match="too large"):
        ReadOnly().feed(CLIENT_INIT + struct.pack(">BxxxI", 6, 64 * 1024 * 1024))

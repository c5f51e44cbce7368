"""Request bodies of the two APIs are at most `max_request_body` bytes (Flask's MAX_CONTENT_LENGTH).

A body whose Content-Length is over the limit is refused by Werkzeug before any of it is read (a
413, which api/errors.py renders in each API's envelope). A chunked body has no Content-Length:
Werkzeug reads it up to the limit and silently stops there, so a body over the limit came out cut
("not valid JSON", or JSON followed by padding accepted). `ChunkedBodies` reads such a body first,
never more than the limit and one byte, and hands it on with its length: a body over the limit is
handed on as empty with a length of limit + 1, so it is refused as the view starts reading it,
exactly as one whose Content-Length said so. Mounted under the shares' dispatcher: /shares (WebDAV)
is not concerned, it has its own limits.
"""
from __future__ import annotations

import io

from flask import Flask
from werkzeug.wsgi import get_content_length


class ChunkedBodies:
    def __init__(self, wsgi_app, limit: int):
        self.wsgi_app = wsgi_app
        self.limit = limit

    def __call__(self, environ, start_response):
        # A chunked body the server ends for us (wsgi.input_terminated): what Werkzeug would cut at the limit.
        if ("chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and get_content_length(environ) is None
                and environ.get("wsgi.input_terminated")):
            stream, body = environ["wsgi.input"], bytearray()
            while len(body) <= self.limit:
                chunk = stream.read(self.limit + 1 - len(body))
                if not chunk:
                    break
                body += chunk
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            if len(body) > self.limit:
                body = bytearray()  # not kept; its announced length makes it a 413 when read
                environ["CONTENT_LENGTH"] = str(self.limit + 1)
            else:
                environ["CONTENT_LENGTH"] = str(len(body))
            environ["wsgi.input"] = io.BytesIO(bytes(body))
        return self.wsgi_app(environ, start_response)


def init_bodies(app: Flask, limit: int) -> None:
    """`limit` is the app's MAX_CONTENT_LENGTH (create_app sets both from max_request_body)."""
    app.wsgi_app = ChunkedBodies(app.wsgi_app, limit)

"""Extension objects, created unbound; create_app() and the worker bind them. No I/O at import."""
from __future__ import annotations

from flask_jwt_extended import JWTManager
from flask_smorest import Api, Blueprint
from peewee import DatabaseProxy


class _Api(Api):
    """flask-smorest, documenting the errors as api/errors.py renders them: each operation's
    `default` error is one of the two contracts' envelopes, not flask-smorest's {code, status,
    message, errors}, which these APIs never answer."""

    @property
    def ERROR_SCHEMA(self):  # noqa: N802 (flask-smorest's name)
        return {"oneOf": [{"$ref": "#/components/schemas/DesktopError"},
                          {"$ref": "#/components/schemas/ProjectError"}]}


# Request validation errors are 400s in both contracts (api/errors.py answers webargs' errors so): so
# they are documented, instead of flask-smorest's default 422.
Blueprint.ARGUMENTS_PARSER.DEFAULT_VALIDATION_STATUS = 400

api = _Api()
jwt = JWTManager()
db = DatabaseProxy()

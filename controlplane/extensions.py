"""Extension objects, created unbound; create_app() and the worker bind them. No I/O at import."""
from __future__ import annotations

from flask_jwt_extended import JWTManager
from flask_smorest import Api, Blueprint
from peewee import DatabaseProxy
from webargs import missing
from webargs.flaskparser import FlaskParser, is_json_request


class _Api(Api):
    """flask-smorest, documenting the errors as api/errors.py renders them: each operation's
    `default` error is one of the two contracts' envelopes, not flask-smorest's {code, status,
    message, errors}, which these APIs never answer."""

    @property
    def ERROR_SCHEMA(self):  # noqa: N802 (flask-smorest's name)
        return {"oneOf": [{"$ref": "#/components/schemas/DesktopError"},
                          {"$ref": "#/components/schemas/ProjectError"}]}


class _Parser(FlaskParser):
    """webargs reading a JSON body through `request.get_json()`: the app's one strict parse
    (api/jsonbody.py), done once per request, not json.loads again."""

    def _raw_load_json(self, req):
        if not is_json_request(req) or not req.get_data(cache=True):
            return missing
        return req.get_json()


# Request validation errors are 400s in both contracts (api/errors.py answers webargs' errors so): so
# they are documented, instead of flask-smorest's default 422. Set before any blueprint's
# @arguments is declared (the resources import this module first).
Blueprint.ARGUMENTS_PARSER = _Parser()
Blueprint.ARGUMENTS_PARSER.DEFAULT_VALIDATION_STATUS = 400

api = _Api()
jwt = JWTManager()
db = DatabaseProxy()

"""Extension objects, created unbound; create_app() and the worker bind them. No I/O at import."""
from __future__ import annotations

from flask_jwt_extended import JWTManager
from flask_smorest import Api
from flask_sock import Sock
from peewee import DatabaseProxy

api = Api()
jwt = JWTManager()
sock = Sock()
db = DatabaseProxy()

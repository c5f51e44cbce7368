# One Proxmox VE API request for what no community.proxmox module does (the login ticket for the
# guest agent's addresses, the VM firewall's options), made from the Ansible process with the
# urllib opener ansible.builtin.uri uses (ansible.module_utils.urls.Request) and answered as uri
# answers: status, json, msg ("Status code was 500 and not [200]: HTTP Error 500: ...", "Status
# code was -1 and not [200]: Request failed: <urlopen error ...>"), failed when the status is not
# one of status_code. No module process is started for it (a create makes two such requests, and a
# wait for the guest agent one per poll). Documentation: library/proxmox_desktop_request.py.
from __future__ import annotations

import http.client
import json
import urllib.error
from urllib.parse import urlencode

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.urls import Request, make_context
from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = {
    "url": {"type": "str", "required": True},
    "method": {"type": "str", "default": "GET", "choices": ["GET", "POST", "PUT", "DELETE"]},
    "headers": {"type": "dict", "default": {}},
    "body": {"type": "dict"},  # sent form-urlencoded, as PVE takes it
    "validate_certs": {"type": "bool", "default": True},
    "timeout": {"type": "int", "default": 30},
    "status_code": {"type": "list", "elements": "int", "default": [200]},
}



# open_url builds a TLS context for every request, loading the system's CA certificates each time
# (about 20 ms, even for http://); one context per setting is built once per process and reused.
_CONTEXTS: dict = {}


def _context(validate_certs: bool):
    if validate_certs not in _CONTEXTS:
        _CONTEXTS[validate_certs] = make_context(validate_certs=validate_certs)
    return _CONTEXTS[validate_certs]

def request(url: str, method: str, headers: dict, body: dict | None, validate_certs: bool,
            timeout: int) -> tuple[int, bytes, str]:
    """(status, body, message) as fetch_url reports them; status -1 when there was no answer."""
    data = None
    headers = dict(headers)
    if body is not None:
        data = urlencode(body)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        opener = Request(use_proxy=True, http_agent="ansible-httpget", follow_redirects="urllib2",
                         validate_certs=validate_certs, context=_context(validate_certs))
        response = opener.open(method, url, data=data, headers=headers, timeout=timeout)
        content = response.read()
        return response.status, content, f"OK ({len(content)} bytes)"
    except urllib.error.HTTPError as exc:
        try:
            content = exc.read() if exc.fp is not None else b""
        finally:
            exc.close()
        return exc.code, content, str(exc)
    except urllib.error.URLError as exc:
        return int(getattr(exc, "code", -1)), b"", f"Request failed: {exc}"
    except OSError as exc:
        return -1, b"", f"Connection failure: {exc}"
    except http.client.HTTPException as exc:
        return -1, b"", f"Connection failure: {type(exc).__name__}: {exc}"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        checked = ArgumentSpecValidator(ARGUMENT_SPEC).validate(self._task.args)
        if checked.error_messages:
            raise AnsibleActionFail("; ".join(checked.error_messages))
        args = checked.validated_parameters
        status, content, message = request(args["url"], args["method"], args["headers"], args["body"],
                                           args["validate_certs"], args["timeout"])
        result.update(changed=False, url=args["url"], status=status, msg=message)
        if content:
            try:
                result["json"] = json.loads(content)
            except ValueError:
                pass
        if status not in args["status_code"]:
            result.update(failed=True, msg=f"Status code was {status} and not {args['status_code']}: {message}")
        return result

# The guacamole_connection task, run in the Ansible process: the module's own code
# (library/guacamole_connection.py, `run`) with ansible.module_utils.urls.Request (open_url's) in place of
# fetch_url, so no interpreter is started and no AnsiballZ payload built for it (a create and a
# delete each make one such task). What it answers, and its messages, are the module's.
from __future__ import annotations

import http.client
import importlib.util
import os
import sys
import urllib.error

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.urls import Request, make_context
from ansible.plugins.action import ActionBase

_LIBRARY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "library",
                        "guacamole_connection.py")



# open_url builds a TLS context for every request, loading the system's CA certificates each time
# (about 20 ms, even for http://); one context per setting is built once per process and reused.
_CONTEXTS: dict = {}


def _context(validate_certs: bool):
    if validate_certs not in _CONTEXTS:
        _CONTEXTS[validate_certs] = make_context(validate_certs=validate_certs)
    return _CONTEXTS[validate_certs]

def _module():
    name = "_cds_guacamole_connection_module"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _LIBRARY)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _fetch(validate_certs: bool):
    """fetch_url's answer (response or None, info), for the calls the module makes."""
    def fetch(url, data, headers, method, timeout):
        info = {"url": url, "status": -1}
        try:
            response = Request().open(method or ("POST" if data else "GET"), url, data=data, headers=headers,
                                timeout=timeout,
                                validate_certs=validate_certs, use_proxy=True, http_agent="ansible-httpget",
                                follow_redirects="urllib2", context=_context(validate_certs))
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read() if exc.fp is not None else b""
            finally:
                exc.close()
            info.update({"msg": str(exc), "body": body, "status": exc.code})
            return None, info
        except urllib.error.URLError as exc:
            info.update(msg=f"Request failed: {exc}", status=int(getattr(exc, "code", -1)))
            return None, info
        except OSError as exc:
            info.update(msg=f"Connection failure: {exc}")
            return None, info
        except http.client.HTTPException as exc:
            info.update(msg=f"Connection failure: {type(exc).__name__}: {exc}")
            return None, info
        except Exception as exc:  # noqa: BLE001 - as fetch_url: a failed call, not a crashed task
            info.update(msg=f"An unknown error occurred: {exc}")
            return None, info
        info.update(msg="OK", status=response.status)
        return response, info
    return fetch


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        module = _module()
        checked = ArgumentSpecValidator(module.ARGUMENT_SPEC).validate(self._task.args)
        if checked.error_messages:
            raise AnsibleActionFail("; ".join(checked.error_messages))
        params = checked.validated_parameters
        answer, error = module.run(params, self._task.check_mode, _fetch(params["validate_certs"]))
        result.update(answer)
        if error:
            result.update(failed=True, msg=error)
        # As AnsibleModule does: no value of a no_log option (the passwords) in anything answered.
        return remove_values(result, checked._no_log_values)

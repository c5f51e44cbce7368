"""The API's and workers' Proxmox client (services/proxmox.py): an API token given either way."""
from __future__ import annotations

import pytest

from controlplane.services.proxmox import _client


@pytest.mark.parametrize("user, token_id", [("root@pam", "cp"), ("someone@pve", "root@pam!cp")])
def test_a_token_id_may_name_its_user(user, token_id):
    auth = _client("127.0.0.1", 9, user, "", token_id, "s3cret", False, 1)._backend.auth
    assert (auth.username, auth.token_name, auth.token_value) == ("root@pam", "cp", "s3cret")


def test_without_a_token_the_client_logs_in_with_the_password():
    """A token needs no login (the client above was made with nothing listening); a password does."""
    import requests
    with pytest.raises(requests.exceptions.ConnectionError, match="access/ticket"):
        _client("127.0.0.1", 9, "root@pam", "pw", "", "", False, 1)

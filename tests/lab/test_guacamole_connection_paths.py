"""The guacamole_connection role's two ways of running: its action plugin (the module's code in
the Ansible process, as the role runs it) and the module on its own (`-M library`), against two
fresh Guacamole stand-ins: the same sequence answers the same, and no password is in either."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.lab.test_guacamole_standin import ADMIN_PASSWORD, loop_thread, make_standin  # noqa: F401 (fixtures)

ROLE = Path(__file__).resolve().parents[2] / "roles" / "guacamole_connection"
VNC_PASSWORD = "vnc-pw-7731"

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    guacamole_connection:
      api_url: "{{ url }}"
      api_username: guacadmin
      api_password: "{{ admin_password }}"
      validate_certs: false
      name: cds-desktop-7
  tasks:
    - {guacamole_connection: {hostname: 10.0.0.5, port: "5900", password: "{{ vnc }}", user: cds-u-abc}, register: first}
    - {guacamole_connection: {hostname: 10.0.0.5, port: "5900", password: "{{ vnc }}", user: cds-u-abc}, register: again}
    - {guacamole_connection: {hostname: 10.0.0.6, port: "5900", password: "{{ vnc }}", user: cds-u-abc}, register: moved}
    - {guacamole_connection: {state: absent, user: cds-u-abc}, register: gone}
    - {guacamole_connection: {state: absent, user: cds-u-abc}, register: gone_again}
    - {guacamole_connection: {hostname: "", user: cds-u-abc}, register: no_host, ignore_errors: true}
    - {guacamole_connection: {hostname: 10.0.0.5, api_password: wrong-pw}, register: bad_login, ignore_errors: true}
    - ansible.builtin.copy:
        dest: "{{ out }}"
        content: "{{ {'first': first, 'again': again, 'moved': moved, 'gone': gone, 'gone_again': gone_again,
                      'no_host': no_host, 'bad_login': bad_login} | to_json }}"
        mode: "0600"
"""


def run(tmp_path: Path, name: str, url: str, action_plugin: bool) -> dict:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "play.yml").write_text(PLAYBOOK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_LOCAL_TEMP=str(folder / "tmp"),
               ANSIBLE_HOME=str(folder / "home"), ANSIBLE_PIPELINING="true", ANSIBLE_NOCOLOR="1",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_LOCALHOST_WARNING="false")
    # Each run can only take its own way: the action plugin without the module on the path, or the other way.
    if action_plugin:
        env["ANSIBLE_ACTION_PLUGINS"] = str(ROLE / "action_plugins")
    else:
        env["ANSIBLE_LIBRARY"] = str(ROLE / "library")
    out = folder / "results.json"
    extra = json.dumps({"url": url, "admin_password": ADMIN_PASSWORD, "vnc": VNC_PASSWORD, "out": str(out),
                        "ansible_python_interpreter": sys.executable})
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", extra, str(folder / "play.yml")], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for secret in (ADMIN_PASSWORD, VNC_PASSWORD):
        assert secret not in done.stdout + done.stderr
    text = out.read_text()
    assert ADMIN_PASSWORD not in text and VNC_PASSWORD not in text
    return json.loads(text.replace(url, "<guacamole>"))  # the two stand-ins' ports differ


def answer(result: dict) -> dict:
    """What the task answered, without what only a module process adds (its invocation)."""
    return {k: v for k, v in result.items() if k != "invocation" and not k.startswith("_ansible")}


def test_the_action_plugin_answers_as_the_module_does(tmp_path, make_standin):
    by_plugin = run(tmp_path, "plugin", make_standin().url, action_plugin=True)
    by_module = run(tmp_path, "module", make_standin().url, action_plugin=False)
    for step in by_plugin:
        assert answer(by_plugin[step]) == answer(by_module[step]), step
    assert by_plugin["first"]["created"] and by_plugin["first"]["user_created"] and by_plugin["first"]["granted"]
    assert not by_plugin["again"]["changed"]
    assert by_plugin["moved"]["updated"] and by_plugin["gone"]["deleted"] and by_plugin["gone"]["user_deleted"]
    assert not by_plugin["gone_again"]["changed"]
    assert by_plugin["no_host"]["failed"] and "hostname" in by_plugin["no_host"]["msg"]
    assert by_plugin["bad_login"]["failed"]
    assert by_plugin["bad_login"]["msg"] == "Guacamole login as guacadmin at <guacamole> failed (HTTP 403): Invalid login"

"""The tests' labs start on ports found free a moment before (free_port): another process can take one
in between (make test runs its passes side by side). start_lab_services then starts again on new ones."""
from __future__ import annotations

import socket

from controlplane.lab.services import LabConfig
from tests.conftest import free_port, start_lab_services


def test_a_port_taken_in_between_makes_the_lab_start_again_on_new_ones(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    tries = []

    def config():
        port = taken.getsockname()[1] if not tries else free_port()  # the first try meets a taken port
        tries.append(port)
        return LabConfig(state_dir=tmp_path, proxmox_host="127.0.0.1", proxmox_port=port,
                         guacamole_port=free_port(), llm_port=free_port())
    try:
        made, services = start_lab_services(config)
    finally:
        taken.close()
    try:
        assert len(tries) == 2 and made.proxmox_port == tries[1]
        assert services.proxmox.url.endswith(f":{tries[1]}")
    finally:
        services.stop()

"""The desktop state machine (controlplane/states.py) against the desktop contract."""
from __future__ import annotations

import itertools

import pytest

from controlplane.config import REPO_ROOT
from controlplane.states import (ACCEPTED, ALLOWED_FROM, CANCELLABLE, FAILURE_VERB, FINAL_STATUS, INACTIVE,
                                 PLAYBOOK, PROGRESSION, RESTING, TASK_FILE_STATUS, TRANSITIONAL, Operation, Status,
                                 can)

S = Status
CONTRACT_STATUSES = ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING", "STOPPING",
                     "STOPPED", "DELETING", "DELETED", "FAILED"]


def advances(operation, current, new):
    from controlplane.services.kinds import DESKTOP
    return DESKTOP.advances(operation, current, new)


def test_statuses_are_exactly_the_contracts():
    assert [s.value for s in Status] == CONTRACT_STATUSES
    assert all(s.name == s.value for s in Status)
    assert f"{Status.WAITING_FOR_IP}" == "WAITING_FOR_IP"
    assert str(Operation.DELETE) == "delete"


# ---- which operation a user may ask for, from which status -----------------------------------------

def test_allowed_from_matches_the_contract():
    assert ALLOWED_FROM == {
        Operation.START: {S.STOPPED},
        Operation.STOP: {S.RUNNING},
        # a delete also cancels a create or start under way (issue 21): never a stop or another delete
        Operation.DELETE: {S.RUNNING, S.STOPPED, S.FAILED,
                           S.PENDING, S.PROVISIONING, S.STARTING, S.WAITING_FOR_IP, S.CONFIGURING},
    }
    assert CANCELLABLE == set(PROGRESSION[Operation.CREATE]) | set(PROGRESSION[Operation.START])
    assert RESTING == {S.RUNNING, S.STOPPED, S.FAILED}
    # create is not a per-desktop operation: it has no "allowed from" row
    assert Operation.CREATE not in ALLOWED_FROM


@pytest.mark.parametrize("operation,status,expected", [
    (Operation.START, S.STOPPED, True),
    (Operation.START, S.RUNNING, False),
    (Operation.START, S.FAILED, False),
    (Operation.START, S.STARTING, False),
    (Operation.STOP, S.RUNNING, True),
    (Operation.STOP, S.STOPPED, False),
    (Operation.STOP, S.STOPPING, False),
    (Operation.STOP, S.CONFIGURING, False),
    (Operation.DELETE, S.RUNNING, True),
    (Operation.DELETE, S.STOPPED, True),
    (Operation.DELETE, S.FAILED, True),
    (Operation.DELETE, S.DELETED, False),
    (Operation.DELETE, S.DELETING, False),
    (Operation.DELETE, S.PENDING, True),  # cancels the create
    (Operation.DELETE, S.CONFIGURING, True),
    (Operation.DELETE, S.STOPPING, False),
])
def test_can(operation, status, expected):
    assert can(operation, status) is expected
    assert can(operation, status.value) is expected  # the database stores plain strings


def test_can_rejects_an_unknown_status():
    with pytest.raises(ValueError):
        can(Operation.START, "ASLEEP")


def test_no_user_operation_while_a_transition_runs_or_after_deletion_but_a_cancelling_delete():
    for operation, status in itertools.product(ALLOWED_FROM, TRANSITIONAL | INACTIVE):
        cancels = operation is Operation.DELETE and status in CANCELLABLE
        assert can(operation, status) is cancels, (operation, status)


def test_every_resting_status_offers_the_contracts_user_actions():
    resting = set(Status) - TRANSITIONAL - INACTIVE
    assert resting == {S.RUNNING, S.STOPPED, S.FAILED}
    actions = {s: {op for op in ALLOWED_FROM if can(op, s)} for s in resting}
    assert actions == {S.RUNNING: {Operation.STOP, Operation.DELETE},
                       S.STOPPED: {Operation.START, Operation.DELETE},
                       S.FAILED: {Operation.DELETE}}


# ---- what a running job does ---------------------------------------------------------------------

def test_create_progression_is_the_contracts():
    assert PROGRESSION[Operation.CREATE] == (S.PENDING, S.PROVISIONING, S.STARTING, S.WAITING_FOR_IP, S.CONFIGURING)
    assert FINAL_STATUS[Operation.CREATE][0] is S.RUNNING


def test_accepted_status_starts_each_progression_and_final_status_ends_it():
    for op in Operation:
        accepted, message = ACCEPTED[op]
        assert PROGRESSION[op][0] is accepted
        assert message
        final, final_message = FINAL_STATUS[op]
        assert final not in TRANSITIONAL and final not in PROGRESSION[op]
        assert final_message
        assert FAILURE_VERB[op]
    assert {op: FINAL_STATUS[op][0] for op in Operation} == {
        Operation.CREATE: S.RUNNING, Operation.START: S.RUNNING, Operation.STOP: S.STOPPED,
        Operation.DELETE: S.DELETED}


def test_transitional_statuses_are_exactly_those_jobs_move_through():
    moving = {s for steps in PROGRESSION.values() for s in steps}
    assert TRANSITIONAL == moving


def test_every_status_is_covered_by_some_rule():
    reachable = ({s for s, _ in ACCEPTED.values()} | {s for steps in PROGRESSION.values() for s in steps}
                 | {s for s, _ in FINAL_STATUS.values()} | {S.FAILED})
    leavable = set(itertools.chain.from_iterable(ALLOWED_FROM.values())) | TRANSITIONAL
    for status in Status:
        assert status in reachable, f"{status} is never entered"
        assert status in leavable or status in INACTIVE, f"{status} can never be left"
    assert INACTIVE == {S.DELETED}


@pytest.mark.parametrize("operation,current,new,expected", [
    (Operation.CREATE, S.PENDING, S.PROVISIONING, True),
    (Operation.CREATE, S.PENDING, S.CONFIGURING, True),  # skipping ahead is fine
    (Operation.CREATE, S.PROVISIONING, S.STARTING, True),
    (Operation.CREATE, S.WAITING_FOR_IP, S.CONFIGURING, True),
    (Operation.CREATE, S.PROVISIONING, S.PROVISIONING, False),  # no repeat
    (Operation.CREATE, S.WAITING_FOR_IP, S.PROVISIONING, False),  # never backwards
    (Operation.CREATE, S.CONFIGURING, S.STARTING, False),
    (Operation.CREATE, S.PROVISIONING, S.DELETING, False),  # a delete task file inside a create is ignored
    (Operation.CREATE, S.PENDING, S.STOPPING, False),
    (Operation.CREATE, S.PROVISIONING, S.RUNNING, False),  # the final status is not an event
    (Operation.START, S.STARTING, S.WAITING_FOR_IP, True),
    (Operation.START, S.CONFIGURING, S.STARTING, False),
    (Operation.START, S.STARTING, S.PROVISIONING, False),  # a start never clones
    (Operation.STOP, S.STOPPING, S.STOPPING, False),
    (Operation.STOP, S.STOPPING, S.DELETING, False),
    (Operation.DELETE, S.DELETING, S.DELETING, False),
    (Operation.DELETE, S.DELETING, S.STOPPING, False),
])
def test_advances(operation, current, new, expected):
    assert advances(operation, current, new) is expected
    assert advances(operation, current.value, new) is expected


def test_advances_from_outside_the_progression_enters_it():
    # e.g. a resumed job whose desktop was left in the resting status it started from
    assert advances(Operation.START, S.STOPPED, S.STARTING)
    assert advances(Operation.DELETE, S.FAILED, S.DELETING)


# ---- the tables match the repository -----------------------------------------------------------------

def test_every_playbook_exists():
    for op in Operation:
        assert (REPO_ROOT / "playbooks" / PLAYBOOK[op]).is_file(), PLAYBOOK[op]


def test_task_file_statuses_name_real_task_files_and_transitional_statuses():
    for (role, filename), (status, message) in TASK_FILE_STATUS.items():
        assert (REPO_ROOT / "roles" / role / "tasks" / filename).is_file(), (role, filename)
        assert status in TRANSITIONAL
        assert message
    statuses = {s for s, _ in TASK_FILE_STATUS.values()}
    # every status a create moves through after PENDING is announced by some task file
    assert set(PROGRESSION[Operation.CREATE][1:]) <= statuses
    assert {S.STOPPING, S.DELETING} <= statuses


def test_project_steps_move_the_message_forward_within_a_status():
    from controlplane.services.kinds import PROJECT
    from controlplane.project_states import ProjectStatus as P
    assert PROJECT.advances(Operation.CREATE, P.PROVISIONING, P.PROVISIONING, "Project creation queued",
                            "Cloning VM from template")
    assert not PROJECT.advances(Operation.CREATE, P.PROVISIONING, P.PROVISIONING, "Cloning VM from template",
                                "Cloning VM from template")
    assert not PROJECT.advances(Operation.CREATE, P.PROVISIONING, P.DELETING)  # a failed create's clean-up
    assert PROJECT.advances(Operation.DELETE, P.FAILED, P.DELETING)

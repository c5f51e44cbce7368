"""An email is proof of who the caller is only when the identity provider verified it
(`email_verified: true`, as Keycloak sends it): a token carrying someone else's email unverified,
or without the claim, cannot see, accept or decline their invitations, nor get the share password."""
from __future__ import annotations

import jwt as pyjwt
import pytest

from controlplane.extensions import db
from controlplane.models import Invitation, ProjectMember

VICTIM = "victim@example.com"


@pytest.fixture
def bearer(base_settings, token):
    """Headers for a lab token of `user` with `email`, its email_verified set to `verified`
    (True, False, or None: no such claim)."""
    def headers(user: str, email: str, verified: bool | None) -> dict:
        claims = pyjwt.decode(token(user, email=email, name=user), options={"verify_signature": False})
        claims.pop("email_verified", None)
        if verified is not None:
            claims["email_verified"] = verified
        return {"Authorization": "Bearer " + pyjwt.encode(claims, base_settings.jwt_secret, algorithm="HS256")}
    return headers


def invite(client, owner, email=VICTIM, role="editor"):
    project_id = client.post("/api/projects", json={"name": "Secret"}, headers=owner).get_json()["project_id"]
    invited = client.post(f"/api/projects/{project_id}/collaborators", headers=owner,
                          json={"email": email, "role": role})
    assert invited.status_code == 201, invited.get_data(as_text=True)
    return project_id, invited.get_json()["invitation_id"]


def status_of(invitation_id: str) -> str:
    with db.connection_context():
        return Invitation.get(Invitation.public_id == invitation_id).status


@pytest.mark.parametrize("verified", [False, None], ids=["email_verified_false", "no_email_verified_claim"])
def test_an_unverified_email_cannot_answer_someone_elses_invitation(client, bearer, verified):
    owner = bearer("user_owner", "owner@example.com", True)
    project_id, invitation = invite(client, owner)
    attacker = bearer("user_attacker", VICTIM, verified)

    assert client.get("/api/invitations", headers=attacker).get_json() == {"success": True, "invitations": []}
    for verb in ("accept", "decline"):
        refused = client.post(f"/api/invitations/{invitation}/{verb}", headers=attacker)
        assert refused.status_code == 403, refused.get_data(as_text=True)
        error = refused.get_json()["error"]
        assert error["code"] == "FORBIDDEN" and "verified" in error["message"]
        assert error["details"] == {"email": "not verified"}
    # Refused the same way for an invitation id that does not exist: nothing is learnt from the answer.
    assert client.post("/api/invitations/inv_nothing/accept", headers=attacker).get_json()["error"] == error

    # Not a member: no project, no share password; the invitation is still open.
    denied = client.get(f"/api/projects/{project_id}", headers=attacker)
    assert denied.status_code == 404 and "password" not in denied.get_data(as_text=True)
    assert status_of(invitation) == "sent"
    with db.connection_context():
        assert not ProjectMember.select().where(ProjectMember.user_id == "user_attacker").exists()

    # The real addressee, whose email is verified, still sees and accepts it, and gets the share.
    victim = bearer("user_victim", VICTIM, True)
    assert [i["id"] for i in client.get("/api/invitations", headers=victim).get_json()["invitations"]] == [invitation]
    accepted = client.post(f"/api/invitations/{invitation}/accept", headers=victim)
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    assert status_of(invitation) == "accepted"
    details = client.get(f"/api/projects/{project_id}", headers=victim).get_json()
    assert details["role"] == "editor" and details["shared_folder"]["password"]
    assert [c["email"] for c in details["collaborators"]] == ["owner@example.com", VICTIM]


def test_a_token_without_email_cannot_answer_invitations(client, bearer, token):
    owner = bearer("user_owner", "owner@example.com", True)
    _, invitation = invite(client, owner)
    no_email = {"Authorization": "Bearer " + pyjwt.encode(
        {k: v for k, v in pyjwt.decode(token("user_nomail"), options={"verify_signature": False}).items()
         if k not in ("email", "email_verified")}, client.application.config["JWT_SECRET_KEY"], algorithm="HS256")}
    refused = client.post(f"/api/invitations/{invitation}/accept", headers=no_email)
    assert refused.status_code == 403 and refused.get_json()["error"]["details"] == {"email": "missing"}
    assert status_of(invitation) == "sent"


def test_an_unverified_email_is_not_recorded_for_a_member(client, bearer):
    """The owner's unverified email is not shown as theirs, nor keeps its real owner from being invited."""
    claimed = bearer("user_claimer", VICTIM, False)
    project_id, invitation = invite(client, claimed)  # not refused as "already a member"
    collaborators = client.get(f"/api/projects/{project_id}/collaborators", headers=claimed).get_json()
    assert [(c["user_id"], c["email"]) for c in collaborators["collaborators"]] == [("user_claimer", None)]
    assert client.post(f"/api/invitations/{invitation}/accept",
                       headers=bearer("user_victim", VICTIM, True)).status_code == 200


def test_lab_tokens_carry_a_verified_email(client, token):
    claims = pyjwt.decode(token("user_lab", email="lab@example.com"), options={"verify_signature": False})
    assert claims["email_verified"] is True
    # The portal's lab sign-in mints them the same way.
    signed_in = client.post("/portal/lab-token", json={"userId": "user_lab"})
    assert signed_in.status_code == 200, signed_in.get_data(as_text=True)
    minted = signed_in.get_json()["access_token"]
    assert pyjwt.decode(minted, options={"verify_signature": False})["email_verified"] is True

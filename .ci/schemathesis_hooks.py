"""Schemathesis hooks for keel's CI.

A real client sends a fresh Idempotency-Key for each logical operation. Schemathesis would
reuse a generated key with different bodies, which keel rightly answers with 422
(idempotency-key-reused); give every valid generated key a unique value instead, and leave
invalid ones as generated so their rejection is still tested.

Every case carries a fresh access token of the bootstrap admin (SCHEMATHESIS_KEEL_URL,
SCHEMATHESIS_ADMIN_EMAIL, SCHEMATHESIS_ADMIN_PASSWORD): generated calls to /auth/logout and
/auth/logout-all end sessions, so a token is never reused across cases. Operations that
declare the bearer scheme are also sent without it by the ignored_auth check, which expects
401. The admin's own record is kept out of reach (a generated DELETE or PATCH of it would
lock every later case out, and a POST to /users/{id}/logout would end the sessions of
cases running beside it), as a real client would not delete the account it works with.
"""

import os
import re
import uuid

import requests
import schemathesis

VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@schemathesis.hook
def map_headers(ctx, headers):
    if headers and VALID_KEY.match(str(headers.get("Idempotency-Key", ""))):
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers


ADMIN_ID = []


@schemathesis.auth(refresh_interval=None)
class AdminToken:
    """Logs the bootstrap admin in for each case."""

    def get(self, case, ctx):
        token = login()
        if not ADMIN_ID:
            me = requests.get(
                f"{os.environ['SCHEMATHESIS_KEEL_URL']}/users/me",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            me.raise_for_status()
            ADMIN_ID.append(me.json()["id"])
        return token

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.method in ("PATCH", "DELETE", "POST") and ADMIN_ID:
        parameters = case.path_parameters or {}
        if parameters.get("id") == ADMIN_ID[0]:
            parameters["id"] = str(uuid.uuid4())


def login():
    """A fresh access token of the bootstrap admin."""
    response = requests.post(
        f"{os.environ['SCHEMATHESIS_KEEL_URL']}/auth/login",
        json={
            "email": os.environ["SCHEMATHESIS_ADMIN_EMAIL"],
            "password": os.environ["SCHEMATHESIS_ADMIN_PASSWORD"],
        },
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["access_token"]

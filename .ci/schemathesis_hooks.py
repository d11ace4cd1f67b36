"""Schemathesis hooks for keel's CI.

A real client sends a fresh Idempotency-Key for each logical operation. Schemathesis would
reuse a generated key with different bodies, which keel rightly answers with 422
(idempotency-key-reused); give every valid generated key a unique value instead, and leave
invalid ones as generated so their rejection is still tested.
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@schemathesis.hook
def map_headers(ctx, headers):

    if headers and VALID_KEY.match(str(headers.get("Idempotency-Key", ""))):
        headers["Idempotency-Key"] = uuid.uuid4().hex
    return headers

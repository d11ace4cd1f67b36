"""FastAPI peer of keel: the same users, compute and static endpoints, the same status codes
and validation rules, errors as RFC 9457 problem documents.

Run with `uvicorn app:app --loop uvloop --http httptools --no-access-log` (see run.sh).
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import os
import re
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import urlencode

import asyncpg
import jwt
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from pwdlib import PasswordHash
from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from uuid_utils.compat import uuid7

EMAIL_MAX_CHARS = 254
MAX_LIMIT = 100
MAX_N = 1024
CURSOR_PREFIX = b"k1"
CURSOR_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# Rust's char::is_control: the Unicode Cc category.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
COLUMNS = "id, email, name, version, created_at, updated_at"


def _no_control_characters(value: str) -> str:
    if CONTROL_RE.search(value):
        raise ValueError("must not contain control characters")
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=2, max_length=100),
    AfterValidator(_no_control_characters),
]


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[EmailStr, Field(max_length=EMAIL_MAX_CHARS)]
    name: Name


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[EmailStr, Field(max_length=EMAIL_MAX_CHARS)]
    name: Name
    password: Annotated[str, Field(min_length=12, max_length=128)]


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(max_length=EMAIL_MAX_CHARS)]
    password: Annotated[str, Field(min_length=1, max_length=128)]


# Authentication as the FastAPI full-stack template does it: pwdlib's recommended hasher
# (Argon2id through argon2-cffi: 64 MiB, 3 passes, 4 lanes) run in the thread pool, an
# HS256 JWT from PyJWT, and (like keel) an opaque refresh token stored as its SHA-256.
PASSWORDS = PasswordHash.recommended()
JWT_SECRET = os.environ.get("JWT_SECRET") or secrets.token_hex(32)
ACCESS_TTL = timedelta(minutes=15)
REFRESH_TTL = timedelta(days=30)
# Verified when the e-mail is unknown, so that both failures take as long.
DUMMY_HASH = PASSWORDS.hash(secrets.token_hex(16))


class User(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    created_at: datetime
    updated_at: datetime


class UserPage(BaseModel):
    items: list[User]
    next_cursor: str | None


class MatmulResult(BaseModel):
    n: int
    checksum: float


def encode_cursor(id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(CURSOR_PREFIX + id.bytes).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> uuid.UUID | None:
    if not CURSOR_RE.match(text) or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(raw) != 18 or not raw.startswith(CURSOR_PREFIX):
        return None
    return uuid.UUID(bytes=raw[2:])


def matmul_checksum(n: int) -> float:
    """A[i][j] = (i*j mod 7) + 1, B[i][j] = ((i + j) mod 5) + 1; the sum of all entries of A·B."""
    i = np.arange(n)
    a = (np.outer(i, i) % 7 + 1).astype(np.float64)
    b = ((i[:, None] + i[None, :]) % 5 + 1).astype(np.float64)
    return float((a @ b).sum())


def problem(status: int, type_: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def validation_problem(errors: list[dict[str, str]]) -> JSONResponse:
    n = len(errors)
    return problem(
        422,
        "/problems/validation",
        "Validation failed",
        f"{n} input{'' if n == 1 else 's'} failed validation",
        errors=errors,
    )


def field_error(location: str, pointer: str, code: str, detail: str) -> dict[str, str]:
    return {"location": location, "pointer": pointer, "code": code, "detail": detail}


@asynccontextmanager
async def lifespan(app: FastAPI):
    workers = max(1, int(os.environ.get("WORKERS", "1") or 1))
    max_size = int(os.environ.get("DB_POOL_MAX") or max(2, math.ceil(16 / workers)))
    app.state.pool = await asyncpg.create_pool(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        min_size=1,
        max_size=max_size,
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(title="keel peer (FastAPI)", lifespan=lifespan)


@app.exception_handler(RequestValidationError)
async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        if e["type"] == "json_invalid":
            return problem(400, "/problems/malformed-json", "Malformed JSON",
                           f"the request body is not valid JSON: {e.get('ctx', {}).get('error', '')}")
        loc = list(e["loc"])
        location = {"body": "body", "query": "query", "path": "path"}.get(str(loc[0]), str(loc[0]))
        pointer = "".join(f"/{part}" for part in loc[1:])
        kind = e["type"]
        if kind == "missing":
            errors.append(field_error(location, pointer, "missing", "this field is required"))
        elif kind == "extra_forbidden":
            errors.append(field_error(location, pointer, "unknown_field",
                                      "unknown field; expected one of: email, name"))
        else:
            errors.append(field_error(location, pointer, kind, e["msg"]))
    return validation_problem(errors)


@app.exception_handler(StarletteHTTPException)
async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    title = HTTPStatus(exc.status_code).phrase
    response = problem(exc.status_code, "about:blank", title, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


@app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/users", status_code=201, response_model=User, responses={409: {}, 422: {}})
async def create_user(new: NewUser, request: Request, response: Response):
    now = datetime.now(timezone.utc)
    user = User(id=uuid7(), email=new.email, name=new.name, created_at=now, updated_at=now)
    try:
        await request.app.state.pool.execute(
            "INSERT INTO users (id, email, name, version, created_at, updated_at) "
            "VALUES ($1, $2, $3, 1, $4, $4)",
            user.id, user.email, user.name, now,
        )
    except asyncpg.UniqueViolationError:
        return problem(409, "/problems/email-taken", "E-mail address already taken",
                       "another user already has this e-mail address")
    response.headers["Location"] = f"/users/{user.id}"
    response.headers["ETag"] = '"1"'
    return user


async def issue_tokens(pool, user_id, role: str) -> dict:
    family = uuid7()
    refresh = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    await pool.execute(
        "INSERT INTO sessions (id, family_id, user_id, token_hash, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        uuid7(), family, user_id, hashlib.sha256(refresh.encode()).hexdigest(), now,
        now + REFRESH_TTL,
    )
    claims = {"sub": str(user_id), "role": role, "sid": str(family), "iss": "keel",
              "aud": "keel-api", "iat": now, "exp": now + ACCESS_TTL, "jti": str(uuid7())}
    return {"access_token": jwt.encode(claims, JWT_SECRET, algorithm="HS256"),
            "token_type": "Bearer", "expires_in": int(ACCESS_TTL.total_seconds()),
            "refresh_token": refresh}


@app.post("/auth/register", status_code=201, responses={409: {}, 422: {}})
async def register(new: Registration, request: Request, response: Response):
    now = datetime.now(timezone.utc)
    user = User(id=uuid7(), email=new.email, name=new.name, created_at=now, updated_at=now)
    password_hash = await run_in_threadpool(PASSWORDS.hash, new.password)
    pool = request.app.state.pool
    try:
        await pool.execute(
            "INSERT INTO users (id, email, name, role, password_hash, version, created_at, "
            "updated_at) VALUES ($1, $2, $3, 'user', $4, 1, $5, $5)",
            user.id, user.email, user.name, password_hash, now,
        )
    except asyncpg.UniqueViolationError:
        return problem(409, "/problems/email-taken", "E-mail address already taken",
                       "another user already has this e-mail address")
    response.headers["Location"] = f"/users/{user.id}"
    response.headers["Cache-Control"] = "no-store"
    return {"user": user.model_dump(mode="json"), **await issue_tokens(pool, user.id, "user")}


@app.post("/auth/login", responses={401: {}, 422: {}})
async def login(credentials: Login, request: Request, response: Response):
    pool = request.app.state.pool
    row = await pool.fetchrow(
        "SELECT id, role, password_hash FROM users WHERE lower(email) = lower($1)",
        credentials.email)
    stored = row["password_hash"] if row is not None else None
    valid = await run_in_threadpool(PASSWORDS.verify, credentials.password, stored or DUMMY_HASH)
    if not (stored and valid):
        failed = problem(401, "/problems/invalid-credentials", "Unauthorized",
                         "the e-mail address or the password is wrong")
        failed.headers["WWW-Authenticate"] = 'Bearer realm="peer"'
        return failed
    response.headers["Cache-Control"] = "no-store"
    return await issue_tokens(pool, row["id"], row["role"])


@app.get("/users/{id}", response_model=User, responses={404: {}, 422: {}})
async def get_user(id: uuid.UUID, request: Request, response: Response):
    row = await request.app.state.pool.fetchrow(f"SELECT {COLUMNS} FROM users WHERE id = $1", id)
    if row is None:
        raise HTTPException(status_code=404, detail="no user with this id")
    response.headers["ETag"] = f'"{row["version"]}"'
    return dict(row)


@app.get("/users", response_model=UserPage, responses={422: {}})
async def list_users(
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    cursor: str | None = None,
):
    after = None
    if cursor is not None:
        after = decode_cursor(cursor)
        if after is None:
            return validation_problem([field_error(
                "query", "/cursor", "invalid_cursor",
                "must be a next_cursor value returned by this endpoint")])
    pool = request.app.state.pool
    if after is None:
        rows = await pool.fetch(f"SELECT {COLUMNS} FROM users ORDER BY id DESC LIMIT $1", limit + 1)
    else:
        rows = await pool.fetch(
            f"SELECT {COLUMNS} FROM users WHERE id < $1 ORDER BY id DESC LIMIT $2", after, limit + 1)
    more = len(rows) > limit
    items = [dict(r) for r in rows[:limit]]
    next_cursor = encode_cursor(items[-1]["id"]) if more else None
    if next_cursor:
        query = urlencode({"limit": limit, "cursor": next_cursor})
        response.headers["Link"] = f'</users?{query}>; rel="next"'
    return {"items": items, "next_cursor": next_cursor}


# A plain `def` endpoint: FastAPI runs it in its thread pool, off the event loop.
@app.get("/compute/matmul", response_model=MatmulResult, responses={422: {}})
def matmul(n: Annotated[int, Query(ge=1, le=MAX_N)]):
    return {"n": n, "checksum": matmul_checksum(n)}


if os.environ.get("STATIC_DIR"):
    app.mount("/static", StaticFiles(directory=os.environ["STATIC_DIR"]), name="static")

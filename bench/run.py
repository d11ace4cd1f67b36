#!/usr/bin/env python3
"""keel benchmark harness: keel against peer servers and against physical limits.

    python3 bench/run.py [--quick] [--only keel,fastify,...] [--workloads json,create,...]

See bench/README.md for what each workload measures and how the numbers are taken.
Stdlib only, plus bench/requirements.txt (numpy, matplotlib), which this script installs into
bench/.venv and then re-executes itself from there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV = BENCH / ".venv"
RESULTS = BENCH / "results"
PEERS = BENCH / "peers"
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
PRELOAD_ROWS = 100_000
# Preloaded ids are '00000000-0000-4000-8000-0000000NNNNN' with NNNNN = 00000..99999 in decimal
# digits, so the regex below names exactly the preloaded rows.
READ_ID_REGEX = "00000000-0000-4000-8000-0000000[0-9]{5}"
MATMUL_N = 128
STATIC_FILE = "bench-4k.txt"


# --------------------------------------------------------------------------------------------
# bootstrap: run inside bench/.venv with the pinned requirements
# --------------------------------------------------------------------------------------------

def bootstrap_venv() -> None:
    if os.environ.get("BENCH_NO_VENV") or Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    req = BENCH / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if not py.exists():
        print("bench: creating bench/.venv", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    if not stamp.exists() or stamp.read_text().strip() != digest:
        print("bench: installing bench/requirements.txt into bench/.venv", flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(req)], check=True,
                       timeout=900)
        stamp.write_text(digest)
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


# --------------------------------------------------------------------------------------------
# workloads: one table entry each
# --------------------------------------------------------------------------------------------

def create_body(i: int, tag: str) -> bytes:
    """A unique user per request: the e-mail carries a per-run tag and a counter."""
    return b'{"email":"u%s-%d@bench.example","name":"Bench User %d"}' % (tag.encode(), i, i)


USER_COLS = "id, email, name, version, created_at, updated_at"

# keel's /users routes need a token: the harness starts keel with this bootstrap admin and
# sends its access token on the workloads marked `auth` (the peers check no token).
BENCH_ADMIN = ("bench-admin@bench.example", "bench admin password 0123")
# The account every server's login workload logs in as (registered before the runs).
LOGIN_ACCOUNT = ("bench-login@bench.example", "bench login password 0123")
LOGIN_BODY = json.dumps({"email": LOGIN_ACCOUNT[0], "password": LOGIN_ACCOUNT[1]}).encode()


@dataclass
class Workload:
    name: str
    doc: str
    method: str = "GET"
    path: str = "/livez"           # may use {deep_cursor}; a regex when regex=True
    body: bytes | Callable[[int, str], bytes] | None = None  # callable: per-request bodies
    regex: bool = False            # oha --rand-regex-url
    kind: str = "http"             # http | responsive | cold_start | memory
    servers: set[str] | None = None  # families that run it (None: every server)
    preload: bool = False          # needs the 100k preloaded users
    conns: int = 64                # concurrent connections (saturation and latency runs)
    rate: float = 1000.0           # fixed request rate of the latency run, same for all servers
    limit: str | None = None       # pgbench | numpy | nginx | hyper-bare
    pgbench_sql: str | None = None  # the pgbench script for limit == "pgbench"
    auth: bool = False             # keel gets the admin's bearer token (peers check none)


WORKLOADS: list[Workload] = [
    Workload("json", "GET /livez: the smallest answer a framework gives (routing + headers).",
             path="/livez", rate=2000, limit="hyper-bare"),
    Workload("read", "GET /users/{id} of a random preloaded user (oha --rand-regex-url).",
             path="/users/" + READ_ID_REGEX, regex=True, preload=True, rate=1000,
             servers={"keel", "express", "fastify", "fastapi"}, limit="pgbench", auth=True,
             pgbench_sql="\\set n random(0, 99999)\n"
                         f"SELECT {USER_COLS} FROM users WHERE id = "
                         "('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid;\n"),
    Workload("list_first", "GET /users?limit=20: the newest page of 100k users.",
             path="/users?limit=20", preload=True, rate=500, auth=True,
             servers={"keel", "express", "fastify", "fastapi"}, limit="pgbench",
             pgbench_sql=f"SELECT {USER_COLS} FROM users ORDER BY id DESC LIMIT 21;\n"),
    Workload("list_deep", "GET /users?limit=20&cursor=C with C pointing 90k rows deep.",
             path="/users?limit=20&cursor={deep_cursor}", preload=True, rate=500, auth=True,
             servers={"keel", "express", "fastify", "fastapi"}, limit="pgbench",
             pgbench_sql=f"SELECT {USER_COLS} FROM users WHERE id < '{{deep_id}}' "
                         "ORDER BY id DESC LIMIT 21;\n"),
    Workload("matmul", f"GET /compute/matmul?n={MATMUL_N}: CPU-bound work per request.",
             path=f"/compute/matmul?n={MATMUL_N}", conns=16, rate=100,
             servers={"keel", "express", "fastify", "fastapi"}, limit="numpy"),
    Workload("static", f"GET /static/{STATIC_FILE}: a 4 KiB file from the static directory.",
             path=f"/static/{STATIC_FILE}", rate=2000,
             servers={"keel", "express", "fastify", "fastapi", "nginx"}, limit="nginx"),
    Workload("responsive", "p50/p99 of GET /livez at a fixed rate while another load generator "
             f"saturates /compute/matmul?n={MATMUL_N}.",
             kind="responsive", path="/livez", conns=8, rate=200,
             servers={"keel", "express", "fastify", "fastapi"}),
    Workload("create", "POST /users with a unique e-mail per request (oha cannot send "
             "distinct bodies: wrk with bench/create.lua for req/s, the harness's asyncio "
             "client for the fixed-rate latency).",
             method="POST", path="/users", body=create_body, conns=16, rate=200, auth=True,
             servers={"keel", "express", "fastify", "fastapi"}, limit="pgbench",
             pgbench_sql=f"INSERT INTO users ({USER_COLS}) VALUES (gen_random_uuid(), "
                         "'pgb-' || gen_random_uuid() || '@bench.example', 'Bench User', 1, "
                         f"now(), now()) RETURNING {USER_COLS};\n"),
    Workload("login", "POST /auth/login of one account (password hash verified, a session "
             "row written, a JWT signed) saturated by oha with 16 connections; req/s is logins/s. "
             "p50/p99 are those of GET /livez at a fixed rate while the logins run, the "
             "cost of password hashing to every other request.",
             kind="login", method="POST", path="/auth/login", body=LOGIN_BODY, conns=16,
             rate=200, servers={"keel", "express", "fastify", "fastapi"}),
    Workload("cold_start", "process start to the first 200 from /livez (polled every 1 ms).",
             kind="cold_start", servers={"keel", "express", "fastify", "fastapi", "hyper-bare"}),
    Workload("memory", "idle RSS (after start, before load), its private anonymous part "
             "(RssAnon: heap and stacks, without code pages shared with the page cache) and "
             "peak RSS (whole run), summed over the server's process tree.", kind="memory"),
]
WL = {w.name: w for w in WORKLOADS}


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    family: str
    workers: int = 1
    db: str | None = "pg"            # pg | sqlite | None
    only: set[str] | None = None     # restricts the workloads it runs
    quick: bool = True               # part of --quick
    env: dict[str, str] | None = None  # extra environment (keel's logging variants)
    stdout_file: bool = False        # keep stdout in a file instead of discarding it

    def runs(self, w: Workload) -> bool:
        if self.only is not None and w.name not in self.only:
            return False
        return w.servers is None or self.family in w.servers


SERVERS: list[Server] = [
    Server("keel-pg", "keel"),
    Server("keel-sqlite", "keel", db="sqlite", only={"create", "memory"}),
    # What logging costs: keel-pg writes its default text line per request (to /dev/null);
    # these write JSON lines to a file on disk, and nothing at all.
    Server("keel-pg-logjson", "keel", only={"json", "create", "read"}, quick=False,
           env={"LOG_FORMAT": "json"}, stdout_file=True),
    Server("keel-pg-logoff", "keel", only={"json", "create", "read"}, quick=False,
           env={"RUST_LOG": "off"}),
    Server("express-w1", "express", quick=False),
    Server("express-w2", "express", workers=2, quick=False),
    Server("fastify-w1", "fastify"),
    Server("fastify-w2", "fastify", workers=2, quick=False),
    Server("fastapi-w2", "fastapi", workers=2),
    Server("hyper-bare", "hyper-bare", db=None, only={"json", "cold_start", "memory"}),
    # physical limit served by HTTP like the others
    Server("nginx", "nginx", db=None, only={"static", "memory"}),
]


@dataclass
class Mode:
    duration: float      # saturation run, seconds
    lat_duration: float  # fixed-rate latency run, seconds
    warmup: float
    repeats: int
    cold_runs: int


FULL = Mode(duration=10, lat_duration=10, warmup=2, repeats=3, cold_runs=5)
QUICK = Mode(duration=1.5, lat_duration=1.5, warmup=0.3, repeats=1, cold_runs=3)


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def version_of(cmd: list[str]) -> str | None:
    try:
        r = sh(cmd, 20)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except Exception:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str = "/livez", timeout: float = 1.0,
                authorization: str | None = None) -> int | None:
    """One HTTP/1.1 GET on a fresh connection; the status code, or None if no answer."""
    extra = f"Authorization: {authorization}\r\n" if authorization else ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
                      "Connection: close\r\n\r\n".encode())
            data = s.recv(64)
            parts = data.split(b" ", 2)
            return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None
    except (OSError, ValueError):
        return None


def post_json(port: int, path: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    """POST a JSON body; the status and the JSON answer (empty when there is none)."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def percentile(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def median(vals: list) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


NPROC = os.cpu_count() or 1
PINNED = NPROC >= 2 and shutil.which("taskset") is not None
SERVER_CPU = ["taskset", "-c", "0"] if PINNED else []
LOADGEN_CPU = ["taskset", "-c", "1"] if PINNED else []


# --------------------------------------------------------------------------------------------
# process tree memory
# --------------------------------------------------------------------------------------------

def tree_pids(root: int) -> set[int]:
    parent: dict[int, int] = {}
    group: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        parent[int(d)] = int(fields[1])
        group[int(d)] = int(fields[2])
    pids = {root} | {p for p, g in group.items() if g == root}
    frontier = list(pids)
    for _ in range(64):  # bounded depth
        nxt = [p for p, pp in parent.items() if pp in frontier and p not in pids]
        if not nxt:
            break
        pids.update(nxt)
        frontier = nxt
    return {p for p in pids if p in parent}


def tree_rss_kb(root: int, field: str = "VmRSS:") -> int:
    """Resident kB of a process tree; field "RssAnon:" counts only private anonymous memory
    (heap, stacks), without the executable's and libraries' pages shared with the page cache."""
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


class RssSampler(threading.Thread):
    """Samples the RSS of a process tree every 100 ms; peak() since the last reset()."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.stop_event, self.lock = root, threading.Event(), threading.Lock()
        self.window_peak = self.run_peak = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            kb = tree_rss_kb(self.root)
            with self.lock:
                self.window_peak = max(self.window_peak, kb)
                self.run_peak = max(self.run_peak, kb)

    def reset(self) -> None:
        with self.lock:
            self.window_peak = 0

    def peak_mb(self) -> float:
        with self.lock:
            return round(self.window_peak / 1024, 1)


# --------------------------------------------------------------------------------------------
# installs
# --------------------------------------------------------------------------------------------

class Tools:
    oha = "oha"
    wrk = "wrk"
    oha_json: list[str] = ["--output-format", "json"]
    oha_wait: list[str] = ["-w"]
    nginx: str | None = None
    keel: str | None = None
    apt_updated = False


def apt_install(*pkgs: str) -> None:
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not Tools.apt_updated:
        subprocess.run([*apt, "update", "-qq"], check=False, timeout=600, env=env)
        Tools.apt_updated = True
    log(f"apt-get install -y {' '.join(pkgs)}")
    subprocess.run([*apt, "install", "-y", "-qq", *pkgs], check=True, timeout=900, env=env)


def ensure_tools(need_pg: bool, need_nginx: bool) -> None:
    cargo_bin = Path.home() / ".cargo" / "bin"
    os.environ["PATH"] = f"{os.environ.get('PATH', '')}:{cargo_bin}:/usr/sbin:/sbin"
    if not shutil.which("oha"):
        log("installing oha: cargo install oha --locked (a few minutes)")
        subprocess.run(["cargo", "install", "oha", "--locked"], check=True, timeout=3000)
    Tools.oha = shutil.which("oha") or str(cargo_bin / "oha")
    helptext = sh([Tools.oha, "--help"], 30).stdout
    Tools.oha_json = ["--output-format", "json"] if "--output-format" in helptext else ["-j"]
    Tools.oha_wait = ["-w"] if "wait-ongoing-requests-after-deadline" in helptext else []
    if "--latency-correction" not in helptext:
        raise SystemExit("bench: this oha has no --latency-correction; cargo install oha --locked")
    if not shutil.which("wrk"):
        apt_install("wrk")
    Tools.wrk = shutil.which("wrk") or "wrk"
    if PINNED is False or not shutil.which("taskset"):
        log("note: fewer than 2 CPUs (or no taskset): server and load generator are not pinned")
    if need_pg:
        # Debian's /usr/bin/pgbench is a wrapper from postgresql-client-common that is there
        # without the real pgbench (package postgresql-NN, pulled in by postgresql-contrib).
        if not shutil.which("pgbench") or sh(["pgbench", "--version"], 30).returncode:
            apt_install("postgresql-contrib")
        if not shutil.which("psql"):
            apt_install("postgresql-client")
        if sh(["psql", "-X", "-tA", f"{PG_ADMIN}/postgres", "-c", "select 1"], 30).returncode:
            raise SystemExit(f"bench: PostgreSQL is not reachable at {PG_ADMIN} (trust auth)")
    if need_nginx:
        if not shutil.which("nginx"):
            apt_install("nginx")
        Tools.nginx = shutil.which("nginx")


def ensure_keel() -> str:
    if os.environ.get("BENCH_KEEL_BIN"):
        return os.environ["BENCH_KEEL_BIN"]
    log("building keel: cargo build --release -p keel")
    subprocess.run(["cargo", "build", "--release", "-p", "keel"], cwd=ROOT, check=True,
                   timeout=3000)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return str(target / "release" / "keel")


PEER_OUTPUTS = {"node_modules", ".venv", "target"}  # what install.sh makes: not sources


def peer_digest(d: Path) -> str:
    """Hash of a peer's sources (names and contents) and of which install outputs exist
    (node_modules, .venv, target: by name only, so deleting one makes install.sh run again)."""
    h = hashlib.sha256()
    h.update(" ".join(sorted(n for n in PEER_OUTPUTS if (d / n).exists())).encode() + b"\0")
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if n not in PEER_OUTPUTS | {"__pycache__"})
        for name in sorted(filenames):
            f = Path(dirpath) / name
            h.update(str(f.relative_to(d)).encode() + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def install_peer(family: str, reinstall: bool = False) -> str | None:
    """Runs the peer's install.sh; None when ready, else why not."""
    d = PEERS / family
    if not (d / "run.sh").exists():
        return f"{d.relative_to(ROOT)}/run.sh missing"
    if (d / "install.sh").exists():
        # install.sh is idempotent but can be slow (npm ci, cargo build): skip it while none
        # of the peer's files changed since it last succeeded (hyper-bare's build depends on
        # src/, so every source file counts, not only the dependency lists).
        digest = peer_digest(d)
        stamp = VENV / f".peer-{family}.sha256"
        if not reinstall and stamp.exists() and stamp.read_text() == digest:
            return None
        log(f"{family}: install.sh")
        try:
            r = sh(["bash", str(d / "install.sh")], 1500, cwd=d)
        except subprocess.TimeoutExpired:
            return "install.sh timed out"
        if r.returncode:
            return f"install.sh failed: {(r.stderr or r.stdout).strip()[-300:]}"
        stamp.write_text(peer_digest(d))  # after: the install added node_modules, .venv, ...
    return None


# --------------------------------------------------------------------------------------------
# databases
# --------------------------------------------------------------------------------------------

def psql(sql: str, db: str = "postgres", timeout: float = 600) -> str:
    r = sh(["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", f"{PG_ADMIN}/{db}", "-c", sql],
           timeout)
    if r.returncode:
        raise RuntimeError(f"psql: {r.stderr.strip()}")
    return r.stdout.strip()


PRELOAD_SQL = f"""
INSERT INTO users (id, email, name, version, created_at, updated_at)
SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid,
       'user' || g || '@bench.example', 'Bench User ' || g, 1,
       now() - make_interval(secs => {PRELOAD_ROWS} - g), now() - make_interval(secs => {PRELOAD_ROWS} - g)
FROM generate_series(0, {PRELOAD_ROWS - 1}) AS g;
"""


class Database:
    """A fresh PostgreSQL database (or SQLite directory) for one server run."""

    def __init__(self, kind: str | None, label: str, tmp: Path):
        self.kind, self.url, self.env, self.name = kind, None, {}, None
        if kind == "pg":
            self.name = f"keel_bench_{label.replace('-', '_')}_{os.getpid()}"
            psql(f'DROP DATABASE IF EXISTS "{self.name}"')
            psql(f'CREATE DATABASE "{self.name}"')
            # Loopback: every server and pgbench talk to PostgreSQL in clear text (libpq-based
            # clients and asyncpg would otherwise negotiate TLS, Node's pg would not).
            self.url = f"{PG_ADMIN}/{self.name}?sslmode=disable"
            self.env = {"DATABASE_URL": self.url}
        elif kind == "sqlite":
            data = tmp / f"sqlite-{label}"
            data.mkdir(parents=True, exist_ok=True)
            self.env = {"KEEL_DATA_DIR": str(data)}

    def migrate(self) -> None:
        if self.kind is None:
            return
        env = {**os.environ, **self.env}
        if self.kind == "sqlite":
            env.pop("DATABASE_URL", None)
        r = sh([Tools.keel, "migrate"], 300, env=env)
        if r.returncode:
            raise RuntimeError(f"keel migrate: {(r.stderr or r.stdout).strip()[-400:]}")

    def preload(self) -> dict:
        """100k users with known ids; returns the context for list_deep (cursor and id)."""
        assert self.kind == "pg"
        psql(PRELOAD_SQL, self.name)
        # Settle the new rows now (visibility map, statistics, dirty pages on disk), so that
        # autovacuum and the checkpointer do not take the server's core during the runs.
        psql("VACUUM (ANALYZE) users", self.name)
        psql("CHECKPOINT", self.name)
        deep_id = psql("SELECT id FROM users ORDER BY id DESC OFFSET 89999 LIMIT 1", self.name)
        raw = b"k1" + bytes.fromhex(deep_id.replace("-", ""))
        return {"deep_id": deep_id,
                "deep_cursor": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}

    def drop(self) -> None:
        if self.kind == "pg" and self.name:
            try:
                psql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            except Exception as e:  # keep going: the next run uses another name
                log(f"warning: could not drop {self.name}: {e}")


# --------------------------------------------------------------------------------------------
# starting and stopping servers
# --------------------------------------------------------------------------------------------

LIVE: list[subprocess.Popen] = []


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # stragglers of the group (uvicorn / cluster workers) once the leader is gone
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc in LIVE:
        LIVE.remove(proc)


class Context:
    """Everything shared by one harness run."""

    def __init__(self, mode: Mode, tmp: Path):
        self.mode, self.tmp = mode, tmp
        self.static_dir = tmp / "static"
        self.static_dir.mkdir(parents=True)
        (self.static_dir / STATIC_FILE).write_bytes(os.urandom(4096))
        for p in (tmp, self.static_dir):
            p.chmod(0o755)
        (self.static_dir / STATIC_FILE).chmod(0o644)
        self.logs = tmp / "logs"
        self.logs.mkdir()


def server_command(srv: Server, ctx: Context, port: int, db: Database) -> tuple[list, dict, Path]:
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WORKERS": str(srv.workers),
           "STATIC_DIR": str(ctx.static_dir), "KEEL_STATIC_DIR": str(ctx.static_dir), **db.env}
    if db.kind != "pg":
        env.pop("DATABASE_URL", None)
    if srv.family == "keel":
        # The limiter runs (and is measured) but never refuses the load generator.
        env.update({"KEEL_BOOTSTRAP_ADMIN_EMAIL": BENCH_ADMIN[0],
                    "KEEL_BOOTSTRAP_ADMIN_PASSWORD": BENCH_ADMIN[1],
                    "KEEL_ACCESS_TOKEN_TTL_SECS": "86400",
                    "KEEL_RATE_LIMIT_PER_MINUTE": "1000000000",
                    "KEEL_AUTH_RATE_LIMIT_PER_MINUTE": "0", "KEEL_LOGIN_FAILURE_LIMIT": "0"})
        env.update(srv.env or {})
        return [Tools.keel, "serve"], env, ROOT
    if srv.family == "nginx":
        conf_dir = ctx.tmp / f"nginx-{port}"
        conf_dir.mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (conf_dir / "nginx.conf").write_text(f"""{user}worker_processes 1;
pid {conf_dir}/nginx.pid;
error_log {conf_dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # One access-log line per request, as nginx's stock configuration writes and as keel
    # (and every peer that logs) does at its default level.
    access_log {conf_dir}/access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    client_body_temp_path {conf_dir}/body;
    proxy_temp_path {conf_dir}/proxy;
    fastcgi_temp_path {conf_dir}/fastcgi;
    uwsgi_temp_path {conf_dir}/uwsgi;
    scgi_temp_path {conf_dir}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location = /livez {{ return 200 "ok"; }}
        location /static/ {{ alias {ctx.static_dir}/; }}
    }}
}}
""")
        return [Tools.nginx, "-c", str(conf_dir / "nginx.conf"), "-g", "daemon off;"], env, conf_dir
    d = PEERS / srv.family
    return ["bash", str(d / "run.sh")], env, d


def start(srv: Server, ctx: Context, db: Database, tag: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd, env, cwd = server_command(srv, ctx, port, db)
    logf = open(ctx.logs / f"{srv.name}-{tag}.log", "ab")
    # stdout (keel's per-request log lines, access logs) is discarded unless the server
    # measures writing it to a file; stderr is kept.
    out = open(ctx.tmp / f"{srv.name}-{tag}.stdout", "ab") if srv.stdout_file else None
    proc = subprocess.Popen([*SERVER_CPU, *cmd], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=out or subprocess.DEVNULL, stderr=logf,
                            start_new_session=True)
    logf.close()
    if out:
        out.close()
    LIVE.append(proc)
    return proc, port


def wait_live(proc: subprocess.Popen, port: int, timeout: float, interval: float) -> float | None:
    """Seconds from now to the first 200 from /livez, or None (process died or timed out)."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if http_status(port, "/livez", timeout=0.5) == 200:
            return time.perf_counter() - t0
        if proc.poll() is not None:
            return None
        time.sleep(interval)
    return None


def log_tail(ctx: Context, name: str) -> str:
    out = []
    for f in sorted(ctx.logs.glob(f"{name}-*.log")):
        out.append(f.read_text(errors="replace")[-600:])
    return "\n".join(out).strip()


# --------------------------------------------------------------------------------------------
# load generation
# --------------------------------------------------------------------------------------------

def summarize(ok: int, non2xx: int, errors: int, duration: float, lat_ms: list[float] | None,
              p50=None, p99=None, extra: dict | None = None) -> dict:
    if lat_ms is not None:
        lat_ms.sort()
        p50, p99 = percentile(lat_ms, 50), percentile(lat_ms, 99)
    return {"rps": round(ok / duration, 1) if duration > 0 else 0.0, "ok": ok, "non2xx": non2xx,
            "errors": errors, "duration_s": round(duration, 3),
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3), **(extra or {})}


def oha_args(url: str, w: Workload, duration: float, rate: float | None, conns: int,
             authorization: str | None = None) -> list[str]:
    cmd = [*LOADGEN_CPU, Tools.oha, "--no-tui", *Tools.oha_json, "-z", f"{int(duration * 1000)}ms",
           "-c", str(conns), *Tools.oha_wait]
    if authorization:
        cmd += ["-H", f"Authorization: {authorization}"]
    if rate:
        cmd += ["-q", str(rate), "--latency-correction"]
    if w.method != "GET":
        cmd += ["-m", w.method]
    if isinstance(w.body, bytes):
        cmd += ["-d", w.body.decode(), "-T", "application/json"]
    if w.regex:
        cmd.append("--rand-regex-url")
    return [*cmd, url]


def parse_oha(stdout: str) -> dict:
    j = json.loads(stdout)
    codes = {int(k): v for k, v in j.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    non2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
    errors = sum(j.get("errorDistribution", {}).values())
    lat = j.get("metrics", {}).get("latency_ms")
    if lat:
        p50, p99 = lat.get("p50"), lat.get("p99")
    else:
        pct = j.get("latencyPercentiles", {})
        p50 = pct.get("p50") * 1000 if pct.get("p50") is not None else None
        p99 = pct.get("p99") * 1000 if pct.get("p99") is not None else None
    extra = {"error_kinds": j.get("errorDistribution", {})} if errors else {}
    if non2xx:
        extra["status_codes"] = {str(k): v for k, v in codes.items()}
    return summarize(ok, non2xx, errors, j["summary"]["total"], None, p50, p99, extra)


def run_oha(url: str, w: Workload, duration: float, rate: float | None = None,
            conns: int | None = None, authorization: str | None = None) -> dict:
    cmd = oha_args(url, w, duration, rate, conns or w.conns, authorization)
    r = sh(cmd, duration + 60)
    if r.returncode:
        raise RuntimeError(f"oha exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return parse_oha(r.stdout)


def run_client(port: int, w: Workload, duration: float, rate: float | None,
               authorization: str | None = None) -> dict:
    """Per-request bodies: this script's asyncio client, as its own pinned process."""
    spec = {"port": port, "workload": w.name, "duration": duration, "rate": rate,
            "conns": w.conns, "authorization": authorization}
    cmd = [*LOADGEN_CPU, sys.executable, str(Path(__file__).resolve()), "--_client",
           json.dumps(spec)]
    r = sh(cmd, duration + 60, env={**os.environ, "BENCH_NO_VENV": "1"})
    if r.returncode:
        raise RuntimeError(f"client exited {r.returncode}: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout)


def expand(text: str, ctx_vars: dict) -> str:
    """Fills {name} placeholders (list_deep's cursor); regex braces are left alone."""
    for k, v in ctx_vars.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def run_wrk(port: int, w: Workload, duration: float, authorization: str | None = None) -> dict:
    """Per-request bodies at full speed: wrk with bench/create.lua (the Python client, sharing
    its core with PostgreSQL, tops out near 7k requests/s and would measure itself)."""
    tag = f"w{os.getpid()}x{random.getrandbits(32):08x}"
    cmd = [*LOADGEN_CPU, Tools.wrk, "-t1", f"-c{w.conns}", f"-d{max(1, round(duration))}s",
           "-s", str(BENCH / "create.lua"), f"http://127.0.0.1:{port}", "--", tag,
           *([authorization] if authorization else [])]
    r = sh(cmd, duration + 60)
    if r.returncode:
        raise RuntimeError(f"wrk exited {r.returncode}: {r.stderr.strip()[-300:]}")
    total = secs = None
    non2xx = errors = 0
    for line in r.stdout.splitlines():
        line = line.strip()
        if " requests in " in line:
            total = int(line.split()[0])
            secs = float(line.split(" requests in ")[1].split("s")[0])
        elif line.startswith("Non-2xx or 3xx responses:"):
            non2xx = int(line.split(":")[1])
        elif line.startswith("Socket errors:"):
            errors = sum(int(part.split()[-1]) for part in line.split(":")[1].split(","))
    if total is None or not secs:
        raise RuntimeError(f"wrk: cannot read its output: {r.stdout.strip()[-300:]}")
    return summarize(total - non2xx, non2xx, errors, secs, None)


def load(port: int, w: Workload, duration: float, rate: float | None, ctx_vars: dict) -> dict:
    authorization = ctx_vars.get("authorization") if w.auth else None
    if callable(w.body):
        if rate is None:
            return run_wrk(port, w, duration, authorization)
        return run_client(port, w, duration, rate, authorization)
    url = f"http://127.0.0.1:{port}" + expand(w.path, ctx_vars)
    return run_oha(url, w, duration, rate, authorization=authorization)


# ---- the asyncio HTTP/1.1 client (keep-alive, open-loop schedule for latency) ---------------

class _Conn(asyncio.Protocol):
    def __init__(self):
        self.buf, self.waiter, self.transport = bytearray(), None, None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            status = self._complete()
            if status is not None:
                self.waiter.set_result(status)

    def connection_lost(self, exc):
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def _complete(self) -> int | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", ""):
            pos = start
            while True:
                eol = self.buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = self.buf.find(b"\r\n\r\n", eol)
                    if trailer_end < 0:
                        return None
                    del self.buf[:trailer_end + 4]
                    return status
                pos = eol + 2 + size + 2
                if pos > len(self.buf):
                    return None
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < start + length:
            return None
        del self.buf[:start + length]
        return status

    async def request(self, data: bytes, timeout: float) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.waiter, timeout)


async def _client_main(spec: dict) -> dict:
    w = WL[spec["workload"]]
    port, duration, rate, conns = spec["port"], spec["duration"], spec["rate"], spec["conns"]
    tag = f"{os.getpid():x}{random.getrandbits(32):08x}"
    loop = asyncio.get_running_loop()
    auth = f"Authorization: {spec['authorization']}\r\n" if spec.get("authorization") else ""
    head = (f"{w.method} {w.path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            "Content-Type: application/json\r\nContent-Length: ").encode()
    stats = {"ok": 0, "non2xx": 0, "errors": 0}
    lat: list[float] = []
    counter = iter(range(10**9))
    total = int(rate * duration) if rate else None
    t_start = time.perf_counter()
    t_end = t_start + duration

    async def connect():
        _, proto = await loop.create_connection(_Conn, "127.0.0.1", port)
        return proto

    async def worker():
        conn = None
        for _ in range(10**7):  # bounded; the clock ends it long before
            i = next(counter)
            if total is not None:
                if i >= total:
                    return
                intended = t_start + i / rate
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                intended = time.perf_counter()
                if intended >= t_end:
                    return
            if time.perf_counter() > t_end + 10:
                return
            body = w.body(i, tag)
            try:
                if conn is None or conn.transport is None:
                    conn = await connect()
                status = await conn.request(head + b"%d\r\n\r\n" % len(body) + body, 30)
            except (OSError, ConnectionError, asyncio.TimeoutError, ValueError, IndexError):
                stats["errors"] += 1
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
                await asyncio.sleep(0.001)
                continue
            lat.append((time.perf_counter() - intended) * 1000)
            stats["ok" if 200 <= status < 300 else "non2xx"] += 1
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conns))), duration + 30)
    elapsed = time.perf_counter() - t_start
    return summarize(stats["ok"], stats["non2xx"], stats["errors"], elapsed, lat)


# --------------------------------------------------------------------------------------------
# measuring one server
# --------------------------------------------------------------------------------------------

def measure_http(port: int, w: Workload, mode: Mode, ctx_vars: dict, sampler: RssSampler) -> dict:
    """Warm-up, then per repeat a saturation run (req/s, errors) and a fixed-rate run with
    coordinated-omission correction (p50/p99); medians over the repeats."""
    sampler.reset()
    runs, lat_runs = [], []
    load(port, w, mode.warmup, None, ctx_vars)
    for _ in range(mode.repeats):
        runs.append(load(port, w, mode.duration, None, ctx_vars))
        lat_runs.append(load(port, w, mode.lat_duration, w.rate, ctx_vars))
    return {
        "rps": median([r["rps"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in lat_runs]),
        "p99_ms": median([r["p99_ms"] for r in lat_runs]),
        "latency_rate": w.rate,
        "errors": sum(r["non2xx"] + r["errors"] for r in runs + lat_runs),
        "peak_rss_mb": sampler.peak_mb(),
        "runs": runs, "latency_runs": lat_runs,
    }


def measure_responsive(port: int, w: Workload, mode: Mode, sampler: RssSampler) -> dict:
    sampler.reset()
    mat = WL["matmul"]
    url_m = f"http://127.0.0.1:{port}{mat.path}"
    url_l = f"http://127.0.0.1:{port}{w.path}"
    runs = []
    for _ in range(mode.repeats):
        bg_cmd = oha_args(url_m, mat, mode.lat_duration + 1.5, None, mat.conns)
        bg = subprocess.Popen(bg_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.75)  # let the matmul load saturate the CPU pool first
            fg = run_oha(url_l, w, mode.lat_duration, w.rate, w.conns)
        finally:
            out, _ = bg.communicate(timeout=mode.lat_duration + 60)
        try:
            fg["background_matmul"] = parse_oha(out)
        except Exception:
            fg["background_matmul"] = None
        runs.append(fg)
    bgs = [r["background_matmul"] for r in runs if r["background_matmul"]]
    return {
        "rps": median([r["rps"] for r in runs]),
        "p50_ms": median([r["p50_ms"] for r in runs]),
        "p99_ms": median([r["p99_ms"] for r in runs]),
        "latency_rate": w.rate,
        "errors": sum(r["non2xx"] + r["errors"] for r in runs),
        "background_matmul_rps": median([b["rps"] for b in bgs]),
        "background_matmul_errors": sum(b["non2xx"] + b["errors"] for b in bgs),
        "peak_rss_mb": sampler.peak_mb(), "runs": runs,
    }


def measure_login(port: int, w: Workload, mode: Mode, sampler: RssSampler) -> dict:
    """Logins saturated by oha while a second oha measures /livez at a fixed rate."""
    sampler.reset()
    livez = WL["json"]
    url_login = f"http://127.0.0.1:{port}{w.path}"
    url_livez = f"http://127.0.0.1:{port}{livez.path}"
    run_oha(url_login, w, mode.warmup)
    runs = []
    for _ in range(mode.repeats):
        bg = subprocess.Popen(oha_args(url_login, w, mode.lat_duration + 1.5, None, w.conns),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.75)  # let the logins saturate the hashing first
            fg = run_oha(url_livez, livez, mode.lat_duration, w.rate, 8)
        finally:
            out, _ = bg.communicate(timeout=mode.lat_duration + 60)
        logins = parse_oha(out)
        runs.append({"logins": logins, "livez": fg})
    return {
        "rps": median([r["logins"]["rps"] for r in runs]),
        "p50_ms": median([r["livez"]["p50_ms"] for r in runs]),
        "p99_ms": median([r["livez"]["p99_ms"] for r in runs]),
        "login_p50_ms": median([r["logins"]["p50_ms"] for r in runs]),
        "login_p99_ms": median([r["logins"]["p99_ms"] for r in runs]),
        "latency_rate": w.rate,
        "errors": sum(r[k]["non2xx"] + r[k]["errors"] for r in runs for k in ("logins", "livez")),
        "peak_rss_mb": sampler.peak_mb(), "runs": runs,
    }


def measure_cold_start(srv: Server, ctx: Context, db: Database) -> dict:
    times = []
    for i in range(ctx.mode.cold_runs):
        proc, port = start(srv, ctx, db, f"cold{i}")
        try:
            t = wait_live(proc, port, timeout=60, interval=0.001)
        finally:
            stop(proc)
        if t is not None:
            times.append(t * 1000)
    return {"median_ms": None if not times else round(statistics.median(times), 1),
            "min_ms": None if not times else round(min(times), 1),
            "max_ms": None if not times else round(max(times), 1),
            "runs_ms": [round(t, 1) for t in times],
            "errors": ctx.mode.cold_runs - len(times)}


def bench_server(srv: Server, ctx: Context, workloads: list[Workload]) -> dict:
    out: dict = {"server": srv.name, "family": srv.family, "workers": srv.workers,
                 "database": srv.db, "pinned_cpu": "0" if PINNED else None, "workloads": {}}
    db = Database(srv.db, srv.name, ctx.tmp)
    proc = None
    try:
        db.migrate()
        ctx_vars = {}
        if srv.db == "pg" and any(w.preload for w in workloads):
            ctx_vars = db.preload()
        if any(w.kind == "cold_start" for w in workloads):
            log(f"{srv.name}: cold_start x{ctx.mode.cold_runs}")
            out["workloads"]["cold_start"] = measure_cold_start(srv, ctx, db)
        proc, port = start(srv, ctx, db, "main")
        if wait_live(proc, port, timeout=90, interval=0.05) is None:
            raise RuntimeError(f"did not answer /livez: {log_tail(ctx, srv.name)}")
        time.sleep(1.0)
        out["idle_rss_mb"] = round(tree_rss_kb(proc.pid) / 1024, 1)
        out["idle_anon_mb"] = round(tree_rss_kb(proc.pid, "RssAnon:") / 1024, 1)
        if srv.family == "keel":
            status, tokens = post_json(port, "/auth/login",
                                       {"email": BENCH_ADMIN[0], "password": BENCH_ADMIN[1]})
            if status != 200:
                raise RuntimeError(f"the bench admin cannot log in: {status}")
            ctx_vars["authorization"] = f"Bearer {tokens['access_token']}"
        if any(w.kind == "login" for w in workloads):
            status, _ = post_json(port, "/auth/register", {"email": LOGIN_ACCOUNT[0],
                                                           "name": "Bench Login",
                                                           "password": LOGIN_ACCOUNT[1]})
            if status not in (201, 409):
                raise RuntimeError(f"cannot register the login account: {status}")
        sampler = RssSampler(proc.pid)
        sampler.start()
        for w in workloads:
            if w.kind not in ("http", "responsive", "login"):
                continue
            if proc.poll() is not None:
                out["workloads"][w.name] = {"error": f"server exited: {log_tail(ctx, srv.name)}"}
                continue
            probe = expand(w.path, ctx_vars) if not w.regex else "/users/" + \
                "00000000-0000-4000-8000-000000012345"
            st = (http_status(port, probe, authorization=ctx_vars.get("authorization")
                              if w.auth else None) if w.method == "GET" else None)
            log(f"{srv.name}: {w.name}" + (f" (probe {probe[:60]} -> {st})" if st else ""))
            try:
                if w.kind == "responsive":
                    res = measure_responsive(port, w, ctx.mode, sampler)
                elif w.kind == "login":
                    res = measure_login(port, w, ctx.mode, sampler)
                else:
                    res = measure_http(port, w, ctx.mode, ctx_vars, sampler)
                res["probe_status"] = st
                out["workloads"][w.name] = res
            except Exception as e:
                out["workloads"][w.name] = {"error": str(e)[-500:]}
                log(f"{srv.name}: {w.name} failed: {e}")
        sampler.stop_event.set()
        sampler.join(2)
        out["peak_rss_mb"] = round(sampler.run_peak / 1024, 1)
    except Exception as e:
        out["error"] = str(e)[-800:]
        log(f"{srv.name}: failed: {out['error']}")
    finally:
        if proc is not None:
            stop(proc)
        db.drop()
    return out


# --------------------------------------------------------------------------------------------
# physical limits that are not HTTP servers: pgbench and numpy
# --------------------------------------------------------------------------------------------

def pgbench_run(db: str, script: Path, conns: int, duration: float, rate: float | None,
                logdir: Path) -> dict:
    secs = max(1, int(round(duration)))
    cmd = [*LOADGEN_CPU, "pgbench", "-n", "-M", "prepared", "-c", str(conns), "-j", "1",
           "-T", str(secs), "-f", str(script)]
    if rate:  # with -R the latency counts from the scheduled start: no coordinated omission
        for f in logdir.glob("pgb*"):
            f.unlink()
        cmd += ["-R", str(rate), "-l", "--log-prefix", str(logdir / "pgb")]
    r = sh([*cmd, f"{PG_ADMIN}/{db}?sslmode=disable"], secs + 120, cwd=logdir)
    if r.returncode:
        raise RuntimeError(f"pgbench: {(r.stderr or r.stdout).strip()[-300:]}")
    ok = failed = 0
    tps = None
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("number of transactions actually processed:"):
            ok = int(line.split(":")[1].split("/")[0])
        elif line.startswith("number of failed transactions:"):
            failed = int(line.split(":")[1].split()[0])
        elif line.startswith("tps =") and tps is None:
            tps = float(line.split()[2])
    lat = None
    if rate:
        lat = []
        for f in logdir.glob("pgb*"):
            for row in f.read_text().splitlines():
                parts = row.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]) / 1000)
    res = summarize(ok, 0, failed, secs, lat)
    if tps is not None and not rate:
        res["rps"] = round(tps, 1)
    return res


def bench_pgbench(ctx: Context, workloads: list[Workload]) -> dict:
    out = {}
    db = Database("pg", "pgbench", ctx.tmp)
    try:
        db.migrate()
        ctx_vars = db.preload() if any(w.preload for w in workloads) else {}
        for w in workloads:
            log(f"pgbench: {w.name}")
            script = ctx.tmp / f"pgbench-{w.name}.sql"
            script.write_text(expand(w.pgbench_sql, ctx_vars))
            logdir = ctx.tmp / f"pgbench-{w.name}"
            logdir.mkdir(exist_ok=True)
            try:
                pgbench_run(db.name, script, w.conns, ctx.mode.warmup + 0.5, None, logdir)
                runs, lat_runs = [], []
                for _ in range(ctx.mode.repeats):
                    runs.append(pgbench_run(db.name, script, w.conns, ctx.mode.duration, None,
                                            logdir))
                    lat_runs.append(pgbench_run(db.name, script, w.conns, ctx.mode.lat_duration,
                                                w.rate, logdir))
                out[w.name] = {"rps": median([r["rps"] for r in runs]),
                               "p50_ms": median([r["p50_ms"] for r in lat_runs]),
                               "p99_ms": median([r["p99_ms"] for r in lat_runs]),
                               "latency_rate": w.rate,
                               "errors": sum(r["errors"] for r in runs + lat_runs),
                               "peak_rss_mb": None, "runs": runs, "latency_runs": lat_runs}
            except Exception as e:
                out[w.name] = {"error": str(e)[-500:]}
                log(f"pgbench: {w.name} failed: {e}")
    finally:
        db.drop()
    return out


NUMPY_CODE = """
import json, sys, time
import numpy as np
n, d = int(sys.argv[1]), float(sys.argv[2])
a = np.fromfunction(lambda i, j: (i * j) % 7 + 1, (n, n), dtype=np.float64)
b = np.fromfunction(lambda i, j: (i + j) % 5 + 1, (n, n), dtype=np.float64)
for _ in range(50):
    c = a @ b
count, t0 = 0, time.perf_counter()
end = t0 + d
while True:
    for _ in range(10):
        c = a @ b
    count += 10
    now = time.perf_counter()
    if now >= end or count >= 10**8:
        break
el = now - t0
print(json.dumps({"products_per_s": count / el, "gflops": count * 2 * n ** 3 / el / 1e9}))
"""


def bench_numpy(ctx: Context) -> dict:
    log("numpy: matmul")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    runs = []
    for _ in range(ctx.mode.repeats):
        r = sh([*SERVER_CPU, sys.executable, "-c", NUMPY_CODE, str(MATMUL_N),
                str(ctx.mode.duration)], ctx.mode.duration + 120, env=env)
        if r.returncode:
            return {"error": r.stderr.strip()[-400:]}
        runs.append(json.loads(r.stdout))
    return {"rps": round(median([r["products_per_s"] for r in runs]), 1),
            "gflops": round(median([r["gflops"] for r in runs]), 3),
            "p50_ms": None, "p99_ms": None, "errors": 0, "peak_rss_mb": None, "runs": runs,
            "note": "products/s in-process, one thread on the server core"}


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu = mem = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
                break
    except OSError:
        pass
    import numpy
    return {"nproc": NPROC, "cpu_model": cpu, "memory": mem, "kernel": platform.release(),
            "pinning": ("server on CPU 0, load generator on CPU 1" if PINNED
                        else "none (fewer than 2 CPUs)"),
            "versions": {"rustc": version_of(["rustc", "-V"]), "node": version_of(["node", "-v"]),
                         "python": platform.python_version(), "numpy": numpy.__version__,
                         "oha": version_of([Tools.oha, "--version"]),
                         "nginx": version_of(["nginx", "-v"]) if shutil.which("nginx") else None,
                         "pgbench": version_of(["pgbench", "--version"]),
                         "postgres": version_of(["psql", "-X", "-tA", f"{PG_ADMIN}/postgres",
                                                 "-c", "show server_version"])}}


def fmt(v, digits=1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def build_rows(results: dict) -> dict[str, list[dict]]:
    """workload -> rows (server, numbers) with the keel/peer and keel/limit ratios."""
    table: dict[str, list[dict]] = {}
    for w in WORKLOADS:
        if w.kind not in ("http", "responsive", "login"):
            continue
        rows = []
        for s in results["servers"]:
            r = s["workloads"].get(w.name)
            if r is not None:
                rows.append({"server": s["server"], "family": s["family"],
                             "database": s.get("database"), **r})
        lim = results["limits"].get(w.name)
        limit_name = None
        if w.limit in ("pgbench", "numpy") and lim:
            limit_name = f"{w.limit} (limit)"
            rows.append({"server": limit_name, "family": "limit", **lim})
        elif w.limit in ("nginx", "hyper-bare"):
            for row in rows:
                if row["server"] == w.limit:
                    row["server"] = limit_name = f"{w.limit} (limit)"
                    row["family"] = "limit"
        if not rows:
            continue
        keel = next((r for r in rows if r["server"] == "keel-pg" and r.get("rps")), None)
        limit = next((r for r in rows if r["server"] == limit_name and r.get("rps")), None)
        for row in rows:
            rps = row.get("rps")
            row["keel_over_peer"] = (round(keel["rps"] / rps, 2)
                                     if keel and rps and row["family"] not in ("keel", "limit")
                                     else None)
            # pgbench is PostgreSQL's limit: keel-sqlite is not compared with it.
            row["keel_over_limit"] = (round(rps / limit["rps"], 3)
                                      if limit and rps and row["family"] == "keel"
                                      and (w.limit != "pgbench" or row.get("database") == "pg")
                                      else None)
        table[w.name] = rows
    return table


def render_markdown(results: dict, table: dict) -> str:
    m = results["machine"]
    lines = [f"# keel benchmark ({results['mode']})", "",
             f"{m['nproc']} CPUs ({m['cpu_model']}), {m['memory']}, Linux {m['kernel']}; "
             f"{m['pinning']}. Every server — keel, hyper-bare and the multi-process peers "
             "(their WORKERS share that one core) — gets CPU 0 only. PostgreSQL is the system "
             "service and is not pinned.", "",
             f"req/s: median of {results['config']['repeats']} saturation runs of "
             f"{results['config']['duration_s']} s. p50/p99: median of as many fixed-rate runs "
             "(rate shown, same for every server) with coordinated-omission correction. "
             "errors: non-2xx + socket errors over all those runs. keel/peer: keel-pg req/s over "
             "the peer's; keel/limit: keel's req/s over the physical limit's (pgbench: "
             "keel-pg only).", ""]
    for name, rows in table.items():
        w = WL[name]
        rate = rows[0].get("latency_rate")
        lines += [f"## {name}", "", w.doc + (f" Latency rate: {fmt(rate, 0)} req/s." if rate
                                              else ""), "",
                  "| server | req/s | p50 ms | p99 ms | errors | peak RSS MB | keel/peer "
                  "| keel/limit |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['server']} | failed: {r['error'][:120]} | | | | | | |")
                continue
            lines.append(f"| {r['server']} | {fmt(r.get('rps'))} | {fmt(r.get('p50_ms'), 2)} "
                         f"| {fmt(r.get('p99_ms'), 2)} | {fmt(r.get('errors'))} "
                         f"| {fmt(r.get('peak_rss_mb'))} | {fmt(r.get('keel_over_peer'), 2)} "
                         f"| {fmt(r.get('keel_over_limit'), 3)} |")
        if name == "matmul":
            np_ = results["limits"].get("matmul") or {}
            flops = 2 * MATMUL_N ** 3 / 1e9
            for r in rows:
                if r.get("rps") and r["family"] != "limit":
                    lines.append(f"\n{r['server']}: {r['rps'] * flops:.2f} GFLOP/s "
                                 f"(req/s × 2·{MATMUL_N}³)")
            if np_.get("gflops"):
                lines.append(f"\nnumpy in-process, one thread: {np_['gflops']:.2f} GFLOP/s")
        if name == "login":
            for r in rows:
                if r.get("login_p99_ms") is not None:
                    lines.append(f"\n{r['server']}: login latency at saturation p50 "
                                 f"{fmt(r['login_p50_ms'], 1)} ms, p99 {fmt(r['login_p99_ms'], 1)} ms")
        if name == "responsive":
            for r in rows:
                if r.get("background_matmul_rps") is not None:
                    lines.append(f"\n{r['server']}: background matmul "
                                 f"{fmt(r['background_matmul_rps'])} req/s, "
                                 f"{r['background_matmul_errors']} errors (503s included)")
        bad = [r for r in rows if r.get("probe_status") not in (None, 200)]
        for r in bad:
            lines.append(f"\nnote: {r['server']} answered {r['probe_status']} to the probe "
                         "request before this workload")
        lines.append("")
    cold = [(s["server"], s["workloads"]["cold_start"]) for s in results["servers"]
            if "cold_start" in s["workloads"]]
    if cold:
        lines += ["## cold_start", "", WL["cold_start"].doc, "",
                  "| server | median ms | min ms | max ms | failed starts |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {n} | {fmt(c['median_ms'])} | {fmt(c['min_ms'])} | {fmt(c['max_ms'])} "
                  f"| {c['errors']} |" for n, c in cold]
        lines.append("")
    if "memory" in results["workloads"]:
        lines += ["## memory", "", WL["memory"].doc, "",
                  "| server | idle RSS MB | idle private (RssAnon) MB | peak RSS MB |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {s['server']} | {fmt(s.get('idle_rss_mb'))} | {fmt(s.get('idle_anon_mb'))} "
                  f"| {fmt(s.get('peak_rss_mb'))} |"
                  for s in results["servers"] if "idle_rss_mb" in s]
        lines.append("")
    failed = [s for s in results["servers"] if s.get("error")]
    skipped = results.get("skipped", {})
    if failed or skipped:
        lines += ["## not measured", ""]
        lines += [f"- {s['server']}: {s['error'][:300]}" for s in failed]
        lines += [f"- {k}: {v}" for k, v in skipped.items()]
        lines.append("")
    return "\n".join(lines)


def render_chart(table: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n, rows in table.items() if any(r.get("rps") for r in rows)]
    servers: list[str] = []
    for n in names:
        for r in table[n]:
            if r["server"] not in servers and r.get("rps"):
                servers.append(r["server"])
    if not names:
        return
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names) + 2), 5.5))
    cmap = plt.get_cmap("tab20")
    colors = {s: cmap(k % 20) for k, s in enumerate(servers)}
    labelled: set[str] = set()
    for i, n in enumerate(names):  # each workload's bars centred on its tick
        present = [r for r in table[n] if r.get("rps")]
        width = 0.8 / len(present)
        for k, r in enumerate(present):
            s = r["server"]
            ax.bar(i - 0.4 + width * (k + 0.5), r["rps"], width, color=colors[s],
                   label=None if s in labelled else s)
            labelled.add(s)
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log scale; numpy: products/s)")
    ax.set_title("keel benchmark: requests/s per workload (server on one core)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="keel benchmark harness (see bench/README.md)")
    p.add_argument("--quick", action="store_true",
                   help="short runs, one repeat, fewer servers (under 3 minutes)")
    p.add_argument("--only", help="comma-separated servers or families, e.g. keel,fastify-w1")
    p.add_argument("--workloads", help="comma-separated: " + ",".join(WL))
    p.add_argument("--seconds", type=float,
                   help="length of each saturation and latency run (full: 10, quick: 1.5)")
    p.add_argument("--repeats", type=int, help="repeats per measurement (full: 3, quick: 1)")
    p.add_argument("--no-limits", action="store_true", help="skip pgbench, numpy and nginx")
    p.add_argument("--skip-install", action="store_true", help="do not run the peers' install.sh")
    p.add_argument("--reinstall", action="store_true",
                   help="run the peers' install.sh even when nothing changed since the last one")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    mode = QUICK if args.quick else FULL
    if args.seconds:
        mode = replace(mode, duration=args.seconds, lat_duration=args.seconds)
    if args.repeats:
        mode = replace(mode, repeats=args.repeats)
    wanted = [w.strip() for w in args.workloads.split(",")] if args.workloads else list(WL)
    unknown = [w for w in wanted if w not in WL]
    if unknown:
        raise SystemExit(f"unknown workloads: {unknown}; known: {list(WL)}")
    workloads = [w for w in WORKLOADS if w.name in wanted]
    only = {s.strip() for s in args.only.split(",") if s.strip()} if args.only else None
    known = {s.name for s in SERVERS} | {s.family for s in SERVERS}
    if only is not None and only - known:
        raise SystemExit(f"unknown servers in --only: {sorted(only - known)}; "
                         f"known: {sorted(known)}")
    # In --quick a family means its quick variants, or all of them if it has none (express).
    quick_families = {s.family for s in SERVERS if s.quick}
    servers = []
    for s in SERVERS:
        if s.family == "nginx":
            if args.no_limits or "static" not in wanted:
                continue
        elif only is not None and not (s.name in only or (
                s.family in only and (s.quick or not args.quick
                                      or s.family not in quick_families))):
            continue
        elif only is None and args.quick and not s.quick:
            continue
        if [w for w in workloads if s.runs(w) and w.kind != "memory"]:
            servers.append(s)
    limit_wls = [] if args.no_limits else [
        w for w in workloads if w.limit == "pgbench" and (not args.quick or w.name == "create")]
    need_pg = any(s.db == "pg" for s in servers) or bool(limit_wls)
    t_begin = time.time()
    ensure_tools(need_pg, any(s.family == "nginx" for s in servers))
    skipped: dict[str, str] = {}
    if any(s.family == "keel" for s in servers) or need_pg:
        Tools.keel = ensure_keel()
        if not Path(Tools.keel).exists():
            raise SystemExit(f"bench: no keel binary at {Tools.keel}")
    Tools.nginx = Tools.nginx or shutil.which("nginx")
    for fam in sorted({s.family for s in servers} - {"keel", "nginx"}):
        why = None if args.skip_install and (PEERS / fam / "run.sh").exists() else \
            install_peer(fam, args.reinstall)
        if args.skip_install and not (PEERS / fam / "run.sh").exists():
            why = "run.sh missing"
        if why:
            skipped[fam] = why
            log(f"skipping {fam}: {why}")
    servers = [s for s in servers if s.family not in skipped]
    if PINNED:  # the harness itself (RSS sampler, bookkeeping) stays off the server's core
        os.sched_setaffinity(0, {1})
        log("pinning: every server on CPU 0 (multi-process peers share it), load generator "
            "on CPU 1")

    results: dict = {"mode": "quick" if args.quick else "full",
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "config": {"duration_s": mode.duration, "latency_duration_s":
                                mode.lat_duration, "warmup_s": mode.warmup,
                                "repeats": mode.repeats, "cold_start_runs": mode.cold_runs,
                                "preload_rows": PRELOAD_ROWS, "matmul_n": MATMUL_N,
                                "create_client": "saturation: wrk -t1 with bench/create.lua; "
                                                 "latency: bench/run.py asyncio HTTP/1.1 client "
                                                 "(keep-alive; open-loop schedule)",
                                "loadgen": "oha"},
                     "machine": machine_info(), "workloads": [w.name for w in workloads],
                     "servers": [], "limits": {}, "skipped": skipped}
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmpname:
        ctx = Context(mode, Path(tmpname))
        try:
            for s in servers:
                wls = [w for w in workloads if s.runs(w)]
                log(f"== {s.name}: {', '.join(w.name for w in wls)}")
                results["servers"].append(bench_server(s, ctx, wls))
            if limit_wls:
                results["limits"].update(bench_pgbench(ctx, limit_wls))
            if "matmul" in wanted and not args.no_limits:
                results["limits"]["matmul"] = bench_numpy(ctx)
        finally:
            for p in list(LIVE):
                stop(p)
    results["elapsed_s"] = round(time.time() - t_begin, 1)
    table = build_rows(results)
    results["table"] = table
    md = render_markdown(results, table) + f"\n_elapsed: {results['elapsed_s']} s_\n"
    RESULTS.mkdir(exist_ok=True)
    # A run of some servers or workloads must not replace the published full table.
    name = "partial" if args.only or args.workloads else "latest"
    (RESULTS / f"{name}.md").write_text(md)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
    try:
        render_chart(table, RESULTS / f"{name}.png")
    except Exception as e:
        log(f"chart failed: {e}")
    print(md)
    log(f"wrote {RESULTS / name}.md, {name}.json, {name}.png")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_client":
        print(json.dumps(asyncio.run(_client_main(json.loads(sys.argv[2])))))
        sys.exit(0)
    bootstrap_venv()

    def _on_signal(signum, _frame):
        for p in list(LIVE):
            stop(p)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _on_signal)
    sys.exit(main())

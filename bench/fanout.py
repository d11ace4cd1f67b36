#!/usr/bin/env python3
"""keel event fan-out benchmark: many SSE or WebSocket streams on one instance.

    python3 bench/fanout.py                                 # 10,000 streams: ws and sse, on PostgreSQL and SQLite
    python3 bench/fanout.py --transports ws --databases pg --connections 2000

For each database and transport it starts a fresh `keel serve` (on CPU 0) with a fresh
database, and runs the load client `bench/fanout/` (on CPU 1), which holds the streams, reads
keel's memory before and after opening them, creates users one at a time and times each
`user.created` event to every stream. Results: bench/results/fanout.md and fanout.json (a run
with other than the default connections, transports or databases writes fanout-partial.*).
See bench/README.md, "Event fan-out". Stdlib only; it reuses run.py's helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as harness
from run import (BENCH, BENCH_ADMIN, LIVE, LOADGEN_CPU, PG_ADMIN, PINNED, RESULTS, ROOT,
                 SERVER_CPU, Database, Tools, fmt, free_port, log, post_json, sh, stop,
                 version_of, wait_live)

CLIENT_DIR = BENCH / "fanout"
DEFAULTS = {"connections": 10_000, "transports": "ws,sse", "databases": "pg,sqlite"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=DEFAULTS["connections"],
                   help="streams held open (default 10000)")
    p.add_argument("--transports", default=DEFAULTS["transports"],
                   help="comma-separated: ws, sse (default both)")
    p.add_argument("--databases", default=DEFAULTS["databases"],
                   help="comma-separated: pg, sqlite (default both)")
    p.add_argument("--writes", type=int, default=40, help="users created, one at a time")
    p.add_argument("--interval-ms", type=int, default=500, help="between two writes")
    p.add_argument("--settle-secs", type=int, default=5,
                   help="wait after the last stream opened before reading keel's memory")
    return p.parse_args()


def ensure_client() -> str:
    """The load client's binary: BENCH_FANOUT_BIN, or built into bench/fanout/target."""
    if os.environ.get("BENCH_FANOUT_BIN"):
        return os.environ["BENCH_FANOUT_BIN"]
    log("building the load client: cargo build --release --locked in bench/fanout")
    target = CLIENT_DIR / "target"
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=CLIENT_DIR, check=True,
                   timeout=3000, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    return str(target / "release" / "fanout")


def raise_open_files(need: int) -> int:
    """Raises this process's open-file limit (inherited by keel and the client) to at least
    `need` if it may (root), else to its hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def keel_env(port: int, db: Database, connections: int) -> dict:
    """keel's environment: the bench admin, long tokens, limiters that never refuse the
    client, room for every stream; events settings otherwise at their defaults."""
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **db.env,
           "KEEL_BOOTSTRAP_ADMIN_EMAIL": BENCH_ADMIN[0],
           "KEEL_BOOTSTRAP_ADMIN_PASSWORD": BENCH_ADMIN[1],
           "KEEL_ACCESS_TOKEN_TTL_SECS": "86400",
           "KEEL_RATE_LIMIT_PER_MINUTE": "1000000000",
           "KEEL_AUTH_RATE_LIMIT_PER_MINUTE": "0", "KEEL_LOGIN_FAILURE_LIMIT": "0",
           "KEEL_EVENTS_MAX_CONNECTIONS": str(max(20_000, connections + 1_000))}
    if db.kind != "pg":
        env.pop("DATABASE_URL", None)
    return env


def log_lines(path: Path, *levels: str) -> list[str]:
    """keel's stderr lines at the given levels (its JSON or text log)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(level in line for level in levels)]


def run_one(client: str, database: str, transport: str, args: argparse.Namespace,
            tmp: Path) -> dict:
    """One keel instance, one database, one transport: the client's report plus context."""
    label = f"fanout_{database}_{transport}"
    # Anything else running on the machine shows here (the build of another checkout, say).
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    db = Database(database, label, tmp)
    port = free_port()
    logfile = tmp / f"{label}.log"
    proc = None
    try:
        with open(logfile, "ab") as logf:
            # stdout (one log line per request) is discarded; stderr is kept.
            proc = subprocess.Popen([*SERVER_CPU, Tools.keel, "serve"],
                                    env=keel_env(port, db, args.connections), cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=logf, start_new_session=True)
        LIVE.append(proc)
        if wait_live(proc, port, timeout=60, interval=0.05) is None:
            raise RuntimeError(f"keel did not start: {logfile.read_text()[-800:]}")
        status, body = post_json(port, "/auth/login",
                                 {"email": BENCH_ADMIN[0], "password": BENCH_ADMIN[1]})
        if status != 200:
            raise RuntimeError(f"login answered {status}")
        cmd = [*LOADGEN_CPU, client, "--addr", f"127.0.0.1:{port}", "--server-pid",
               str(proc.pid), "--transport", transport, "--connections", str(args.connections),
               "--writes", str(args.writes), "--interval-ms", str(args.interval_ms),
               "--settle-secs", str(args.settle_secs)]
        log(f"{database}/{transport}: {' '.join(cmd[len(LOADGEN_CPU):])}")
        r = subprocess.run(cmd, env={**os.environ, "FANOUT_TOKEN": body["access_token"]},
                           stdout=subprocess.PIPE, stderr=None, text=True, timeout=1800)
        if r.returncode:
            raise RuntimeError(f"the client failed ({r.returncode})")
        report = json.loads(r.stdout)
        alive = proc.poll() is None
    finally:
        if proc is not None:
            stop(proc)
        db.drop()
    problems = log_lines(logfile, "WARN", "ERROR")
    return {"database": database, "transport": transport, "loadavg_before": loadavg,
            "keel_alive_at_end": alive,
            "keel_warnings": len(problems), "keel_warning_sample": problems[:5], **report}


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(),
            "pinning": ("keel on CPU 0, client on CPU 1, PostgreSQL unpinned" if PINNED
                        else "none (fewer than 2 CPUs)"),
            "rustc": version_of(["rustc", "-V"]),
            "postgres": version_of(["psql", "-X", "-tA", f"{PG_ADMIN}/postgres", "-c",
                                    "show server_version"])}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu_model"] = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            info["memory"] = f"{int(line.split()[1]) // 1024} MiB"
            break
    return info


def mib(kib) -> str:
    return "—" if kib is None else f"{kib / 1024:,.1f} MiB"


def render(results: dict) -> str:
    runs = results["runs"]
    cfg = results["config"]
    out = [f"# keel event fan-out: {cfg['connections']:,} streams on one instance", "",
           f"{results['started']}; {results['machine'].get('cpu_model')}, "
           f"{results['machine']['nproc']} CPUs ({results['machine']['pinning']}); "
           f"{cfg['writes']} writes (`POST /users`), one every {cfg['interval_ms']} ms; "
           "every stream is an admin's and receives every `user.created`.", "",
           "| database | transport | streams subscribed | memory / stream | keel RSS before | "
           "keel RSS with streams | peak RSS | delay p50 | delay p99 | delay max | "
           "last client p50 | last client p99 | first client p50 | missed | dropped |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if "error" in r:
            out.append(f"| {r['database']} | {r['transport']} | failed: {r['error']} |"
                       + " |" * 12)
            continue
        m, d = r["memory"], r["delivery"]
        out.append(
            f"| {r['database']} | {r['transport']} | {r['subscribed']:,} / {r['connections']:,}"
            f" | {fmt(m['per_connection_kib'])} KiB | {mib(m['before']['rss_kib'])}"
            f" | {mib(m['settled']['rss_kib'])} | {mib(m['peak_kib'])}"
            f" | {fmt(d['delay_ms']['p50'])} ms | {fmt(d['delay_ms']['p99'])} ms"
            f" | {fmt(d['delay_ms']['max'])} ms | {fmt(d['last_client_ms']['p50'])} ms"
            f" | {fmt(d['last_client_ms']['p99'])} ms | {fmt(d['first_client_ms']['p50'])} ms"
            f" | {d['missed']:,} of {d['expected']:,} | {r['dropped']:,} |")
    out += ["", "Delay: from just before a write's request was sent to the moment a stream read "
            "its event, over every (stream, write) pair. Last client: per write, the delay of "
            "the stream that got it last (the time until every client had it); first client: "
            "the same for the first stream (the path through the database and keel's hub, "
            "before the fan-out). Memory per stream: (RSS after opening every stream and "
            "settling − RSS before the first) / streams; peak over the whole run, sampled "
            "every 100 ms.", ""]
    for r in runs:
        if "error" in r:
            continue
        m, d, c = r["memory"], r["delivery"], r["cpu"]
        lines = [
            f"- **{r['database']}/{r['transport']}**: opened in {r['open_secs']:.1f} s; "
            f"RssAnon {fmt(m['per_connection_anon_kib'])} KiB per stream; keel's VmSize "
            f"{mib(m['before']['vm_size_kib'])} → {mib(m['settled']['vm_size_kib'])}, "
            f"{m['settled']['open_files']:,} open files, {m['settled']['threads']} threads; "
            f"RSS after the writes {mib(m['after_writes']['rss_kib'])}. "
            f"Write (201) p50/p99 {fmt(d['write_ms']['p50'])}/{fmt(d['write_ms']['p99'])} ms. "
            f"CPU per delivery: keel {fmt(c['server_us_per_delivery'])} µs, client "
            f"{fmt(c['client_us_per_delivery'])} µs; over the writes keel used "
            f"{fmt(c['server_pct'])}% of a core, the client {fmt(c['client_pct'])}%, and the "
            f"CPUs were busy {' / '.join(fmt(b) + '%' for b in c['machine_busy_pct'])}. "
            f"Duplicates {d['duplicates']}, "
            f"open failures {sum(r['open_failures'].values())}, keel log warnings "
            f"{r['keel_warnings']}. Load average before the run: "
            f"{' '.join(r['loadavg_before'])}."]
        for reason, n in {**r["open_failures"], **r["drop_reasons"]}.items():
            lines.append(f"  - {n:,} × {reason}")
        out += lines
    out += ["", "Client and keel share one 2-core machine (PostgreSQL unpinned on both): the "
            "client reads 10,000 sockets on one core, so the delays include its own time to "
            "reach each socket. See bench/README.md, \"Event fan-out\".", ""]
    return "\n".join(out)


def main() -> int:
    args = parse_args()
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if set(transports) - {"ws", "sse"} or set(databases) - {"pg", "sqlite"} or not transports \
            or not databases:
        raise SystemExit("bench: --transports takes ws,sse and --databases pg,sqlite")
    cargo_bin = Path.home() / ".cargo" / "bin"
    os.environ["PATH"] = f"{os.environ.get('PATH', '')}:{cargo_bin}"
    if "pg" in databases and sh(["psql", "-X", "-tA", f"{PG_ADMIN}/postgres", "-c",
                                  "select 1"], 30).returncode:
        raise SystemExit(f"bench: PostgreSQL is not reachable at {PG_ADMIN} (trust auth)")
    Tools.keel = harness.ensure_keel()
    client = ensure_client()
    limit = raise_open_files(2 * args.connections + 4096)
    if limit < args.connections + 1024:
        raise SystemExit(f"bench: open-file limit {limit} is too low for "
                         f"{args.connections} streams")
    if PINNED:  # the harness stays off keel's core
        os.sched_setaffinity(0, {1})
    full = (args.connections == DEFAULTS["connections"]
            and sorted(transports) == sorted(DEFAULTS["transports"].split(","))
            and sorted(databases) == sorted(DEFAULTS["databases"].split(",")))
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
               "config": {"connections": args.connections, "writes": args.writes,
                          "interval_ms": args.interval_ms, "settle_secs": args.settle_secs,
                          "open_files_limit": limit,
                          "keel": "events settings at their defaults (heartbeat 15 s, buffer "
                                  "4096, poll 100 ms) except KEEL_EVENTS_MAX_CONNECTIONS",
                          "keel_bin": Tools.keel,
                          "keel_commit": sh(["git", "rev-parse", "--short", "HEAD"], 30,
                                            cwd=ROOT).stdout.strip()},
               "runs": []}
    with tempfile.TemporaryDirectory(prefix="keel-fanout-") as tmp:
        for database in databases:
            for transport in transports:
                try:
                    results["runs"].append(run_one(client, database, transport, args,
                                                   Path(tmp)))
                except Exception as e:
                    log(f"{database}/{transport} failed: {e}")
                    results["runs"].append({"database": database, "transport": transport,
                                            "error": str(e)})
    name = "fanout" if full else "fanout-partial"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = render(results)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    log(f"wrote {RESULTS / name}.md and {name}.json")
    return 0 if all("error" not in r for r in results["runs"]) else 1


if __name__ == "__main__":
    def _on_signal(signum, _frame):
        for p in list(LIVE):
            stop(p)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _on_signal)
    sys.exit(main())

"""The measurements: pgbench workloads in ABBA rounds, COPY, callgrind, idle-client memory, flip under load."""
import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import pgbench, procs, services
from .pgwire import IdleSessions

CUTOVER_POOLED = "cutover_pooled"
CUTOVER_DUAL_POOLED = "cutover_dual_pooled"


@dataclass
class Workload:
    key: str
    label: str
    args: list
    latency: bool = False            # keep pgbench's per-transaction log and compute percentiles
    queries_per_tx: int = 1
    skip_targets: tuple = ()
    rate: bool = False               # a fixed-rate (-R) run: compare latency, not TPS
    follower_apart: bool = False     # move the follower cluster to another CPU (see fixed_rate_follower_apart)
    only_targets: tuple = ()         # when set, the only targets this workload runs on
    tls: bool = False                # runs on the TLS targets (and only there)
    unix: bool = False               # runs on the Unix-socket targets (and only there)

    def applies(self, endpoint):
        if self.key == "select_prepared" and not endpoint.prepared_ok:
            return False
        if endpoint.key in (CUTOVER_POOLED, CUTOVER_DUAL_POOLED) and self.key != "connect_select":
            return False  # the pooled instances are there for the connect-per-transaction workload only
        if self.only_targets and endpoint.key not in self.only_targets:
            return False
        if self.tls != bool(endpoint.sslmode) or self.unix != endpoint.is_unix:
            return False
        return endpoint.key not in self.skip_targets


def workloads(mode):
    c8 = ["-c", "8", "-j", "1"]
    return [
        Workload("select_simple", "select-only, -M simple, 8 clients", ["-S", "-M", "simple"] + c8),
        Workload("select_extended", "select-only, -M extended, 8 clients", ["-S", "-M", "extended"] + c8),
        Workload("select_prepared", "select-only, -M prepared, 8 clients", ["-S", "-M", "prepared"] + c8),
        # The same as select_simple with clients on TLS (sslmode=require) to PgBouncer session and Cutover legacy:
        # what encryption costs each proxy (both terminate TLS with OpenSSL; the link to PostgreSQL stays clear).
        Workload("select_simple_tls", "select-only, -M simple, 8 clients, TLS (sslmode=require)", ["-S", "-M", "simple"] + c8,
                 tls=True),
        # The same with every hop on a Unix-domain socket (client → proxy → PostgreSQL; direct: client →
        # PostgreSQL), as with the proxy beside its clients and its database on one host: what the TCP
        # loopback hops cost, which is most of a proxy's CPU per query.
        Workload("select_simple_unix", "select-only, -M simple, 8 clients, Unix sockets", ["-S", "-M", "simple"] + c8,
                 unix=True),
        # tpcb-like: BEGIN, 3 UPDATEs, SELECT, INSERT, END = 7 statements.
        Workload("tpcb", "TPC-B (tpcb-like), 8 clients", ["-M", "simple"] + c8, queries_per_tx=7),
        Workload("latency_c1", "select-only, 1 client (latency)", ["-S", "-M", "simple", "-c", "1"], latency=True),
        # A new connection for every transaction (pgbench -C), as an application without a pool of its own
        # connects: PgBouncer (session mode) reuses its server connections; Cutover logs in to PostgreSQL per
        # session unless `backend_pool_size` is set (the cutover_pooled target). Direct clients pay their own
        # SCRAM login each time; clients log in to both proxies with trust. In `dual-legacy` each session also
        # needs a follower: logged in per session (cutover_dual_async), or taken from the pool as well
        # (cutover_dual_pooled).
        Workload("connect_select", "select-only, a new connection per transaction (-C), 8 clients",
                 ["-S", "-M", "simple", "-C"] + c8,
                 only_targets=("direct", "pgbouncer_session", "cutover_legacy", CUTOVER_POOLED, "cutover_dual_async", CUTOVER_DUAL_POOLED)),
        Workload("fixed_rate", f"TPC-B at {mode.rate} tx/s, 4 clients (latency)",
                 ["-M", "simple", "-c", "4", "-j", "1", "-R", str(mode.rate)], latency=True, queries_per_tx=7,
                 skip_targets=("pgbouncer_txn",), rate=True),
        # The same, with the follower PostgreSQL moved to another CPU, as it would be on its own host. On the
        # shared CPU the follower (a second database executing every statement) delays the leader path: p50
        # doubles even when the follower runs at SCHED_IDLE (measured: 3.1 ms vs 1.4 ms), so the same-CPU
        # run measures the machine, not the proxy. Apart, the proxy's mirroring work (sending to the
        # follower, reading and digesting its answers, comparing, the cross-CPU wake-ups) stays on the
        # shared CPU and counts; only the follower's own execution moves away.
        Workload("fixed_rate_follower_apart", f"TPC-B at {mode.rate} tx/s, 4 clients, follower on another CPU",
                 ["-M", "simple", "-c", "4", "-j", "1", "-R", str(mode.rate)], latency=True, queries_per_tx=7,
                 rate=True, follower_apart=True,
                 only_targets=("cutover_legacy", "cutover_dual_async", "cutover_dual_sync")),
    ]


@dataclass
class Recorder:
    """Collects every run as a plain dict (saved to JSON as it goes) plus pooled latencies for the plot."""
    path: str
    runs: list = field(default_factory=list)
    pooled: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def add(self, run):
        lat = run.pop("_latencies_us", None)
        run.pop("_completions", None)
        if lat is not None:
            key = (run["workload"], run["target"])
            self.pooled[key] = np.concatenate([self.pooled.get(key, np.empty(0)), lat])
        run["load1"] = procs.load_average()
        self.runs.append(run)

    def note(self, key, value):
        self.extra[key] = value


def abba(targets, round_index):
    """Forward order in even rounds, reverse in odd ones: over two rounds every pair runs A B B A."""
    return list(targets) if round_index % 2 == 0 else list(reversed(targets))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def warm_up(targets, pin):
    for t in targets:
        pgbench.run_pgbench(t, pin, ["-S", "-c", "8", "-j", "1", "-T", "1"])


def throughput_rounds(mode, targets, pin, rec, work, follower_cluster=None):
    other_cpu = next((c for c in sorted(os.sched_getaffinity(0)) if c != pin.cpu), None) if pin.cpu is not None else None
    wls = [w for w in workloads(mode) if not w.follower_apart or (follower_cluster is not None and other_cpu is not None)]
    for r in range(mode.rounds):
        order = abba(targets, r)
        log(f"round {r + 1}/{mode.rounds}: {' '.join(t.key for t in order)}")
        for wl in wls:
            for t in order:
                if not wl.applies(t):
                    continue
                if wl.follower_apart:
                    procs.set_affinity_tree(follower_cluster.service.proc.pid, other_cpu)
                try:
                    res = pgbench.run_pgbench(t, pin, wl.args + ["-T", str(mode.duration)],
                                              log_dir=work if wl.latency else None, tag=f"{wl.key}-{t.key}",
                                              timeout=mode.duration * 10 + 60)
                finally:
                    if wl.follower_apart:
                        procs.set_affinity_tree(follower_cluster.service.proc.pid, pin.cpu)
                res.update(workload=wl.key, target=t.key, round=r)
                if res.get("proxy_cpu_s") is not None and res["transactions"]:
                    queries = res["transactions"] * wl.queries_per_tx
                    for key in ("cpu", "user", "sys"):
                        res[f"proxy_{key}_us_per_query"] = round(res[f"proxy_{key}_s"] * 1e6 / queries, 2)
                rec.add(res)
                lat = res.get("latency_us", {})
                log(f"  {wl.key:16} {t.key:20} tps={res['tps']:9.1f}"
                    + (f" cpu/q={res['proxy_cpu_us_per_query']:.1f}us" if "proxy_cpu_us_per_query" in res else "")
                    + (f" p50={lat['p50']:.0f}us p99={lat['p99']:.0f}us" if lat else "")
                    + (f" FAILED={res['failed']}+{res['aborted_clients']} exit={res['exit_code']}"
                       if res["failed"] or res["aborted_clients"] or res["exit_code"] else ""))


def copy_rounds(mode, targets, pin, rec, clusters, data_path, data_bytes):
    """COPY out of pgbench_accounts and COPY back in (into copy_target), each `copy_repeat` times per run."""
    direct = clusters["legacy"].endpoint()
    for r in range(mode.rounds):
        for t in abba(targets, r):
            for direction in ("out", "in"):
                if direction == "out" and t.key.startswith("cutover_dual"):
                    continue                     # reads are not mirrored: same path as the legacy phase
                seconds, cpu = 0.0, 0.0
                for _ in range(mode.copy_repeat):
                    if direction == "in":
                        for c in clusters.values():
                            procs.run(c.endpoint().psql("TRUNCATE copy_target"), env=direct.env())
                        s, cp = pgbench.copy_run(t, pin, "COPY copy_target FROM STDIN", data_path)
                    else:
                        s, cp = pgbench.copy_run(t, pin, "COPY pgbench_accounts TO STDOUT")
                    seconds += s
                    cpu += cp or 0.0
                mb = data_bytes * mode.copy_repeat / 1e6
                run = dict(workload=f"copy_{direction}", target=t.key, round=r, seconds=round(seconds, 4),
                           mb_per_s=round(mb / seconds, 1), bytes=data_bytes * mode.copy_repeat)
                if t.service is not None:
                    run["proxy_cpu_s"] = round(cpu, 3)
                    run["proxy_cpu_ms_per_100mb"] = round(cpu * 1e3 * 100 / mb, 2)
                rec.add(run)
                log(f"  copy_{direction:3} {t.key:20} {run['mb_per_s']:8.1f} MB/s")


# --- callgrind -------------------------------------------------------------------------------------

_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.+?)\s*$")


def _total_instructions(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def _per_function(path, inclusive=False):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}", path],
                         capture_output=True, text=True).stdout
    costs = {}
    for line in out.splitlines():
        m = _ANNOTATE_LINE.match(line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2)
            name = name.split(":", 1)[1] if ":" in name.split(" [")[0] else name
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def _demangle(names):
    tool = shutil.which("swift-demangle")
    if not tool or not names:
        return names
    p = subprocess.run([tool, "--simplified"], input="\n".join(names), capture_output=True, text=True)
    out = p.stdout.splitlines()
    return out if p.returncode == 0 and len(out) == len(names) else names


def _traced_proxy_run(kind, tool, n, pin, work, cutover_binary, legacy, new):
    """One fresh proxy under `tool` (callgrind or strace) serving `pgbench -S -M simple -c 1 -t n`; returns the report
    file. `kind`: "cutover" (route in `legacy`), "cutover_dual_async" (`dual-legacy`, async) or "pgbouncer"."""
    name = f"{tool}-{kind}-{n}"
    nopin = procs.Pinning(None)                  # the traced proxy is slow; let it use any CPU
    if kind in ("cutover", "cutover_dual_async"):
        phase = "legacy" if kind == "cutover" else "dual-legacy"
        proxy = services.Cutover(work, name, cutover_binary, legacy, new, phase, "async", nopin, 100)
    else:
        proxy = services.PgBouncer(work, name, legacy, "session", nopin, 100, 10)
    out = os.path.join(proxy.dir, f"{tool}.out")
    if tool == "callgrind":
        proxy.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
    else:
        proxy.start(["strace", "-f", "-c", "-o", out], signal_child=True)
    try:
        res = pgbench.run_pgbench(services.Endpoint(kind, kind, proxy.port), pin,
                                  ["-S", "-M", "simple", "-c", "1", "-t", str(n)], timeout=600)
    finally:
        proxy.stop(timeout=120)
    if res["exit_code"] != 0 or res["transactions"] != n:
        raise RuntimeError(f"{tool} run through {kind} failed: {res.get('stderr_tail', '')}")
    return out


def _top_functions(file1, file2, runs_apart, inclusive=False, only_object=None, count=20):
    """Per-query cost of each function: its cost in the longer run minus the shorter, over the extra queries."""
    f1, f2 = _per_function(file1, inclusive), _per_function(file2, inclusive)
    diff = {k: (f2.get(k, 0) - f1.get(k, 0)) / runs_apart for k in set(f1) | set(f2)
            if only_object is None or k.endswith(f"/{only_object}]")}
    top = sorted(diff.items(), key=lambda kv: -kv[1])[:count]
    names = [_short_object(x) for x in _demangle([k for k, _ in top])]
    return [dict(function=nm, instr_per_query=round(v, 1)) for nm, (_, v) in zip(names, top)]


def _strace_counts(path):
    """Calls per syscall from `strace -c` output (columns: % time, seconds, usecs/call, calls, [errors], syscall)."""
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) in (5, 6) and parts[3].isdigit() and parts[-1] != "total":
                counts[parts[-1]] = int(parts[3])
    return counts


def _strip_cpp_noise(name):
    """`swift::RefCounts<...>::doDecrementSlow<...>(...) const` -> `swift::RefCounts::doDecrementSlow`."""
    if "::" not in name:
        return name
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    return "".join(out).replace(" const", "").strip()


def _short_object(name):
    """`f [/tmp/x/cutover-stripped]` -> `f [cutover]`: object paths as basenames; C++ names without templates."""
    m = re.match(r"^(.*?)\s*(\[[^\]]*\])$", name)
    if m and "::" in m.group(1):
        name = f"{_strip_cpp_noise(m.group(1))} {m.group(2)}"
    return re.sub(r"\[(?:[^\]]*/)?([^/\]]+)\]$", lambda m: f"[{m.group(1).replace('-stripped', '')}]", name)


def callgrind(mode, pin, rec, work, cutover_binary, legacy, new, dual=False):
    """User-space instructions per select-only query: (I(n2) - I(n1)) / (n2 - n1), so start-up and login cancel out;
    the same difference per function gives the hot spots. Also syscalls per query from `strace -c`, same method.
    With `dual`, also Cutover in `dual-legacy` async (every statement mirrored, digested and compared).

    Valgrind 3.19 cannot read the DWARF 5 that Swift 6 emits, so Cutover runs from a copy with the debug
    sections stripped (symbols stay, so functions are still named)."""
    stripped = os.path.join(work, "cutover-stripped")
    shutil.copy(cutover_binary, stripped)
    subprocess.run(["strip", "--strip-debug", stripped], check=True)
    n1, n2 = mode.callgrind
    result = {}
    if dual:
        # The workloads before this wrote to legacy alone (direct, PgBouncer, the legacy phase): the two clusters'
        # rows differ, and the dual run would measure divergence records (parsing, logging) instead of the
        # mirroring path of a migration in step. Both get the same fresh tables first.
        for cluster in (legacy, new):
            cluster.reset_bench_tables(mode.scale, pin)
    for kind in ("cutover", "cutover_dual_async", "pgbouncer") if dual else ("cutover", "pgbouncer"):
        files = {n: _traced_proxy_run(kind, "callgrind", n, pin, work, stripped, legacy, new) for n in (n1, n2)}
        total = (_total_instructions(files[n2]) - _total_instructions(files[n1])) / (n2 - n1)
        result[kind] = dict(instr_per_query=round(total), runs=[n1, n2],
                            top=_top_functions(files[n1], files[n2], n2 - n1),
                            top_inclusive=[row for row in _top_functions(
                                files[n1], files[n2], n2 - n1, inclusive=True, count=40,
                                only_object=os.path.basename(stripped) if kind != "pgbouncer" else None)
                                if row["instr_per_query"] < 0.9 * total][:20])
        log(f"  callgrind {kind:18} {total:8.0f} instructions/query")
        if shutil.which("strace"):
            files = {n: _traced_proxy_run(kind, "strace", n, pin, work, cutover_binary, legacy, new) for n in (n1, n2)}
            c1, c2 = _strace_counts(files[n1]), _strace_counts(files[n2])
            per = {k: round((c2.get(k, 0) - c1.get(k, 0)) / (n2 - n1), 2) for k in set(c1) | set(c2)}
            per = {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.01}
            result[kind]["syscalls_per_query"] = per
            log(f"  strace    {kind:18} {sum(per.values()):8.2f} syscalls/query: "
                + ", ".join(f"{k} {v:g}" for k, v in list(per.items())[:5]))
    rec.note("callgrind", result)


# --- idle clients ------------------------------------------------------------------------------------

def _backend_count(cluster):
    p = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "-d", "postgres",
                        "-c", "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench'"],
                       capture_output=True, text=True)
    return int(p.stdout.strip() or 0)


def _wait_backends(cluster, at_most, timeout=120):
    """Waits until the cluster is back to `at_most` sessions on `bench` (the other proxies keep pooled ones)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _backend_count(cluster) > at_most:
        time.sleep(0.5)


def idle_clients(mode, pin, rec, work, cutover_binary, legacy, new, tls=None):
    """RSS growth of a fresh proxy per idle client. Each client logs in (trust) and runs `SELECT 1` once,
    so both proxies hold a server connection for it (session mode); then it stays idle.
    PgBouncer is also measured with clients that never ran a query (it then holds no server connection).
    With `tls` (certificate, key), both proxies are measured again with clients on TLS."""
    levels = mode.idle_levels
    top = max(levels)
    cases = [("cutover", True), ("pgbouncer", True), ("pgbouncer_login_only", False)]
    if tls:
        cases += [("cutover_tls", True), ("pgbouncer_tls", True)]
    result = {}
    baseline = _backend_count(legacy)
    for kind, query in cases:
        name = f"idle-{kind}"
        with_tls = tls if kind.endswith("_tls") else None
        if kind.startswith("cutover"):
            proxy = services.Cutover(work, name, cutover_binary, legacy, new, "legacy", "async", pin, top + 100, tls=with_tls)
        else:
            proxy = services.PgBouncer(work, name, legacy, "session", pin, top + 100, top + 10, tls=with_tls)
        proxy.start()
        sessions = IdleSessions(proxy.port, services.USER, services.DB, run_query=query, concurrency=16,
                                tls=with_tls is not None)
        per_level = {}

        async def measure():
            await sessions.grow_to(1)                  # lazy start-up work (server parameters, caches) first
            await asyncio.sleep(0.5)
            base = proxy.service.rss_kb()
            t0 = time.monotonic()
            for n in levels:
                await sessions.grow_to(n)
                await asyncio.sleep(1.0)
                rss = proxy.service.rss_kb()
                per_level[n] = dict(rss_kb=rss, base_rss_kb=base, kb_per_client=round((rss - base) / (n - 1), 2),
                                    open_s=round(time.monotonic() - t0, 1))
                log(f"  idle {kind:22} {n:5} clients: RSS {rss} kB, {per_level[n]['kb_per_client']:.2f} kB/client")
            await sessions.close()
        try:
            asyncio.run(measure())
        finally:
            proxy.stop()
            _wait_backends(legacy, baseline)
        result[kind] = per_level
    rec.note("idle_clients", result)


# --- flip under load -----------------------------------------------------------------------------------

def supports_phase_command(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True)
    return re.search(r"^\s+phase\b", out.stdout + out.stderr, re.MULTILINE) is not None


def _flip(proxy, phase):
    """Flips route `bench` the way an operator does: `cutover phase --admin-url ...`, else `SET PHASE` in psql."""
    admin = services.Endpoint("admin", "admin", proxy.port)
    url = f"host=127.0.0.1 port={proxy.port} dbname=cutover user={services.ADMIN_USER}"
    help_text = subprocess.run([proxy.binary, "phase", "--help"], capture_output=True, text=True).stdout
    attempts = []
    if "--admin-url" in help_text:
        attempts.append([proxy.binary, "phase", "--admin-url", url, services.DB, phase])
    attempts.append(admin.psql(f"SET PHASE {services.DB} TO {phase}", user=services.ADMIN_USER, db="cutover"))
    errors = []
    for argv in attempts:
        at = time.time()
        t0 = time.monotonic()
        p = subprocess.run(argv, capture_output=True, text=True, env=admin.env(), timeout=120)
        if p.returncode == 0:
            shown = ["cutover" if a == proxy.binary else a for a in argv]
            return dict(phase=phase, command=" ".join(shown), at_epoch=at, seconds=round(time.monotonic() - t0, 3),
                        output=(p.stdout + p.stderr).strip()[-300:])
        errors.append(f"{' '.join(argv[-4:])}: {(p.stderr or p.stdout).strip()[-200:]}")
    raise RuntimeError(f"cannot flip to {phase}: " + " | ".join(errors))


def admin_status(proxy):
    """`cutover status --stats` of the proxy (divergence and mirroring counters), if the command exists."""
    url = f"host=127.0.0.1 port={proxy.port} dbname=cutover user={services.ADMIN_USER}"
    p = subprocess.run([proxy.binary, "status", "--admin-url", url, "--stats"], capture_output=True, text=True, timeout=60)
    return (p.stdout + p.stderr).strip()


def _timeline(latencies_us, completions, start_epoch, step=0.5):
    """Per `step` seconds from the start of the load: transactions completed, their median and longest latency."""
    rel = completions - start_epoch
    rows = []
    for b in range(int(np.ceil(rel.max() / step)) if len(rel) else 0):
        sel = latencies_us[(rel >= b * step) & (rel < (b + 1) * step)]
        rows.append(dict(t=round(b * step, 2), tx=int(len(sel)),
                         p50_ms=round(float(np.median(sel)) / 1000, 2) if len(sel) else None,
                         max_ms=round(float(sel.max()) / 1000, 2) if len(sel) else None))
    return rows


def flip_under_load(mode, pin, rec, work, cutover_binary, legacy, new):
    """TPC-B at a fixed rate while the route goes legacy -> dual-legacy -> dual-new. With -R, a pause shows up
    as latency (pgbench counts from the scheduled start), so the longest transaction is the longest stall.

    The stall is taken over the transactions that finish before the run's last quarter second: when the
    duration is up, pgbench's clients disconnect, their backends exit on the same pinned CPU, and the few
    transactions still in flight wait for that (5-10 ms direct or through Cutover in `legacy`; more in
    `dual-new`, where each session also ends a follower). That tail is kept in `max_latency_incl_shutdown_ms`
    and shown in the report.

    Both clusters get fresh, identical pgbench tables first: the runbook backfills the new side before this
    flip, and the earlier workloads left both sides bloated and different (every differing row would be a
    divergence record written during the measurement)."""
    for cluster in (legacy, new):
        cluster.reset_bench_tables(mode.scale, pin)
    proxy = services.Cutover(work, "flip", cutover_binary, legacy, new, "legacy", "async", pin, 200).start()
    ep = services.Endpoint("cutover_flip", "cutover flip", proxy.port, proxy.service)
    d = mode.flip_duration
    outcome = {}

    def load():
        outcome["run"] = pgbench.run_pgbench(ep, pin, ["-M", "simple", "-c", "8", "-j", "1", "-R", str(mode.rate), "-T", str(d)],
                                             log_dir=work, tag="flip", timeout=d * 10 + 60)
    th = threading.Thread(target=load)
    t0 = time.monotonic()
    start_epoch = time.time()
    th.start()
    flips = []
    try:
        for phase, at in (("dual-legacy", d * 0.3), ("dual-new", d * 0.6)):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            flips.append(_flip(proxy, phase))
            log(f"  flipped to {phase} in {flips[-1]['seconds']:.3f} s")
        th.join()
        status = admin_status(proxy)
    finally:
        th.join()
        proxy.stop()
    run = outcome["run"]
    lat = run.pop("_latencies_us")
    done = run.pop("_completions")
    steady = done < start_epoch + d - 0.25
    result = dict(flips=flips, transactions=run["transactions"], failed=run["failed"], aborted_clients=run["aborted_clients"],
                  exit_code=run["exit_code"], errors=run["failed"] + run["aborted_clients"] + (1 if run["exit_code"] else 0),
                  max_stall_ms=round(float(lat[steady].max()) / 1000, 2) if steady.any() else None,
                  max_completion_gap_ms=round(pgbench.max_gap_s(done[steady]) * 1000, 2),
                  max_latency_incl_shutdown_ms=round(float(lat.max()) / 1000, 2) if len(lat) else None,
                  latency_us=run.get("latency_us"),
                  stderr_tail=run.get("stderr_tail"), status=status, timeline=_timeline(lat, done, start_epoch))
    for f in flips:
        # The longest transaction running during the flip or in the second after it returned: what the
        # flip itself cost, as opposed to a stall elsewhere in the run (the shared machine has those too).
        w0, w1 = f["at_epoch"] - 0.1, f["at_epoch"] + f["seconds"] + 1.0
        near = (done - lat / 1e6 < w1) & (done > w0)
        f["window_max_stall_ms"] = round(float(lat[near].max()) / 1000, 2) if near.any() else None
        f["at_s"] = round(f.pop("at_epoch") - start_epoch, 2)
    windows = [f["window_max_stall_ms"] for f in flips if f["window_max_stall_ms"] is not None]
    result["flip_window_max_stall_ms"] = max(windows) if windows else None
    rec.note("flip", result)
    log(f"  flip: errors={result['errors']} longest stall={result['max_stall_ms']} ms")

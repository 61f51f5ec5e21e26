"""Running pgbench against one endpoint and reading what it reports: its summary and per-transaction logs."""
import glob
import os
import re
import subprocess
import time

import numpy as np

from .services import DB, USER

PERCENTILES = (50, 90, 99, 99.9)


def run_pgbench(endpoint, pin, args, log_dir=None, tag=None, timeout=None):
    """Runs `pgbench -n ARGS` against `endpoint`, pinned like everything else, and returns a result dict.

    With `log_dir`, pgbench writes one line per transaction (`--log`) and the result carries the
    latencies in microseconds (for a `-R` run they include the schedule lag: what the client saw).
    The proxy's CPU time (utime + stime from /proc) is read before and after.
    """
    argv = ["pgbench", "-n", "-h", endpoint.host, "-p", str(endpoint.port), "-U", USER] + list(args)
    prefix = None
    if log_dir:
        prefix = os.path.join(log_dir, tag)
        for old in glob.glob(prefix + ".*"):
            os.remove(old)
        argv += ["--log", f"--log-prefix={prefix}"]
    argv.append(DB)
    cpu0 = endpoint.service.cpu_times() if endpoint.service else None
    t0 = time.monotonic()
    p = subprocess.run(pin.wrap(argv), capture_output=True, text=True, env=endpoint.env(), timeout=timeout)
    wall = time.monotonic() - t0
    cpu1 = endpoint.service.cpu_times() if endpoint.service else None
    result = parse_summary(p.stdout, p.stderr)
    result.update(exit_code=p.returncode, wall_s=round(wall, 3))
    if cpu0 is not None:
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        result.update(proxy_cpu_s=round(user + system, 3), proxy_user_s=round(user, 3), proxy_sys_s=round(system, 3))
        if result.get("transactions"):
            result["proxy_cpu_us_per_tx"] = round((user + system) * 1e6 / result["transactions"], 2)
    if p.returncode != 0 or result.get("aborted_clients"):
        result["stderr_tail"] = p.stderr[-600:]
    if prefix:
        result["_latencies_us"], result["_completions"] = read_transaction_logs(prefix)
        result["latency_us"] = percentiles(result["_latencies_us"])
    return result


def parse_summary(stdout, stderr):
    r = {}
    m = re.search(r"number of transactions actually processed: (\d+)", stdout)
    r["transactions"] = int(m.group(1)) if m else 0
    m = re.search(r"number of failed transactions: (\d+)", stdout)
    r["failed"] = int(m.group(1)) if m else 0
    # With -C, pgbench counts the reconnections in: "(including reconnection times)".
    m = re.search(r"tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)", stdout)
    r["tps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"latency average = ([\d.]+) ms", stdout)
    if m:
        r["latency_avg_ms"] = float(m.group(1))
    r["aborted_clients"] = len(re.findall(r"client \d+ aborted", stderr))
    return r


def read_transaction_logs(prefix):
    """Latencies (µs) and completion times (s since the epoch) of every successful transaction in pgbench's logs.

    Line format: client_id transaction_no time script_no time_epoch time_us [schedule_lag ...];
    `time` is not a number for failed or skipped transactions, and those lines are left out.
    """
    lat, done = [], []
    for path in sorted(glob.glob(prefix + ".*")):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or not parts[2].isdigit():
                    continue
                lat.append(int(parts[2]))
                done.append(int(parts[4]) + int(parts[5]) / 1e6)
        os.remove(path)
    return np.array(lat, dtype=np.float64), np.array(done, dtype=np.float64)


def percentiles(latencies_us):
    if len(latencies_us) == 0:
        return {}
    values = np.percentile(latencies_us, PERCENTILES)
    out = {f"p{p:g}": round(float(v), 1) for p, v in zip(PERCENTILES, values)}
    out.update(max=round(float(latencies_us.max()), 1), n=int(len(latencies_us)))
    return out


def copy_run(endpoint, pin, statement, input_path=None):
    """Times one COPY inside psql (`\\timing`), so connection set-up is not counted. Returns seconds."""
    argv = endpoint.psql("\\timing on", statement) + ["-o", "/dev/null"]
    stdin = open(input_path, "rb") if input_path else subprocess.DEVNULL
    cpu0 = endpoint.service.cpu_seconds() if endpoint.service else None
    try:
        p = subprocess.run(pin.wrap(argv), stdin=stdin, capture_output=True, text=True, env=endpoint.env())
    finally:
        if input_path:
            stdin.close()
    cpu1 = endpoint.service.cpu_seconds() if endpoint.service else None
    m = re.search(r"Time: ([\d.]+) ms", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"COPY through {endpoint.key} failed: {p.stderr.strip()[-400:]}")
    return float(m.group(1)) / 1000, (None if cpu0 is None else cpu1 - cpu0)


def max_gap_s(completions):
    """The longest time between two consecutive transaction completions (any client)."""
    if len(completions) < 2:
        return 0.0
    c = np.sort(completions)
    return float(np.diff(c).max())


#!/usr/bin/env python3
"""What deterministic mirroring costs: INSERTs into a table shaped like the services' own (bigserial id,
created_at DEFAULT now(), token DEFAULT gen_random_uuid(), updated_at = now() in an UPDATE), through Cutover in
`legacy`, `dual-legacy` async and `dual-legacy` sync, with the binary under test and (--before) an earlier one.

  benchmarks/mirrored_writes.py AFTER_BINARY [--before BEFORE_BINARY] [--rounds 3] [--seconds 5] [--json FILE]

Per binary and configuration, rounds interleaved (legacy, async, sync, then the next binary, round after round):
pgbench -c 8 -j 2 -M simple with the script below, medians of the TPS, and each dual configuration's ratio to
`legacy` of the same binary. After each dual run, both sides' rows are compared (id, created_at, token,
updated_at): the earlier binary stores different values on the follower, this one must not.
Both are PostgreSQL clusters of its own (benchmarks/harness/services.py); the machine is shared, so read the
ratios, not the absolute TPS.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import pgbench, procs, services  # noqa: E402

TABLE = """
DROP TABLE IF EXISTS bench_items;
CREATE TABLE bench_items (id bigserial PRIMARY KEY, owner int NOT NULL, name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), token uuid NOT NULL DEFAULT gen_random_uuid(),
    status text NOT NULL DEFAULT 'new', updated_at timestamptz);
"""

# Each client updates only its own rows (pgbench's :client_id), so the order of two clients' writes cannot matter.
SCRIPT = """INSERT INTO bench_items (owner, name) VALUES (:client_id, 'item');
UPDATE bench_items SET status = 'seen', updated_at = now() WHERE id = (SELECT max(id) FROM bench_items WHERE owner = :client_id);
"""

CONFIGS = (("legacy", "async"), ("dual-legacy", "async"), ("dual-legacy", "sync"))


class Proxy(services.Cutover):
    """A Cutover started the way its version takes the config (`--config` since 2026-12-08, positional before)."""

    def __init__(self, *args, positional=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.positional = positional

    def start(self, wrapper=(), signal_child=False):
        if not self.positional:
            return super().start(wrapper, signal_child)
        argv = list(wrapper) + [self.binary, "serve", self.config, "--log-level", "warning"]
        self.service = procs.Service(self.name, self.pin.wrap(argv), os.path.join(self.dir, "cutover.log"), cwd=self.dir)
        procs.wait_for_port(self.port, self.service.proc, timeout=60, what=self.name)
        return self


def takes_config_option(binary):
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    return "--config" in out


def reset(clusters):
    for c in clusters:
        ep = c.endpoint("direct", "direct")
        procs.run(ep.psql(TABLE), log=os.path.join(c.dir, "setup.log"), env=ep.env())


def differing_rows(legacy, new):
    query = "SELECT id, created_at, token, updated_at FROM bench_items ORDER BY id"
    rows = []
    for c in (legacy, new):
        ep = c.endpoint("direct", "direct")
        out = subprocess.run(ep.psql(query) + ["-A", "-t"], capture_output=True, text=True, env=ep.env(), check=True).stdout
        rows.append(out.splitlines())
    a, b = rows
    return sum(1 for x, y in zip(a, b) if x != y) + abs(len(a) - len(b)), len(a)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("after")
    p.add_argument("--before")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    # Absolute: each proxy runs in a directory of its own.
    binaries = [("after", os.path.abspath(args.after))] + ([("before", os.path.abspath(args.before))] if args.before else [])
    work = tempfile.mkdtemp(prefix="cutover-mirrored-writes-")
    os.chmod(work, 0o755)
    script = os.path.join(work, "writes.sql")
    with open(script, "w") as f:
        f.write(SCRIPT)
    os.chmod(script, 0o644)
    pin = procs.Pinning(None)
    tps = {}
    differing = {}
    try:
        clusters = []
        for name in ("legacy", "new"):
            c = services.PostgresCluster(work, name, pin, 60)
            c.init()
            c.start()
            c.create_bench_db(1, pin)
            clusters.append(c)
        for r in range(args.rounds):
            for label, binary in binaries:
                for phase, mirror in CONFIGS:
                    reset(clusters)
                    key = f"{label}_{phase}_{mirror}" if phase != "legacy" else f"{label}_legacy"
                    proxy = Proxy(work, f"{key}-{r}", binary, clusters[0], clusters[1], phase, mirror, pin, 40,
                                  positional=not takes_config_option(binary)).start()
                    res = pgbench.run_pgbench(services.Endpoint("cutover", "cutover", proxy.port), pin,
                                              ["-M", "simple", "-c", "8", "-j", "2", "-T", str(args.seconds), "-f", script])
                    proxy.stop(60)
                    tps.setdefault(key, []).append(res["tps"])
                    if phase != "legacy":
                        n, total = differing_rows(*clusters)
                        differing.setdefault(key, []).append((n, total))
                    print(f"round {r + 1} {key}: {res['tps']:.0f} tps, failed {res.get('failed', 0)}"
                          + (f", {n} of {total} rows differ" if phase != "legacy" else ""), flush=True)
    finally:
        procs.stop_all()
    summary = {}
    for label, _ in binaries:
        base = statistics.median(tps[f"{label}_legacy"])
        summary[f"tps_{label}_legacy"] = round(base)
        for phase, mirror in CONFIGS[1:]:
            key = f"{label}_{phase}_{mirror}"
            summary[f"tps_{label}_dual_{mirror}"] = round(statistics.median(tps[key]))
            summary[f"tps_{label}_dual_{mirror}_vs_legacy"] = round(statistics.median(tps[key]) / base, 2)
            summary[f"differing_rows_{label}_dual_{mirror}"] = max(n for n, _ in differing[key])
    print("summary: " + " ".join(f"{k}={v}" for k, v in summary.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tps": tps, "differing": differing, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()

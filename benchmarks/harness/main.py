"""Entry point: set everything up, run the suites, write results/<timestamp>-<mode>/ and print the summary line."""
import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import procs, report, services, suites

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ("throughput", "tls", "unix", "copy", "callgrind", "idle", "flip")


@dataclass
class Mode:
    name: str
    rounds: int
    duration: int                 # seconds per pgbench run
    scale: int                    # pgbench scale (100k accounts rows each)
    rate: int                     # fixed-rate run, transactions per second
    copy_repeat: int
    callgrind: tuple
    idle_levels: tuple
    flip_duration: int


MODES = {
    "quick": Mode("quick", rounds=2, duration=2, scale=5, rate=300, copy_repeat=2, callgrind=(1000, 6000),
                  idle_levels=(1000,), flip_duration=10),
    "full": Mode("full", rounds=4, duration=8, scale=10, rate=400, copy_repeat=3, callgrind=(2000, 12000),
                 idle_levels=(1000, 5000), flip_duration=30),
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="benchmarks/run.sh", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short runs, 2 rounds, 1k idle clients: under 5 minutes")
    p.add_argument("--binary", required=True, help="the release cutover executable")
    p.add_argument("--rounds", type=int, help="override the mode's number of rounds")
    p.add_argument("--duration", type=int, help="override the seconds per pgbench run")
    p.add_argument("--cpu", type=int, default=os.cpu_count() - 1, help="CPU to pin every process to (default: the last)")
    p.add_argument("--no-pin", action="store_true", help="do not pin (ratios then include cross-CPU wake-ups)")
    p.add_argument("--skip", default="", help=f"comma-separated suites to skip: {','.join(SUITES)}")
    p.add_argument("--keep", action="store_true", help="keep the temporary clusters' directory")
    p.add_argument("--command", default="benchmarks/run.sh", help=argparse.SUPPRESS)
    p.add_argument("--commit", default=None, help=argparse.SUPPRESS)
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="results root folder")
    return p.parse_args(argv)


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} × {model}, {mem_gb:.0f} GB RAM, Linux {platform.release()}, shared with other work"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = MODES["quick" if args.quick else "full"]
    if args.rounds:
        mode.rounds = args.rounds
    if args.duration:
        mode.duration = args.duration
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SUITES)
    if unknown:
        raise SystemExit(f"unknown suite(s) to skip: {', '.join(sorted(unknown))}")
    pin = procs.Pinning(None if args.no_pin else args.cpu)
    binary = os.path.abspath(args.binary)
    dual = suites.supports_phase_command(binary)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out_dir = os.path.join(args.results, f"{stamp}-{mode.name}")
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cutover-bench-")
    os.chmod(work, 0o755)
    rec = suites.Recorder(os.path.join(out_dir, "results.json"))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    suites.log(f"mode {mode.name}: {mode.rounds} rounds × {mode.duration} s, scale {mode.scale}, "
               f"{'pinned to CPU ' + str(pin.cpu) if pin.cpu is not None else 'not pinned'}, dual phases: "
               f"{'yes' if dual else 'not supported by this cutover (no phase subcommand): skipped'}; work dir {work}")
    targets = []
    meta = {}
    try:
        clusters = {
            "legacy": services.PostgresCluster(work, "legacy", pin, max(mode.idle_levels) + 200),
            "new": services.PostgresCluster(work, "new", pin, 300),
        }
        for c in clusters.values():
            c.init()
            c.start()
            c.create_bench_db(mode.scale, pin)
        legacy, new = clusters["legacy"], clusters["new"]
        suites.log(f"clusters up: legacy :{legacy.port}, new :{new.port}")
        pgb_s = services.PgBouncer(work, "pgbouncer-session", legacy, "session", pin, 1000, 100).start()
        pgb_t = services.PgBouncer(work, "pgbouncer-transaction", legacy, "transaction", pin, 1000, 100).start()
        co = services.Cutover(work, "cutover-legacy", binary, legacy, new, "legacy", "async", pin, 1000).start()
        targets = [legacy.endpoint(report.DIRECT, "direct"),
                   services.Endpoint(report.PGBOUNCER, "PgBouncer session", pgb_s.port, pgb_s.service),
                   services.Endpoint("pgbouncer_txn", "PgBouncer transaction", pgb_t.port, pgb_t.service, prepared_ok=False),
                   services.Endpoint(report.CUTOVER, "Cutover legacy", co.port, co.service)]
        tls = services.make_certificate(work) if "tls" not in skip else None
        if tls and "throughput" not in skip:
            pgb_tls = services.PgBouncer(work, "pgbouncer-tls", legacy, "session", pin, 1000, 100, tls=tls).start()
            co_tls = services.Cutover(work, "cutover-tls", binary, legacy, new, "legacy", "async", pin, 1000, tls=tls).start()
            targets += [services.Endpoint(report.PGBOUNCER_TLS, "PgBouncer session, TLS", pgb_tls.port, pgb_tls.service,
                                          sslmode="require"),
                        services.Endpoint(report.CUTOVER_TLS, "Cutover legacy, TLS", co_tls.port, co_tls.service, sslmode="require")]
        if "unix" not in skip and "throughput" not in skip:
            pgb_unix = services.PgBouncer(work, "pgbouncer-unix", legacy, "session", pin, 1000, 100, unix=True).start()
            co_unix = services.Cutover(work, "cutover-unix", binary, legacy, new, "legacy", "async", pin, 1000, unix=True).start()
            targets += [legacy.endpoint(report.DIRECT_UNIX, "direct, Unix socket", unix=True),
                        services.Endpoint(report.PGBOUNCER_UNIX, "PgBouncer session, Unix sockets", pgb_unix.port, pgb_unix.service,
                                          host=pgb_unix.dir),
                        services.Endpoint(report.CUTOVER_UNIX, "Cutover legacy, Unix sockets", co_unix.port, co_unix.service,
                                          host=co_unix.dir)]
        if "throughput" not in skip:
            co_pool = services.Cutover(work, "cutover-pooled", binary, legacy, new, "legacy", "async", pin, 1000,
                                       extra_server="backend_pool_size = 16").start()
            targets.append(services.Endpoint(suites.CUTOVER_POOLED, "Cutover legacy, backend_pool_size = 16", co_pool.port, co_pool.service))
        duals = {}
        if dual:
            for m in ("async", "sync"):
                d = services.Cutover(work, f"cutover-dual-{m}", binary, legacy, new, "dual-legacy", m, pin, 1000).start()
                duals[f"cutover_dual_{m}"] = d
                targets.append(services.Endpoint(f"cutover_dual_{m}", f"Cutover dual-legacy {m}", d.port, d.service))
            if "throughput" not in skip:
                dp = services.Cutover(work, "cutover-dual-pooled", binary, legacy, new, "dual-legacy", "async", pin, 1000,
                                      extra_server="backend_pool_size = 16").start()
                targets.append(services.Endpoint(suites.CUTOVER_DUAL_POOLED, "Cutover dual-legacy async, backend_pool_size = 16",
                                                 dp.port, dp.service))
                duals[suites.CUTOVER_DUAL_POOLED] = dp  # its divergences (pooled followers) are in dual_status too

        data_path = os.path.join(work, "accounts.copy")
        direct = targets[0]
        with open(data_path, "wb") as f:
            procs.run(direct.psql("COPY pgbench_accounts TO STDOUT"), stdout=f, env=direct.env())
        data_bytes = os.path.getsize(data_path)
        meta.update(mode=mode.name, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), command=args.command,
                    commit=args.commit or "unknown", machine=machine(),
                    pinning=f"every process (servers, proxies, pgbench) on CPU {pin.cpu} with taskset" if pin.cpu is not None else "none",
                    rounds=mode.rounds, duration=mode.duration, scale=mode.scale, dual=dual, copy_mb=data_bytes / 1e6,
                    copy_repeat=mode.copy_repeat, mode_settings=asdict(mode),
                    auth="clients → proxies: trust (both proxies); proxies and direct clients → PostgreSQL: SCRAM-SHA-256")

        suites.log("warm-up")
        suites.warm_up(targets, pin)
        if "throughput" not in skip:
            suites.throughput_rounds(mode, targets, pin, rec, work, follower_cluster=new)
            # What the dual-phase proxies mirrored over all the workloads (statements vs mirrored, divergences).
            rec.note("dual_status", {key: suites.admin_status(d) for key, d in duals.items()})
            save(rec, meta, out_dir, targets)
        if "copy" not in skip:
            suites.log("COPY")
            copy_targets = [t for t in targets if t.key not in ("pgbouncer_txn", suites.CUTOVER_POOLED, suites.CUTOVER_DUAL_POOLED) and not t.is_unix]
            suites.copy_rounds(mode, copy_targets, pin, rec, clusters, data_path, data_bytes)
            save(rec, meta, out_dir, targets)
        if "callgrind" not in skip:
            suites.log("callgrind")
            suites.callgrind(mode, pin, rec, work, binary, legacy, new, dual=dual)
            save(rec, meta, out_dir, targets)
        if "idle" not in skip:
            suites.log("idle clients")
            suites.idle_clients(mode, pin, rec, work, binary, legacy, new, tls=tls)
        if "flip" not in skip and dual:
            suites.log("flip under load")
            suites.flip_under_load(mode, pin, rec, work, binary, legacy, new)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - started)
    analysis, s, checks = save(rec, meta, out_dir, targets)
    text = analysis.markdown(s, checks)
    latest = os.path.join(args.results, f"latest-{mode.name}")
    shutil.rmtree(latest, ignore_errors=True)
    shutil.copytree(out_dir, latest)
    print(text)
    suites.log(f"done in {meta['elapsed_s']} s; results in {os.path.relpath(out_dir)} (copied to {os.path.relpath(latest)})")
    print(report.summary_line(s, checks))


def save(rec, meta, out_dir, targets):
    """Writes results.json, results.md and latency.svg from what has been measured so far."""
    loads = [r["load1"] for r in rec.runs] or [procs.load_average()]
    meta.update(load_median=float(np.median(loads)), load_min=min(loads), load_max=max(loads))
    analysis = report.Analysis(rec.runs, rec.extra, rec.pooled, targets, meta)
    s = analysis.summary()
    checks = analysis.targets_check(s)
    pooled = {f"{wl}/{t}": analysis.pooled_percentiles(wl, t) for wl, t in rec.pooled}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(meta=meta, summary=s, targets=checks, runs=rec.runs, pooled_latency_us=pooled, **rec.extra),
                  f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(analysis.markdown(s, checks))
    svg = analysis.svg()
    if svg:
        with open(os.path.join(out_dir, "latency.svg"), "w") as f:
            f.write(svg)
    return analysis, s, checks


if __name__ == "__main__":
    main()

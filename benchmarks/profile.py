#!/usr/bin/env python3
"""Where Cutover's user-space instructions per query go, finer than the harness's per-function table.

Runs `pgbench -S -M simple -c 1` through a fresh Cutover under `callgrind --dump-instr=yes` for two run lengths
(on two throwaway clusters of its own) and reports the per-query difference, so start-up and login cancel:

  benchmarks/profile.py BINARY lines [--phase dual-legacy] [--top N]   self cost per source line (inlined code
                                                                          counts where it was inlined)
  benchmarks/profile.py BINARY calls [FUNCTION ...]                     call sites of FUNCTION (default:
                                                                          swift_retain, swift_release) with the
                                                                          instructions before each call
  benchmarks/profile.py BINARY annotate SYMBOL_SUBSTRING                disassembly of one function with the
                                                                          per-query count of each instruction

With --connect, every query comes on a new connection (pgbench -C) through a proxy with backend_pool_size: the
cost of a session's start and end with a pooled backend (64 810 → 23 368 own instructions per session in the
commit that added it: the pool key's hashing, the per-session logger, startup parameter lookups).

BINARY is a release build with debug info (`swift build -c release`: .build/release/cutover); callgrind runs a
copy stripped of it (valgrind 3.19 cannot read Swift's DWARF 5), and addresses are mapped back with objdump.
This is how the hot path went from 3 456 to 2 546 instructions per query (docs/benchmarks.md).
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import pgbench, procs, services  # noqa: E402

RUNS = (1000, 3000)


def profile(binary, phase, connect=False, pool=4):
    """The two callgrind output files, keyed by run length."""
    work = tempfile.mkdtemp(prefix="cutover-profile-")
    os.chmod(work, 0o755)
    pin = procs.Pinning(None)
    stripped = os.path.join(work, "cutover-stripped")
    shutil.copy(binary, stripped)
    subprocess.run(["strip", "--strip-debug", stripped], check=True)
    outs = {}
    try:
        clusters = {}
        for name in ("legacy", "new"):
            c = services.PostgresCluster(work, name, pin, 50)
            c.init()
            c.start()
            c.create_bench_db(1, pin)
            clusters[name] = c
        for n in RUNS:
            proxy = services.Cutover(work, f"cutover-{n}", stripped, clusters["legacy"], clusters["new"], phase, "async", pin, 10,
                                     extra_server=f"backend_pool_size = {pool}" if connect else "")
            out = os.path.join(work, f"callgrind-{n}.out")
            proxy.start(["valgrind", "--tool=callgrind", "--dump-instr=yes", f"--callgrind-out-file={out}"])
            res = pgbench.run_pgbench(services.Endpoint("cutover", "cutover", proxy.port), pin,
                                      ["-S", "-M", "simple", "-c", "1", "-t", str(n)] + (["-C"] if connect else []), timeout=1200)
            proxy.stop(120)
            if res["transactions"] != n:
                raise SystemExit(f"pgbench through the proxy failed: {res.get('stderr_tail', '')}")
            outs[n] = out
    finally:
        procs.stop_all()
    return work, outs


def parse(path, callees):
    """Self cost per instruction address of the stripped binary, and (function, call address) -> (calls,
    inclusive cost) for calls to `callees`. Follows callgrind's name compression and relative positions."""
    self_cost, calls, cost = collections.Counter(), collections.Counter(), collections.Counter()
    names, objects = {}, {}
    fn = cfn = obj = None
    last = 0
    pending = None
    with open(path) as f:
        for line in f:
            if line.startswith(("ob=", "cob=", "fn=", "cfn=")):
                key, value = line.strip().split("=", 1)
                table = objects if key.endswith("ob") else names   # callee and caller share each table
                m = re.match(r"\((\d+)\)(?: (.*))?", value)
                if m.group(2):
                    table[m.group(1)] = m.group(2)
                if key == "ob":
                    obj = table[m.group(1)]
                elif key == "fn":
                    fn = table[m.group(1)]
                elif key == "cfn":
                    cfn = table[m.group(1)]
            elif line.startswith("calls="):
                pending = int(line.split()[0][6:])
            elif line[:1] in "0123456789+-*":
                tok = line.split()[0]
                if tok[0] in "+-":
                    last += int(tok, 0)
                elif tok != "*":
                    last = int(tok, 0)
                value = int(line.split()[-1])
                if pending is not None:
                    if cfn in callees:
                        calls[(fn, last)] += pending
                        cost[(fn, last)] += value
                    pending = None
                elif obj and obj.endswith("cutover-stripped"):
                    self_cost[last] += value
    return self_cost, calls, cost


def per_query(a, b):
    span = RUNS[1] - RUNS[0]
    return {k: (b.get(k, 0) - a.get(k, 0)) / span for k in set(a) | set(b)}


def disassembly(binary):
    """objdump lines: (address or None, text, location), location being the source line or inlined function."""
    out = subprocess.run(["objdump", "-d", "-l", "--no-show-raw-insn", binary], capture_output=True, text=True).stdout
    loc = None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:", line)
        if m:
            loc = "fn " + m.group(1)
            yield None, line, loc
            continue
        if line.startswith("/"):
            loc = re.sub(r"^.*/Sources/", "", line.strip()).split(" ")[0]
            continue
        if line.endswith("():"):
            loc = "inlined " + line[:-3]
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s*(.*)", line)
        if m:
            yield int(m.group(1), 16), m.group(2), loc


def demangle(names):
    p = subprocess.run(["swift-demangle", "--simplified"], input="\n".join(names), capture_output=True, text=True)
    out = p.stdout.split("\n")
    return out if p.returncode == 0 and len(out) >= len(names) else names


def readable(loc):
    if loc and loc.startswith(("fn ", "inlined ")):
        kind, name = loc.split(" ", 1)
        return f"{kind} {demangle([name])[0][:110]}"
    return loc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("mode", choices=("lines", "calls", "annotate"))
    p.add_argument("names", nargs="*", help="calls: the callees; annotate: a substring of the function's symbol")
    p.add_argument("--phase", default="legacy", choices=("legacy", "dual-legacy"))
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--connect", action="store_true",
                   help="a new connection per query (pgbench -C) through a proxy with backend_pool_size: the session set-up cost")
    p.add_argument("--pool", type=int, default=4, help="with --connect: backend_pool_size (0: a backend login per session)")
    args = p.parse_args()
    binary = os.path.abspath(args.binary)
    callees = set(args.names or ["swift_retain", "swift_release"]) if args.mode == "calls" else set()
    work, outs = profile(binary, args.phase, args.connect, args.pool)
    try:
        (s1, c1, k1), (s2, c2, k2) = (parse(outs[n], callees) for n in RUNS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    self_cost = per_query(s1, s2)
    print(f"Cutover's own code: {sum(self_cost.values()):.0f} instructions per query (phase {args.phase})")
    if args.mode == "lines":
        by_loc = collections.Counter()
        for addr, _, loc in disassembly(binary):
            if addr is not None and self_cost.get(addr):
                by_loc[loc] += self_cost[addr]
        for loc, c in by_loc.most_common(args.top):
            print(f"  {c:7.1f}  {readable(loc)}")
    elif args.mode == "calls":
        calls, cost = per_query(c1, c2), per_query(k1, k2)
        sites = sorted((k for k, v in calls.items() if v >= 0.05), key=lambda k: -cost[k])
        print(f"{sum(calls[k] for k in sites):.2f} calls per query to {', '.join(sorted(callees))}, "
              f"{sum(cost[k] for k in sites):.0f} instructions in them")
        wanted = {addr for _, addr in sites}
        context, recent = {}, collections.deque(maxlen=4)
        for addr, text, loc in disassembly(binary):
            recent.append((loc, text[:70]))
            if addr in wanted:
                context[addr] = list(recent)
        for fn, addr in sites:
            print(f"  {calls[(fn, addr)]:5.2f} calls {cost[(fn, addr)]:6.1f} instr at {addr:#x} in {demangle([fn])[0][:90]}")
            for loc, text in context.get(addr, []):
                print(f"        {readable(loc)} | {text}")
    else:
        if not args.names:
            raise SystemExit("annotate needs a substring of the function's symbol")
        on = False
        for addr, text, loc in disassembly(binary):
            if addr is None:
                on = args.names[0] in text
                continue
            if on:
                print(f"{self_cost.get(addr, 0):6.1f}  {addr:x}  {text[:90]}")


if __name__ == "__main__":
    main()

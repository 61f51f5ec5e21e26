"""From raw runs to what a reader wants: per-pair ratios, percentiles, targets, markdown, JSON, an SVG plot."""
import math

import numpy as np

from .pgbench import PERCENTILES, percentiles

CUTOVER = "cutover_legacy"
PGBOUNCER = "pgbouncer_session"
DIRECT = "direct"
CUTOVER_TLS = "cutover_tls"
PGBOUNCER_TLS = "pgbouncer_tls"
DIRECT_UNIX = "direct_unix"
PGBOUNCER_UNIX = "pgbouncer_unix"
CUTOVER_UNIX = "cutover_unix"
SHORT = {"select_simple": "simple", "select_extended": "extended", "select_prepared": "prepared", "tpcb": "tpcb"}


def spread(values):
    """median [min–max] of a list, as a dict (None when empty)."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return dict(median=float(np.median(v)), min=float(min(v)), max=float(max(v)), n=len(v))


def fmt(s, digits=2, unit=""):
    if s is None:
        return "–"
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


class Analysis:
    def __init__(self, runs, extra, pooled, targets, meta):
        self.runs, self.extra, self.pooled, self.targets, self.meta = runs, extra, pooled, targets, meta
        self.by = {}
        for r in runs:
            self.by.setdefault((r["workload"], r["target"]), {})[r["round"]] = r

    def values(self, workload, target, field):
        return [r.get(field) for _, r in sorted(self.by.get((workload, target), {}).items())]

    def pair(self, workload, a, b, field, op="ratio", sub=None):
        """Per-round a/b (or a-b) of `field` (or of latency percentile `sub`), only for rounds where both ran."""
        ra, rb = self.by.get((workload, a), {}), self.by.get((workload, b), {})
        out = []
        for rnd in sorted(set(ra) & set(rb)):
            x, y = ra[rnd].get(field), rb[rnd].get(field)
            if sub is not None:
                x, y = (x or {}).get(sub), (y or {}).get(sub)
            if x is None or y is None or (op == "ratio" and not y):
                continue
            out.append(x / y if op == "ratio" else x - y)
        return spread(out)

    def workloads(self, prefix=""):
        seen = []
        for r in self.runs:
            if r["workload"].startswith(prefix) and r["workload"] not in seen:
                seen.append(r["workload"])
        return seen

    def user_sys(self, workload, target):
        user = spread(self.values(workload, target, "proxy_user_us_per_query"))
        system = spread(self.values(workload, target, "proxy_sys_us_per_query"))
        return f"{user['median']:.1f} / {system['median']:.1f}" if user and system else "–"

    def targets_of(self, workload):
        return [t for t in self.targets if (workload, t.key) in self.by]

    # --- headline numbers -------------------------------------------------------------------------------

    def summary(self):
        s = {}

        def put(key, stat, digits=2):
            if stat is not None:
                s[key] = round(stat["median"], digits)
        for wl, short in SHORT.items():
            put(f"tps_vs_pgbouncer_{short}", self.pair(wl, CUTOVER, PGBOUNCER, "tps"))
            put(f"tps_vs_direct_{short}", self.pair(wl, CUTOVER, DIRECT, "tps"))
        cg = self.extra.get("callgrind")
        if cg:
            s["instr_per_query"] = cg["cutover"]["instr_per_query"]
            s["pgbouncer_instr_per_query"] = cg["pgbouncer"]["instr_per_query"]
            s["instr_vs_pgbouncer"] = round(cg["cutover"]["instr_per_query"] / cg["pgbouncer"]["instr_per_query"], 2)
            if "cutover_dual_async" in cg:
                s["instr_per_query_dual_async"] = cg["cutover_dual_async"]["instr_per_query"]
        put("cpu_us_per_query", spread(self.values("select_simple", CUTOVER, "proxy_cpu_us_per_query")), 1)
        put("pgbouncer_cpu_us_per_query", spread(self.values("select_simple", PGBOUNCER, "proxy_cpu_us_per_query")), 1)
        put("tps_vs_pgbouncer_unix", self.pair("select_simple_unix", CUTOVER_UNIX, PGBOUNCER_UNIX, "tps"))
        put("tps_vs_direct_unix", self.pair("select_simple_unix", CUTOVER_UNIX, DIRECT_UNIX, "tps"))
        put("cpu_us_per_query_unix", spread(self.values("select_simple_unix", CUTOVER_UNIX, "proxy_cpu_us_per_query")), 1)
        put("pgbouncer_cpu_us_per_query_unix", spread(self.values("select_simple_unix", PGBOUNCER_UNIX, "proxy_cpu_us_per_query")), 1)
        put("tps_vs_pgbouncer_tls", self.pair("select_simple_tls", CUTOVER_TLS, PGBOUNCER_TLS, "tps"))
        put("cpu_us_per_query_tls", spread(self.values("select_simple_tls", CUTOVER_TLS, "proxy_cpu_us_per_query")), 1)
        put("pgbouncer_cpu_us_per_query_tls", spread(self.values("select_simple_tls", PGBOUNCER_TLS, "proxy_cpu_us_per_query")), 1)
        put("tps_vs_pgbouncer_connect", self.pair("connect_select", "cutover_pooled", PGBOUNCER, "tps"))
        put("tps_vs_direct_connect", self.pair("connect_select", "cutover_pooled", DIRECT, "tps"))
        put("tps_pooled_vs_unpooled_connect", self.pair("connect_select", "cutover_pooled", CUTOVER, "tps"))
        put("tps_dual_pooled_vs_unpooled_connect", self.pair("connect_select", "cutover_dual_pooled", "cutover_dual_async", "tps"))
        put("tps_dual_pooled_vs_legacy_pooled_connect", self.pair("connect_select", "cutover_dual_pooled", "cutover_pooled", "tps"))
        put("added_p50_us", self.pair("latency_c1", CUTOVER, DIRECT, "latency_us", op="diff", sub="p50"), 1)
        put("pgbouncer_added_p50_us", self.pair("latency_c1", PGBOUNCER, DIRECT, "latency_us", op="diff", sub="p50"), 1)
        for dual in ("async", "sync"):
            put(f"p99_dual_{dual}_vs_legacy", self.pair("fixed_rate", f"cutover_dual_{dual}", CUTOVER, "latency_us", sub="p99"))
            put(f"p99_dual_{dual}_vs_legacy_follower_apart",
                self.pair("fixed_rate_follower_apart", f"cutover_dual_{dual}", CUTOVER, "latency_us", sub="p99"))
            put(f"tps_dual_{dual}_vs_legacy_tpcb", self.pair("tpcb", f"cutover_dual_{dual}", CUTOVER, "tps"))
        flip = self.extra.get("flip")
        if flip:
            s["flip_max_stall_ms"] = flip["max_stall_ms"]
            if flip.get("flip_window_max_stall_ms") is not None:
                s["flip_window_max_stall_ms"] = flip["flip_window_max_stall_ms"]
            s["flip_errors"] = flip["errors"]
        idle = self.extra.get("idle_clients")
        if idle:
            for suffix in ("", "_tls"):
                for n, c in idle.get(f"cutover{suffix}", {}).items():
                    label = (f"{int(n) // 1000}k" if int(n) % 1000 == 0 else str(n)) + suffix
                    s[f"rss_kb_per_idle_client_{label}"] = c["kb_per_client"]
                    pb = idle.get(f"pgbouncer{suffix}", {}).get(n)
                    if pb and pb["kb_per_client"] > 0:
                        s[f"rss_vs_pgbouncer_{label}"] = round(c["kb_per_client"] / pb["kb_per_client"], 2)
        for direction in ("out", "in"):
            put(f"copy_{direction}_vs_direct", self.pair(f"copy_{direction}", CUTOVER, DIRECT, "mb_per_s"))
        return s

    def targets_check(self, s):
        """The issue's targets, each with the measured value and whether it was met (only those measured)."""
        checks = []

        def check(name, key, limit, at_least):
            if key in s:
                ok = s[key] >= limit if at_least else s[key] <= limit
                checks.append(dict(target=name, key=key, value=s[key], limit=limit, met=ok))
        for short in ("simple", "extended", "prepared"):
            check(f"select-only 8 clients ({short}) ≥ 1.2× PgBouncer session TPS", f"tps_vs_pgbouncer_{short}", 1.2, True)
        check("instructions per query ≤ 0.6× PgBouncer's", "instr_vs_pgbouncer", 0.6, False)
        check("proxy CPU per query ≤ 15 µs", "cpu_us_per_query", 15, False)
        check("single-client added p50 ≤ 25 µs", "added_p50_us", 25, False)
        check("dual-legacy async fixed-rate p99 ≤ 1.15× legacy (follower on another CPU)",
              "p99_dual_async_vs_legacy_follower_apart", 1.15, False)
        check("flip under load: 0 client errors", "flip_errors", 0, False)
        check("flip under load: longest stall ≤ 50 ms", "flip_max_stall_ms", 50, False)
        for key in sorted(k for k in s if k.startswith("rss_vs_pgbouncer_") and not k.endswith("_tls")):
            check(f"RSS per idle client ({key.rsplit('_', 1)[1]}) ≤ 0.8× PgBouncer's", key, 0.8, False)
        check("COPY out ≥ 0.9× direct", "copy_out_vs_direct", 0.9, True)
        check("COPY in ≥ 0.9× direct", "copy_in_vs_direct", 0.9, True)
        return checks

    def pooled_percentiles(self, workload, target):
        lat = self.pooled.get((workload, target))
        return percentiles(lat) if lat is not None and len(lat) else {}

    # --- markdown -----------------------------------------------------------------------------------------

    def markdown(self, s, checks):
        m = self.meta
        L = [f"# Cutover benchmark results ({m['mode']})", "",
             f"- Date: {m['date']}", f"- Command: `{m['command']}`", f"- Commit: `{m['commit']}`",
             f"- Machine: {m['machine']}", f"- Pinning: {m['pinning']}",
             f"- Rounds: {m['rounds']} (ABBA order), {m['duration']} s per pgbench run; pgbench scale {m['scale']}",
             f"- Load average during runs: median {m['load_median']:.1f} [{m['load_min']:.1f}–{m['load_max']:.1f}]",
             f"- Dual phases measured: {'yes' if m['dual'] else 'no (cutover has no `phase` subcommand yet)'}", "",
             "Values are `median [min–max]` over rounds; ratios are computed per round (same round, adjacent runs) "
             "and then summarized.", ""]
        L += ["## Throughput", "",
              "| workload | target | TPS | vs direct (Unix rows: direct on its socket) | vs PgBouncer session (TLS and Unix rows: the same PgBouncer setup) | proxy CPU µs/query | of which user / kernel |",
              "|---|---|---|---|---|---|---|"]
        for wl in self.workloads():
            if wl.startswith("copy_") or wl.startswith("fixed_rate"):
                continue
            for t in self.targets_of(wl):
                tps = spread(self.values(wl, t.key, "tps"))
                direct = DIRECT_UNIX if wl.endswith("_unix") else DIRECT
                bouncer = PGBOUNCER_TLS if wl.endswith("_tls") else PGBOUNCER_UNIX if wl.endswith("_unix") else PGBOUNCER
                L.append(f"| {wl} | {t.label} | {fmt(tps, 0)} | {fmt(self.pair(wl, t.key, direct, 'tps'))} | "
                         f"{fmt(self.pair(wl, t.key, bouncer, 'tps'))} | "
                         f"{fmt(spread(self.values(wl, t.key, 'proxy_cpu_us_per_query')), 1)} | {self.user_sys(wl, t.key)} |")
        L += ["", "## Latency (µs)", "",
              "Percentiles pooled over all rounds (pgbench per-transaction logs). `added p50` is the per-round "
              "difference to the direct p50. In the fixed-rate run latency counts from the scheduled start.", "",
              "| workload | target | p50 | p90 | p99 | p99.9 | max | added p50 (per round) | p99 vs legacy phase |",
              "|---|---|---|---|---|---|---|---|---|"]
        for wl in ("latency_c1", "fixed_rate", "fixed_rate_follower_apart"):
            for t in self.targets_of(wl):
                p = self.pooled_percentiles(wl, t.key)
                if not p:
                    continue
                added = self.pair(wl, t.key, DIRECT, "latency_us", op="diff", sub="p50")
                vs_legacy = self.pair(wl, t.key, CUTOVER, "latency_us", sub="p99") if t.key.startswith("cutover_dual") else None
                L.append(f"| {wl} | {t.label} | {p['p50']:.0f} | {p['p90']:.0f} | {p['p99']:.0f} | {p['p99.9']:.0f} | "
                         f"{p['max']:.0f} | {fmt(added, 1) if t.key != DIRECT else '–'} | {fmt(vs_legacy)} |")
        copies = self.workloads("copy_")
        if copies:
            L += ["", "## COPY", "", f"pgbench_accounts ({m['copy_mb']:.0f} MB as text) × {m['copy_repeat']} per run, "
                  "timed inside psql (`\\timing`).", "",
                  "| direction | target | MB/s | vs direct | proxy CPU ms per 100 MB |", "|---|---|---|---|---|"]
            for wl in copies:
                for t in self.targets_of(wl):
                    L.append(f"| {wl} | {t.label} | {fmt(spread(self.values(wl, t.key, 'mb_per_s')), 0)} | "
                             f"{fmt(self.pair(wl, t.key, DIRECT, 'mb_per_s'))} | "
                             f"{fmt(spread(self.values(wl, t.key, 'proxy_cpu_ms_per_100mb')), 0)} |")
        cg = self.extra.get("callgrind")
        if cg:
            n1, n2 = cg["cutover"]["runs"]
            L += ["", "## Instructions per query (callgrind)", "",
                  f"`pgbench -S -M simple -c 1`, {n1} and {n2} transactions, each through a fresh proxy under "
                  f"`valgrind --tool=callgrind`; (I({n2}) − I({n1})) / {n2 - n1}.", "",
                  "| proxy | instructions/query |", "|---|---|",
                  f"| Cutover | {cg['cutover']['instr_per_query']} |", f"| PgBouncer | {cg['pgbouncer']['instr_per_query']} |"]
            if "cutover_dual_async" in cg:
                L.append(f"| Cutover `dual-legacy` async (each query also sent to the follower, digested, compared) "
                         f"| {cg['cutover_dual_async']['instr_per_query']} |")
            L += [
                  "", "Cutover's top functions per query (self cost, same difference method):", "",
                  "| instr/query | function |", "|---|---|"]
            for row in cg["cutover"]["top"][:15]:
                L.append(f"| {row['instr_per_query']:.0f} | `{row['function'][:140]}` |")
            if cg["cutover"].get("top_inclusive"):
                L += ["", "Cutover's own functions by inclusive cost per query (with everything they call):", "",
                      "| instr/query | function |", "|---|---|"]
                for row in cg["cutover"]["top_inclusive"][:12]:
                    L.append(f"| {row['instr_per_query']:.0f} | `{row['function'][:140]}` |")
            if "cutover_dual_async" in cg:
                L += ["", "Cutover in `dual-legacy` async, top functions per query (self cost):", "",
                      "| instr/query | function |", "|---|---|"]
                for row in cg["cutover_dual_async"]["top"][:15]:
                    L.append(f"| {row['instr_per_query']:.0f} | `{row['function'][:140]}` |")
            if "syscalls_per_query" in cg["cutover"]:
                L += ["", "Syscalls per query (`strace -f -c`, same two run lengths and difference):", "",
                      "| proxy | total | top syscalls |", "|---|---|---|"]
                for kind in [k for k in ("cutover", "cutover_dual_async", "pgbouncer") if k in cg]:
                    per = cg[kind].get("syscalls_per_query", {})
                    L.append(f"| {kind} | {sum(per.values()):.2f} | "
                             + ", ".join(f"{k} {v:g}" for k, v in list(per.items())[:6]) + " |")
        idle = self.extra.get("idle_clients")
        if idle:
            L += ["", "## Memory per idle client", "",
                  "RSS growth of a fresh proxy over a 1-client baseline, divided by the added clients. Each client logged "
                  "in and ran `SELECT 1` once, so both proxies hold a server connection for it (session mode).", "",
                  "| proxy | clients | RSS kB | kB per client | open time s |", "|---|---|---|---|---|"]
            for kind, levels in idle.items():
                for n, c in levels.items():
                    L.append(f"| {kind} | {n} | {c['rss_kb']} | {c['kb_per_client']:.2f} | {c['open_s']} |")
        flip = self.extra.get("flip")
        if flip:
            L += ["", "## Flip under load", "",
                  f"TPC-B at a fixed rate, 8 clients, route `legacy → dual-legacy → dual-new`: "
                  f"{flip['transactions']} transactions, {flip['errors']} client errors, longest stall "
                  f"{flip['max_stall_ms']} ms, longest gap between completions {flip['max_completion_gap_ms']} ms "
                  f"(both before the run's last 0.25 s, when pgbench disconnects; including that tail the longest "
                  f"transaction took {flip.get('max_latency_incl_shutdown_ms')} ms).", ""]
            for f in flip["flips"]:
                near = f.get("window_max_stall_ms")
                L.append(f"- at {f['at_s']} s: `{f['command']}` took {f['seconds']} s"
                         + (f"; longest transaction running during it or in the second after: {near} ms" if near is not None else ""))
            slow = sorted((r for r in flip.get("timeline", []) if r["max_ms"] is not None), key=lambda r: -r["max_ms"])[:4]
            if slow:
                L.append("- slowest half-second windows (start of window: longest transaction): "
                         + ", ".join(f"{r['t']} s: {r['max_ms']} ms" for r in slow))
            if flip.get("status"):
                L += ["", "`cutover status --stats` after the flips:", "", "```", flip["status"], "```"]
        dual_status = self.extra.get("dual_status")
        if dual_status:
            L += ["", "## Mirroring counters of the dual-phase targets", "",
                  "`cutover status --stats` of each dual-legacy proxy after all throughput and latency workloads:", ""]
            for key, text in dual_status.items():
                L += [f"{key}:", "", "```", text, "```", ""]
        L += ["", "## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
        for c in checks:
            L.append(f"| {c['target']} | {c['value']} | {c['limit']} | {'yes' if c['met'] else '**no**'} |")
        L += ["", "## Summary line", "", "```", summary_line(s, checks), "```", ""]
        return "\n".join(L)

    # --- SVG plot ------------------------------------------------------------------------------------------

    def svg(self):
        """Grouped bars: latency percentiles per target, one panel per latency workload, log-scale y."""
        panels = [(wl, [(t, self.pooled_percentiles(wl, t.key)) for t in self.targets_of(wl)])
                  for wl in ("latency_c1", "fixed_rate", "fixed_rate_follower_apart")]
        panels = [(wl, [(t, p) for t, p in rows if p]) for wl, rows in panels]
        panels = [p for p in panels if p[1]]
        if not panels:
            return None
        colors = ["#555555", "#1f77b4", "#aec7e8", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd"]
        pw, ph, left, top, bottom = 520, 300, 60, 40, 90
        width, height = left + len(panels) * (pw + 40), top + ph + bottom
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
               f'<rect width="{width}" height="{height}" fill="white"/>']
        for i, (wl, rows) in enumerate(panels):
            x0 = left + i * (pw + 40)
            vals = [p[f"p{q:g}"] for _, p in rows for q in PERCENTILES]
            lo = 10 ** math.floor(math.log10(max(1.0, min(vals))))
            hi = 10 ** math.ceil(math.log10(max(vals)))

            def y(v):
                return top + ph - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
            out.append(f'<text x="{x0 + pw / 2}" y="{top - 15}" text-anchor="middle" font-size="13">{wl}: latency (µs, log scale)</text>')
            decade = lo
            while decade <= hi:
                out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" stroke="#ddd"/>'
                           f'<text x="{x0 - 5}" y="{y(decade) + 4:.1f}" text-anchor="end">{decade:g}</text>')
                decade *= 10
            group = pw / len(PERCENTILES)
            bar = (group - 16) / len(rows)
            for g, q in enumerate(PERCENTILES):
                gx = x0 + g * group + 8
                out.append(f'<text x="{gx + (group - 16) / 2:.1f}" y="{top + ph + 15}" text-anchor="middle">p{q:g}</text>')
                for j, (t, p) in enumerate(rows):
                    v = p[f"p{q:g}"]
                    bx = gx + j * bar
                    out.append(f'<rect x="{bx:.1f}" y="{y(v):.1f}" width="{bar - 1:.1f}" height="{top + ph - y(v):.1f}" '
                               f'fill="{colors[self.targets.index(t) % len(colors)]}"><title>{t.label} p{q:g} = {v:.0f} µs</title></rect>')
            out.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{top + ph}" y2="{top + ph}" stroke="black"/>')
            for j, (t, _) in enumerate(rows):
                lx, ly = x0 + (j % 3) * 175, top + ph + 35 + (j // 3) * 16
                out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colors[self.targets.index(t) % len(colors)]}"/>'
                           f'<text x="{lx + 14}" y="{ly}">{t.label}</text>')
        out.append("</svg>")
        return "\n".join(out)


def summary_line(s, checks):
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()]
    if checks:
        parts.append(f"targets_met={sum(c['met'] for c in checks)}/{len(checks)}")
    return "summary: " + " ".join(parts)

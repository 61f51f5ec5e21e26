// From the rounds' raw results to what a reader wants: per-round ratios to the baseline, medians, percentiles.
import Foundation
import Histogram

/// The numbers of one target over all rounds. Ratios compare it with the first target (the baseline) round by
/// round, so that a machine that was busy in one round moves both sides of that round's ratio alike.
public struct TargetSummary: Sendable, Codable, Equatable {
    public let name: String
    public let tpsPerRound: [Double]
    /// Median, min and max over the rounds; nil without rounds.
    public let tps: Spread?
    /// tps / the baseline's tps, per round (not for the baseline itself).
    public let tpsRatio: Spread?
    /// This target's p50 minus the baseline's, per round, in µs.
    public let addedP50Us: Spread?
    /// Percentiles in µs over every statement of every round (p50, p90, p99, p99.9, max).
    public let latencyUs: [String: Double]
    public let queries: UInt64
    public let errors: UInt64
    public let lostClients: Int
    /// At a fixed rate: statements of the schedule not sent by the end of their run (the target fell behind).
    public let skipped: UInt64
    public let firstError: String?
}

public struct Spread: Sendable, Codable, Equatable {
    public let median: Double
    public let min: Double
    public let max: Double

    /// Nil for no values. The median of an even count is the mean of the middle two (as numpy's).
    public init?(_ values: [Double]) {
        guard !values.isEmpty else { return nil }
        let s = values.sorted()
        median = s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
        min = s[0]
        max = s[s.count - 1]
    }
}

public struct BenchReport: Sendable {
    public static let percentiles: [(key: String, value: Double)] = [("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)]
    public let targets: [TargetSummary]
    private let isPaced: Bool

    public init(plan: BenchPlan, results: [RunResult]) {
        isPaced = plan.rate != nil
        func µs(_ ns: UInt64) -> Double { (Double(ns) / 100).rounded() / 10 }
        func p50(_ r: RunResult) -> Double { µs(r.latency.valueAtPercentile(50)) }
        let baseline = Dictionary(results.filter { $0.target == 0 }.map { ($0.round, $0) }, uniquingKeysWith: { a, _ in a })
        targets = plan.targets.indices.map { t in
            let runs = results.filter { $0.target == t }.sorted { $0.round < $1.round }
            var merged = BenchRunner.emptyHistogram()
            for r in runs { merged.add(r.latency) }
            var latency: [String: Double] = [:]
            if merged.totalCount > 0 {
                for (key, p) in Self.percentiles { latency[key] = µs(merged.valueAtPercentile(p)) }
                latency["max"] = µs(merged.max)
            }
            // Pairs with the baseline's run of the same round, where both completed statements.
            let pairs = t == 0 ? [] : runs.compactMap { r in baseline[r.round].map { (r, $0) } }
                .filter { $0.0.queries > 0 && $0.1.queries > 0 }
            return TargetSummary(
                name: plan.targets[t].name,
                tpsPerRound: runs.map(\.tps),
                tps: Spread(runs.map(\.tps)),
                tpsRatio: Spread(pairs.map { $0.0.tps / $0.1.tps }),
                addedP50Us: Spread(pairs.map { p50($0.0) - p50($0.1) }),
                latencyUs: latency,
                queries: runs.reduce(0) { $0 + $1.queries },
                errors: runs.reduce(0) { $0 + $1.errors },
                lostClients: runs.reduce(0) { $0 + $1.lostClients },
                skipped: runs.reduce(0) { $0 + $1.skipped },
                firstError: runs.lazy.compactMap(\.firstError).first)
        }
    }

    public var errors: UInt64 { targets.reduce(0) { $0 + $1.errors } }

    /// The table's header and rows (the ratio columns read `-` for the baseline).
    public var table: (columns: [String], rows: [[String]]) {
        let base = targets.first?.name ?? ""
        let columns = ["target", "tps", "tps vs \(base)", "added p50 µs"] + Self.percentiles.map { "\($0.key) µs" } + ["max µs", "errors"]
        let rows = targets.map { t -> [String] in
            [t.name, Self.format(t.tps, digits: 0), Self.format(t.tpsRatio, digits: 2), Self.format(t.addedP50Us, digits: 1)]
                + (Self.percentiles.map(\.key) + ["max"]).map { t.latencyUs[$0].map { Self.number($0, digits: 1) } ?? "-" }
                + ["\(t.errors)"]
        }
        return (columns, rows)
    }

    /// One line of `key=value` pairs, the last line printed, for scripts (keys of what did not run are left out).
    public var summaryLine: String {
        guard let base = targets.first else { return "summary:" }
        var pairs: [String] = []
        for t in targets {
            if let tps = t.tps { pairs.append("tps_\(t.name)=\(Self.number(tps.median, digits: 0))") }
        }
        for t in targets.dropFirst() {
            if let r = t.tpsRatio { pairs.append("tps_vs_\(base.name)_\(t.name)=\(Self.number(r.median, digits: 2))") }
            if let a = t.addedP50Us { pairs.append("added_p50_us_\(t.name)=\(Self.number(a.median, digits: 1))") }
        }
        for t in targets {
            if let p99 = t.latencyUs["p99"] { pairs.append("p99_us_\(t.name)=\(Self.number(p99, digits: 1))") }
        }
        pairs.append("errors=\(errors)")
        if isPaced { pairs.append("skipped=\(targets.reduce(0) { $0 + $1.skipped })") }
        return "summary: " + pairs.joined(separator: " ")
    }

    /// Median with min–max when the rounds differ: `1.02 [0.98–1.05]`.
    static func format(_ s: Spread?, digits: Int) -> String {
        guard let s else { return "-" }
        let m = number(s.median, digits: digits)
        return s.min == s.max ? m : "\(m) [\(number(s.min, digits: digits))–\(number(s.max, digits: digits))]"
    }

    static func number(_ v: Double, digits: Int) -> String { String(format: "%.\(digits)f", v) }
}

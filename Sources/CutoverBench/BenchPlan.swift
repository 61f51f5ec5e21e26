// What `cutover bench` runs: the targets, the statement, the rounds in ABBA order and the fixed-rate schedule.
import CutoverNative

/// A named place to send the statement: a libpq connection string or URI (PostgreSQL itself, PgBouncer, Cutover).
public struct BenchTarget: Sendable, Equatable {
    public let name: String
    public let conninfo: String

    /// Parses `NAME=CONNINFO`. Names become summary keys (`tps_vs_direct_cutover`), hence letters, digits, `_`.
    public init(parsing argument: String) throws(BenchPlanError) {
        guard let eq = argument.firstIndex(of: "=") else {
            throw BenchPlanError("--target \(argument): expected NAME=CONNINFO, e.g. direct='host=127.0.0.1 port=5432 dbname=app'")
        }
        name = String(argument[..<eq])
        conninfo = String(argument[argument.index(after: eq)...])
        guard !name.isEmpty, name.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) else {
            throw BenchPlanError("--target \(argument): the name must be letters, digits and _ (it names summary keys)")
        }
        guard !conninfo.isEmpty else { throw BenchPlanError("--target \(name)=: the connection string is empty") }
    }
}

public struct BenchPlanError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The statement every client repeats, with an optional `$1` drawn uniformly from a range for each execution
/// (as pgbench's `\set aid random(1, n)`). The simple protocol has no parameters, so there the value is written
/// into the text, as pgbench does.
public struct BenchStatement: Sendable, Equatable {
    public let sql: String
    public let range: ClosedRange<Int>?
    /// `sql` cut at each `$1`, for the simple protocol.
    private let pieces: [Substring]

    public init(sql: String, range: ClosedRange<Int>?) throws(BenchPlanError) {
        self.sql = sql
        self.range = range
        var pieces: [Substring] = []
        var start = sql.startIndex, i = sql.startIndex
        while i < sql.endIndex {
            guard sql[i] == "$" else { i = sql.index(after: i); continue }
            let digits = sql[sql.index(after: i)...].prefix(while: { $0.isASCII && $0.isNumber })
            if digits.isEmpty { i = sql.index(after: i); continue }
            guard digits == "1" else { throw BenchPlanError("--query uses $\(digits): only one parameter, $1, is supported") }
            pieces.append(sql[start..<i])
            i = digits.endIndex
            start = i
        }
        pieces.append(sql[start...])
        self.pieces = pieces
        if pieces.count > 1, range == nil { throw BenchPlanError("--query uses $1: give its values with --param-range LO:HI") }
        if pieces.count == 1, range != nil { throw BenchPlanError("--param-range is given but --query has no $1") }
    }

    /// Parses `LO:HI` (inclusive).
    public static func parseRange(_ text: String) throws(BenchPlanError) -> ClosedRange<Int> {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let lo = Int(parts[0]), let hi = Int(parts[1]), lo <= hi else {
            throw BenchPlanError("--param-range \(text): expected LO:HI with LO <= HI, e.g. 1:100000")
        }
        return lo...hi
    }

    public var parameterCount: Int { range == nil ? 0 : 1 }

    /// The text to send: with the value in place of `$1` for the simple protocol, else the statement as is.
    /// A negative value goes in parentheses (`1-$1` must not become the comment `1--5`).
    public func text(for mode: BenchProtocol, value: Int?) -> String {
        guard mode == .simple, let value, pieces.count > 1 else { return sql }
        return pieces.joined(separator: value < 0 ? "(\(value))" : String(value))
    }
}

/// Everything one benchmark needs, validated.
public struct BenchPlan: Sendable {
    public let targets: [BenchTarget]
    public let clients: Int
    public let durationNs: UInt64
    public let rounds: Int
    public let mode: BenchProtocol
    public let statement: BenchStatement
    /// Total statements per second over all clients (`-R`), or nil to run as fast as the target answers.
    public let rate: Double?

    public init(targets: [BenchTarget], clients: Int, duration: Double, rounds: Int, mode: BenchProtocol,
                statement: BenchStatement, rate: Double?) throws(BenchPlanError) {
        guard !targets.isEmpty else { throw BenchPlanError("give at least one --target NAME=CONNINFO") }
        var seen = Set<String>()
        for t in targets where !seen.insert(t.name).inserted { throw BenchPlanError("--target \(t.name) is given twice") }
        // A thread and a latency histogram (~170 KB) per client.
        guard (1...1000).contains(clients) else { throw BenchPlanError("--clients must be 1 to 1000") }
        guard duration > 0, duration <= 86_400 else { throw BenchPlanError("--duration must be more than 0 seconds (at most a day)") }
        guard rounds >= 1 else { throw BenchPlanError("--rounds must be at least 1") }
        if let rate, !(rate > 0 && rate <= 10_000_000) { throw BenchPlanError("--rate must be more than 0 (statements per second)") }
        self.targets = targets
        self.clients = clients
        self.durationNs = UInt64(duration * 1e9)
        self.rounds = rounds
        self.mode = mode
        self.statement = statement
        self.rate = rate
    }

    /// The targets' order in round `round` (0-based): forward in even rounds, backward in odd ones (ABBA), so
    /// a machine that slows down or speeds up during the run does not favour one target.
    public func order(ofRound round: Int) -> [Int] {
        round % 2 == 0 ? Array(targets.indices) : Array(targets.indices.reversed())
    }

    /// At a fixed rate, when client `client` should start its `k`-th statement, in ns after the run's start,
    /// or nil when that is past the run's end (or there is no fixed rate): each client keeps its share of the
    /// rate, the clients spread evenly over one interval. Latency is measured from this time, not from when
    /// the statement was sent, so a target that falls behind shows its queueing (no coordinated omission).
    public func scheduledStart(client: Int, k: UInt64) -> UInt64? {
        guard let rate else { return nil }
        let at = Double(clients) / rate * 1e9 * (Double(k) + Double(client) / Double(clients))
        return at < Double(durationNs) ? UInt64(at) : nil // compared as a Double: a tiny rate overflows UInt64
    }

    /// At a fixed rate, how many statements client `client`'s schedule holds within the run (the k for which
    /// `scheduledStart` is not nil); 0 without a fixed rate.
    public func scheduledCount(client: Int) -> UInt64 {
        guard let rate else { return 0 }
        let slots = (Double(durationNs) / (Double(clients) / rate * 1e9) - Double(client) / Double(clients)).rounded(.up)
        return slots > 0 ? UInt64(min(slots, 1e18)) : 0
    }
}

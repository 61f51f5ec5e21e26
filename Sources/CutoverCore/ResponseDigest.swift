// What one side answered to one unit of work (a Query, or everything up to a Sync): per statement, the
// command tag or the error, the row count and an order-insensitive multiset hash of the rows.
import CutoverProtocol

/// A command tag ("SELECT 1", "INSERT 0 5") held as bytes inline: every statement of a dual phase gets
/// one per side, and building a String for it (UTF-8 validation) and copying that String around cost more
/// than the rest of its outcome. It becomes a String only for a divergence record. PostgreSQL's longest
/// tags are 32 bytes; a longer one keeps its first 24 bytes and a hash of the rest.
public struct CommandTag: Hashable, Sendable, CustomStringConvertible {
    private var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private var count: UInt8 = 0
    /// Set when the tag was longer than 32 bytes (the last word is then a hash of all of it).
    private var truncated = false

    public init(_ bytes: UnsafeRawBufferPointer) {
        let kept = bytes.count <= 32 ? bytes.count : 24
        // One copy into the words' memory: a byte-by-byte loop cost
        // ~180 instructions per tag, twice per statement in a dual phase.
        if kept > 0, let source = bytes.baseAddress {
            withUnsafeMutableBytes(of: &words) { $0.baseAddress!.copyMemory(from: source, byteCount: kept) }
        }
        if bytes.count <= 32 {
            count = UInt8(bytes.count)
        } else {
            words.3 = DigestBuilder.hash(bytes)
            count = 24
            truncated = true
        }
    }

    /// Byte `k`, read from memory as the initializer wrote it (so on any byte order).
    private func byte(_ k: Int) -> UInt8 { withUnsafeBytes(of: words) { $0[k] } }

    /// No tag (an error, or a statement that has not completed): a length no tag has.
    static let absent: CommandTag = { var t = CommandTag(UnsafeRawBufferPointer(start: nil, count: 0)); t.count = 0xFF; return t }()
    var isAbsent: Bool { count == 0xFF }

    public init(_ text: String) {
        var t = text
        self = t.withUTF8 { CommandTag(UnsafeRawBufferPointer($0)) }
    }

    public static func == (a: CommandTag, b: CommandTag) -> Bool {
        a.words == b.words && a.count == b.count && a.truncated == b.truncated
    }

    public func hash(into h: inout Hasher) {
        h.combine(words.0); h.combine(words.1); h.combine(words.2); h.combine(words.3); h.combine(count)
    }

    public var description: String {
        let text = String(decoding: (0..<Int(count)).map(byte), as: UTF8.self)
        return truncated ? text + "…" : text
    }
}

/// Why a statement failed: rare, so kept out of line (a success's outcome holds no String).
public final class StatementFailure: Sendable, Equatable {
    public let sqlState: String
    public let message: String?
    public init(sqlState: String, message: String?) { self.sqlState = sqlState; self.message = message }
    public static func == (a: StatementFailure, b: StatementFailure) -> Bool { a.sqlState == b.sqlState && a.message == b.message }
}

/// The outcome of one statement on one side.
public struct StatementOutcome: Equatable, Sendable, Codable {
    /// `CommandTag.absent` when there is none (kept non-optional: an optional of it costs a tag check
    /// through the value witnesses on every copy and comparison).
    var tagValue: CommandTag
    public var failure: StatementFailure?
    public var rows: Int
    /// Sum (mod 2^64) of a 64-bit hash of each DataRow: order-insensitive, and a duplicated row counts
    /// twice (XOR would cancel duplicates).
    public var rowHash: UInt64

    public init(tag: String? = nil, sqlState: String? = nil, error: String? = nil, rows: Int = 0, rowHash: UInt64 = 0) {
        tagValue = tag.map(CommandTag.init) ?? .absent
        failure = sqlState.map { StatementFailure(sqlState: $0, message: error) }
        self.rows = rows; self.rowHash = rowHash
    }

    init(commandTag: CommandTag, failure: StatementFailure?) {
        tagValue = commandTag; self.failure = failure; rows = 0; rowHash = 0
    }

    public var commandTag: CommandTag? { tagValue.isAbsent ? nil : tagValue }
    public var tag: String? { commandTag?.description }

    public static func == (a: StatementOutcome, b: StatementOutcome) -> Bool {
        a.rows == b.rows && a.rowHash == b.rowHash && a.tagValue == b.tagValue && a.failure == b.failure
    }
    public var sqlState: String? { failure?.sqlState }
    public var error: String? { failure?.message }

    enum CodingKeys: String, CodingKey { case tag, sqlState = "sqlstate", error, rows, rowHash = "row_hash" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(tag: try c.decodeIfPresent(String.self, forKey: .tag), sqlState: try c.decodeIfPresent(String.self, forKey: .sqlState),
                  error: try c.decodeIfPresent(String.self, forKey: .error), rows: try c.decode(Int.self, forKey: .rows),
                  rowHash: try c.decode(UInt64.self, forKey: .rowHash))
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(tag, forKey: .tag)
        try c.encodeIfPresent(sqlState, forKey: .sqlState)
        try c.encodeIfPresent(error, forKey: .error)
        try c.encode(rows, forKey: .rows)
        try c.encode(rowHash, forKey: .rowHash)
    }

    public var summary: String {
        if let sqlState { return "ERROR \(sqlState)" }
        return tag ?? "?"
    }
}

/// What the digests keep per statement: trivially copyable (no reference in it), so building, storing and
/// comparing digests costs no retain/release. A failure's SQLSTATE and message, rare, are kept beside it in
/// the unit's digest; `StatementOutcome` (with the failure) is made from the two only for a report.
struct OutcomeSummary: Equatable {
    var tag: CommandTag
    var rows: Int
    var rowHash: UInt64
    var failed: Bool

    static let none = OutcomeSummary(tag: .absent, rows: 0, rowHash: 0, failed: false)

    init(tag: CommandTag, rows: Int, rowHash: UInt64, failed: Bool) {
        self.tag = tag; self.rows = rows; self.rowHash = rowHash; self.failed = failed
    }

    init(_ o: StatementOutcome) {
        self.init(tag: o.tagValue, rows: o.rows, rowHash: o.rowHash, failed: o.failure != nil)
    }
}

/// Everything one side answered between two ReadyForQuery messages. A class: a digest is handed from the
/// backend stream to the session's unit list and compared once, and as a reference each of those steps
/// is one retain instead of a copy of every outcome. Most units are one statement, so the first outcome
/// is stored inline and only a multi-statement unit allocates an array.
///
/// Immutable to everyone but the `DigestBuilder` that made it, which refills it for its next unit once
/// nothing else holds it (`isKnownUniquelyReferenced`): two allocations and two frees per mirrored query
/// were about a fifth of what mirroring a select-only query cost. Hence `@unchecked Sendable`: a digest
/// lives on one event loop, and is only ever changed while unshared.
public final class UnitDigest: Equatable, @unchecked Sendable {
    /// Outcomes in the unit; `head` is the first when there is one.
    public private(set) var count: Int
    private var head: OutcomeSummary
    private var rest: [OutcomeSummary]
    /// The failures of the statements whose summary says `failed`, in statement order.
    private var failures: [StatementFailure]
    public private(set) var status: TransactionStatus

    public convenience init(outcomes: [StatementOutcome], status: TransactionStatus) {
        let summaries = outcomes.map(OutcomeSummary.init)
        self.init(count: outcomes.count, head: summaries.first ?? .none, rest: Array(summaries.dropFirst()),
                  failures: outcomes.compactMap(\.failure), status: status)
    }

    init(count: Int, head: OutcomeSummary, rest: [OutcomeSummary], failures: [StatementFailure], status: TransactionStatus) {
        self.count = count; self.head = head; self.rest = rest; self.failures = failures; self.status = status
    }

    /// Its builder's next unit, in place (see the type's comment: only while unshared).
    fileprivate func refill(count: Int, head: OutcomeSummary, rest: [OutcomeSummary], failures: [StatementFailure], status: TransactionStatus) {
        self.count = count; self.head = head; self.rest = rest; self.failures = failures; self.status = status
    }

    public var first: StatementOutcome? { count > 0 ? self[0] : nil }

    /// Statement `i`'s outcome with its failure (made for a report or a comparison that found a difference).
    public subscript(i: Int) -> StatementOutcome {
        let summary = i == 0 ? head : rest[i - 1]
        var failure: StatementFailure?
        if summary.failed {
            // The failures before it in the unit say which one is its.
            var k = 0
            for j in 0..<i where (j == 0 ? head : rest[j - 1]).failed { k += 1 }
            failure = k < failures.count ? failures[k] : nil
        }
        var o = StatementOutcome(commandTag: summary.tag, failure: failure)
        o.rows = summary.rows
        o.rowHash = summary.rowHash
        return o
    }

    /// The last statement failed (false for a unit without statements).
    var lastFailed: Bool { count > 0 && (count == 1 ? head : rest[count - 2]).failed }
    /// The number of the unit's statement that ended in a cancel (57014: a CancelRequest or a statement
    /// timeout), if its last one did.
    public var cancelledStatement: Int? { lastFailed && failures.last?.sqlState == "57014" ? count - 1 : nil }
    /// The last statement's command tag (absent for a unit without statements or a failed last statement).
    var lastTag: CommandTag { count == 0 ? .absent : (count == 1 ? head : rest[count - 2]).tag }

    /// All outcomes in order (allocates: for reports and tests, not the hot path).
    public var outcomes: [StatementOutcome] { (0..<count).map { self[$0] } }

    /// Same outcomes (the status is not compared: the sides' transaction states are the session's concern).
    public func sameOutcomes(as other: UnitDigest) -> Bool {
        count == other.count && (count == 0 || (head == other.head && rest == other.rest && failures == other.failures))
    }

    public static func == (a: UnitDigest, b: UnitDigest) -> Bool { a.status == b.status && a.sameOutcomes(as: b) }
}

/// Folds backend messages into `UnitDigest`s. Feed it every captured message of one backend stream.
public struct DigestBuilder: Sendable {
    private var first = OutcomeSummary.none
    private var outcomeCount = 0
    private var rest: [OutcomeSummary] = []
    private var failures: [StatementFailure] = []
    private var rows = 0
    private var rowHash: UInt64 = 0
    /// The last digest made: refilled for the next unit if nothing else holds it by then.
    private var last: UnitDigest?

    public init() {}

    /// The backend message ids the builder needs bodies for.
    public static let capturedIDs: [UInt8] = [
        BackendMessageID.dataRow.rawValue, BackendMessageID.commandComplete.rawValue, BackendMessageID.errorResponse.rawValue,
        BackendMessageID.emptyQueryResponse.rawValue, BackendMessageID.portalSuspended.rawValue, BackendMessageID.readyForQuery.rawValue,
    ]

    static let emptyTag = CommandTag("EMPTY")
    static let suspendedTag = CommandTag("SUSPENDED")

    /// Returns a digest when `id` is ReadyForQuery.
    public mutating func received(id: UInt8, body: UnsafeRawBufferPointer?) -> UnitDigest? {
        switch id {
        case BackendMessageID.dataRow.rawValue:
            rows += 1
            if let body { rowHash &+= Self.hash(body) }
        case BackendMessageID.commandComplete.rawValue:
            close(body.map { b in CommandTag(UnsafeRawBufferPointer(rebasing: b.prefix { $0 != 0 })) } ?? .absent, failed: false)
        case BackendMessageID.emptyQueryResponse.rawValue:
            close(Self.emptyTag, failed: false)
        case BackendMessageID.portalSuspended.rawValue:
            close(Self.suspendedTag, failed: false)
        case BackendMessageID.errorResponse.rawValue:
            let fields = body.flatMap { try? ErrorFields.decode(body: Array($0)[...]) }
            failures.append(StatementFailure(sqlState: fields?.sqlState ?? "XX000", message: fields?.message))
            close(.absent, failed: true)
        case BackendMessageID.readyForQuery.rawValue:
            let status = body.flatMap { $0.first }.flatMap(TransactionStatus.init(rawValue:)) ?? .idle
            let digest: UnitDigest
            if last != nil, isKnownUniquelyReferenced(&last!) {
                digest = last!
                digest.refill(count: outcomeCount, head: first, rest: rest, failures: failures, status: status)
            } else {
                digest = UnitDigest(count: outcomeCount, head: first, rest: rest, failures: failures, status: status)
                last = digest
            }
            outcomeCount = 0
            if !rest.isEmpty { rest = [] }
            if !failures.isEmpty { failures = [] }
            rows = 0
            rowHash = 0
            return digest
        default: break
        }
        return nil
    }

    /// Ends one statement's outcome with the rows seen since the previous one.
    private mutating func close(_ tag: CommandTag, failed: Bool) {
        let o = OutcomeSummary(tag: tag, rows: rows, rowHash: rowHash, failed: failed)
        if outcomeCount == 0 { first = o } else { rest.append(o) }
        outcomeCount += 1
        rows = 0
        rowHash = 0
    }

    /// A word at a time (each 8 bytes multiplied in, then the length, so trailing zero bytes count), then a
    /// SplitMix64 finalizer so that sums of hashes mix well. Byte-wise FNV-1a cost ~5 instructions per byte
    /// of every row, on both sides of a dual phase.
    @inline(__always)
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        let n = bytes.count
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        if let base = bytes.baseAddress {
            var i = 0
            while i &+ 8 <= n {
                h = (h ^ base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0x9e37_79b9_7f4a_7c15
                h ^= h >> 29
                i &+= 8
            }
            if i < n {
                // The last 1–7 bytes in one copy, read as little-endian (a byte loop was ~9 instructions a
                // byte: most rows of a point query are shorter than a word).
                var tail: UInt64 = 0
                withUnsafeMutableBytes(of: &tail) { $0.baseAddress!.copyMemory(from: base + i, byteCount: n &- i) }
                h = (h ^ UInt64(littleEndian: tail)) &* 0x9e37_79b9_7f4a_7c15
                h ^= h >> 29
            }
        }
        // The length last, not in the seed: XORed in with the data it cancels against it ([10, 48] vs [11, 48, 0]).
        h = (h ^ UInt64(truncatingIfNeeded: n)) &* 0x9e37_79b9_7f4a_7c15
        h = (h ^ (h >> 30)) &* 0xbf58_476d_1ce4_e5b9
        h = (h ^ (h >> 27)) &* 0x94d0_49bb_1331_11eb
        return h ^ (h >> 31)
    }
}

/// The ways two answers to the same statement can differ.
public enum DivergenceKind: String, Sendable, Codable, CaseIterable {
    case commandTag = "command_tag"
    case errorMismatch = "error_mismatch"
    case rowCount = "row_count"
    case rowContent = "row_content"
    case statementCount = "statement_count"
    case followerLost = "follower_lost"
    case followerUnreachable = "follower_unreachable"
    case queueOverflow = "queue_overflow"
    case followerTimeout = "follower_timeout"
    case crossSchema = "cross_schema"
    case unreplayableState = "unreplayable_state"
    /// Async mode: two sessions' writes reached the follower in the opposite order from the leader, so
    /// non-commutative changes to the same rows may differ without any answer showing it.
    case writeOrder = "write_order"
    /// The route re-entered a dual phase after running without a follower: that side missed those writes.
    case unmirroredWrites = "unmirrored_writes"
    /// A write stores a value that differs per side and that the proxy could not capture from the leader
    /// (a trigger calling now(), random() in a WHERE, an INSERT … SELECT into a serial column…): the route
    /// is marked out of sync.
    case nondeterministic

    /// A warning about a risk rather than a difference seen: not in a route's divergence total (it is in
    /// the per-kind counts). With async mirroring's on-demand reads, write_order counts the order answers
    /// were read in, which is most of the time harmless concurrency.
    public var isWarning: Bool { self == .writeOrder }
}

/// One statement whose answers differ.
public struct OutcomeDifference: Equatable, Sendable {
    public var kind: DivergenceKind
    public var index: Int
    public var leader: StatementOutcome?
    public var follower: StatementOutcome?
}

extension UnitDigest {
    /// Compares a leader digest with a follower digest, statement by statement.
    public static func differences(leader: UnitDigest, follower: UnitDigest) -> [OutcomeDifference] {
        // The common case, compared in place.
        if leader.sameOutcomes(as: follower) { return [] }
        var out: [OutcomeDifference] = []
        for i in 0..<max(leader.count, follower.count) {
            let l = i < leader.count ? leader[i] : nil
            let f = i < follower.count ? follower[i] : nil
            guard let l, let f else {
                out.append(OutcomeDifference(kind: .statementCount, index: i, leader: l, follower: f))
                continue
            }
            let kind: DivergenceKind?
            if l.sqlState != f.sqlState { kind = .errorMismatch }
            else if l.tagValue != f.tagValue { kind = .commandTag }
            else if l.rows != f.rows { kind = .rowCount }
            else if l.rowHash != f.rowHash { kind = .rowContent }
            else { kind = nil }
            if let kind { out.append(OutcomeDifference(kind: kind, index: i, leader: l, follower: f)) }
        }
        return out
    }
}

// What one side answered to one unit of work (a Query, or everything up to a Sync): per statement, the
// command tag or the error, the row count and an order-insensitive multiset hash of the rows.
import CutoverProtocol

/// The outcome of one statement on one side.
public struct StatementOutcome: Equatable, Sendable, Codable {
    public var tag: String?
    public var sqlState: String?
    public var error: String?
    public var rows: Int
    /// Sum (mod 2^64) of a 64-bit hash of each DataRow: order-insensitive, and a duplicated row counts
    /// twice (XOR would cancel duplicates).
    public var rowHash: UInt64

    public init(tag: String? = nil, sqlState: String? = nil, error: String? = nil, rows: Int = 0, rowHash: UInt64 = 0) {
        self.tag = tag; self.sqlState = sqlState; self.error = error; self.rows = rows; self.rowHash = rowHash
    }

    enum CodingKeys: String, CodingKey { case tag, sqlState = "sqlstate", error, rows, rowHash = "row_hash" }

    public var summary: String {
        if let sqlState { return "ERROR \(sqlState)" }
        return tag ?? "?"
    }
}

/// Everything one side answered between two ReadyForQuery messages.
public struct UnitDigest: Equatable, Sendable {
    public var outcomes: [StatementOutcome]
    public var status: TransactionStatus
}

/// Folds backend messages into `UnitDigest`s. Feed it every captured message of one backend stream.
public struct DigestBuilder: Sendable {
    private var outcomes: [StatementOutcome] = []
    private var rows = 0
    private var rowHash: UInt64 = 0

    public init() {}

    /// The backend message ids the builder needs bodies for.
    public static let capturedIDs: [UInt8] = [
        BackendMessageID.dataRow.rawValue, BackendMessageID.commandComplete.rawValue, BackendMessageID.errorResponse.rawValue,
        BackendMessageID.emptyQueryResponse.rawValue, BackendMessageID.portalSuspended.rawValue, BackendMessageID.readyForQuery.rawValue,
    ]

    /// Returns a digest when `id` is ReadyForQuery.
    public mutating func received(id: UInt8, body: UnsafeRawBufferPointer?) -> UnitDigest? {
        switch id {
        case BackendMessageID.dataRow.rawValue:
            rows += 1
            if let body { rowHash &+= Self.hash(body) }
        case BackendMessageID.commandComplete.rawValue:
            close(StatementOutcome(tag: body.map { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }))
        case BackendMessageID.emptyQueryResponse.rawValue:
            close(StatementOutcome(tag: "EMPTY"))
        case BackendMessageID.portalSuspended.rawValue:
            close(StatementOutcome(tag: "SUSPENDED"))
        case BackendMessageID.errorResponse.rawValue:
            let fields = body.flatMap { try? ErrorFields.decode(body: Array($0)[...]) }
            close(StatementOutcome(sqlState: fields?.sqlState ?? "XX000", error: fields?.message))
        case BackendMessageID.readyForQuery.rawValue:
            let status = body.flatMap { $0.first }.flatMap(TransactionStatus.init(rawValue:)) ?? .idle
            defer { outcomes = []; rows = 0; rowHash = 0 }
            return UnitDigest(outcomes: outcomes, status: status)
        default: break
        }
        return nil
    }

    /// Ends one statement's outcome with the rows seen since the previous one.
    private mutating func close(_ outcome: StatementOutcome) {
        var o = outcome
        o.rows = rows
        o.rowHash = rowHash
        outcomes.append(o)
        rows = 0
        rowHash = 0
    }

    /// FNV-1a over the row's bytes, then a SplitMix64 finalizer so that sums of hashes mix well.
    @inline(__always)
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
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
        // The common case, compared without copying each outcome out of its array.
        if leader.outcomes == follower.outcomes { return [] }
        var out: [OutcomeDifference] = []
        for i in 0..<max(leader.outcomes.count, follower.outcomes.count) {
            let l = i < leader.outcomes.count ? leader.outcomes[i] : nil
            let f = i < follower.outcomes.count ? follower.outcomes[i] : nil
            guard let l, let f else {
                out.append(OutcomeDifference(kind: .statementCount, index: i, leader: l, follower: f))
                continue
            }
            let kind: DivergenceKind?
            if l.sqlState != f.sqlState { kind = .errorMismatch }
            else if l.tag != f.tag { kind = .commandTag }
            else if l.rows != f.rows { kind = .rowCount }
            else if l.rowHash != f.rowHash { kind = .rowContent }
            else { kind = nil }
            if let kind { out.append(OutcomeDifference(kind: kind, index: i, leader: l, follower: f)) }
        }
        return out
    }
}

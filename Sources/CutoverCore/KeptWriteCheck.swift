// Which divergences leave the two sides' data apart: a transaction that wrote and was kept on one side only,
// or a write answered differently and kept. Pure: fed one session's compared units in order.

/// Every difference in answers is recorded as a divergence; most (a `SELECT now()`, a read's row order) say
/// nothing about the stored data. This check follows one session's transactions across its compared units and
/// tells which differences were *kept*: then the route is marked out of sync, so a leader flip needs FORCE
/// and the operator knows to verify. A write the client cancelled on the leader that the follower finished
/// (async mode sends cancels to the leader only) is the common case.
public struct KeptWriteCheck: Sendable, Equatable {
    /// A unit of the transaction in progress may have changed data.
    private var wrote = false
    /// The first statement of the transaction in progress that may change data and was answered differently.
    private var differingWrite: String?

    public init() {}

    /// Nothing carried over from earlier units: the common case skips the check when nothing differs either.
    @inline(__always) public var isQuiet: Bool { !wrote && differingWrite == nil }

    /// One unit both sides answered. `differences` are the unit's (`UnitDigest.differences`). Returns why the
    /// sides' data now differ, or nil.
    public mutating func compared(_ unit: WorkUnit, leader: UnitDigest, follower: UnitDigest,
                                  differences: [OutcomeDifference]) -> String? {
        if unit.writes { wrote = true }
        if differingWrite == nil && !differences.isEmpty {
            differingWrite = Self.firstDifferingWrite(differences, unit: unit)
        }
        // A transaction ends where a side is idle again, or (sync mode) with the implicit transaction the proxy
        // wrapped an autocommit write in.
        guard unit.wrappedInTransaction || leader.status == .idle || follower.status == .idle else { return nil }
        defer { self = KeptWriteCheck() }
        guard wrote || differingWrite != nil else { return nil }
        let leaderKept: Bool, followerKept: Bool
        if unit.wrappedInTransaction {
            // The proxy commits the wrapped write on the follower only when the leader's succeeded.
            leaderKept = leader.status != .failedTransaction && !leader.lastFailed
            followerKept = leaderKept && follower.status != .failedTransaction && !follower.lastFailed
        } else {
            leaderKept = Self.kept(leader)
            followerKept = Self.kept(follower)
        }
        if wrote && leaderKept != followerKept {
            return "a transaction that wrote was kept on the \(leaderKept ? "leader" : "follower") only"
                + (differingWrite.map { " (\($0))" } ?? "")
        }
        if let d = differingWrite, leaderKept || followerKept {
            return "a write answered differently was kept (\(d))"
        }
        return nil
    }

    /// A side ended the transaction keeping its changes: idle, its last statement succeeded and was not a
    /// ROLLBACK (PostgreSQL answers COMMIT in a failed transaction with the tag ROLLBACK).
    static func kept(_ side: UnitDigest) -> Bool {
        side.status == .idle && !side.lastFailed && side.lastTag != rollbackTag
    }

    static let rollbackTag = CommandTag("ROLLBACK")

    /// The first difference on a statement that may change data, where not both sides failed (a statement
    /// that failed on both changed nothing on either).
    static func firstDifferingWrite(_ differences: [OutcomeDifference], unit: WorkUnit) -> String? {
        for d in differences {
            if d.leader?.failure != nil && d.follower?.failure != nil { continue }
            let mayWrite = d.index < unit.statements.count ? !SQLText.cannotChangeData(unit.statements[d.index]) : unit.writes
            if mayWrite { return "\(d.kind.rawValue) on statement \(d.index + 1) of a unit" }
        }
        return nil
    }
}

extension SQLText {
    static let readOnlyLeadingWords: Set<String> = [
        "select", "show", "explain", "values", "table", "fetch", "move", "close", "declare", "prepare", "deallocate",
        "begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release", "set", "reset", "discard",
        "listen", "unlisten", "notify", "load",
    ]

    /// Whether a statement cannot change stored data by its leading keyword (a cold path: only statements whose
    /// answers differed are asked). Transaction control counts as not changing data: what a COMMIT kept is
    /// judged by `KeptWriteCheck` from the outcomes. Errs towards "may change": a `SELECT` calling a function
    /// that writes is taken as a read; a `WITH` is a read only when it names no DML verb.
    public static func cannotChangeData(_ statement: String) -> Bool {
        var text = statement
        return text.withUTF8 { raw in
            let bytes = UnsafeRawBufferPointer(raw)
            let keyword = SQLBytes.leadingKeyword(bytes)
            if keyword == .with { return !SQLBytes.modifiesData(bytes, keyword: keyword) }
            if keyword.isDML || keyword == .copy || keyword == .create { return false }
            guard let word = firstWord(statement) else { return true } // an empty statement
            return readOnlyLeadingWords.contains(word)
        }
    }

    /// The first word, lower-cased, after whitespace, comments and opening parentheses.
    static func firstWord(_ statement: String) -> String? {
        var rest = Substring(statement)
        while true {
            rest = rest.drop { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" || $0 == "(" }
            if rest.hasPrefix("--") { rest = rest.drop { $0 != "\n" }; continue }
            if rest.hasPrefix("/*"), let end = rest.range(of: "*/") { rest = rest[end.upperBound...]; continue }
            break
        }
        let word = rest.prefix { $0.isLetter || $0 == "_" }
        return word.isEmpty ? nil : word.lowercased()
    }
}

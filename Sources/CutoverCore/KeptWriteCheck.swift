// Which divergences leave the two sides' data apart: a transaction that wrote and was kept on one side only,
// or a write answered differently and kept. Pure: fed one session's compared units in order.

/// Every difference in answers is recorded as a divergence; most (a `SELECT now()`, a read's row order) say
/// nothing about the stored data. This check follows one session's transactions across its compared units and
/// tells which differences were *kept*: then the route is marked out of sync, so a leader flip needs FORCE
/// and the operator knows to verify. A write the client cancelled on the leader that the follower finished
/// (async mode sends cancels to the leader only) is the common case.
public struct KeptWriteCheck: Sendable, Equatable {
    /// A unit of the transaction in progress may have changed data (by the tracker's first-keyword look,
    /// `WorkUnit.mayChangeData`; in a unit whose answers differed, by each of its statements).
    private var wrote = false
    /// The first statement of the transaction in progress that may change data and was answered differently.
    private var differingWrite: String?
    /// Savepoints set since that difference, oldest first: a ROLLBACK TO one of them keeps it, a ROLLBACK TO
    /// an older one (set before it, so not in this list) undoes it.
    private var savepointsSinceDifference: [String] = []

    public init() {}

    /// Nothing carried over from earlier units: the common case skips the check when nothing differs either.
    @inline(__always) public var isQuiet: Bool { !wrote && differingWrite == nil }

    /// One unit both sides answered. `differences` are the unit's (`UnitDigest.differences`). Returns why the
    /// sides' data now differ, or nil.
    public mutating func compared(_ unit: WorkUnit, leader: UnitDigest, follower: UnitDigest,
                                  differences: [OutcomeDifference]) -> String? {
        if unit.mayChangeData { wrote = true }
        var texts: [String]?
        // Savepoint commands count from the statement after the difference (in its own unit) or from the
        // start of a later unit.
        var savepointsFrom = 0
        if !differences.isEmpty {
            // A simple Query is one text for all its statements: cut it to tell which statement differed.
            let all = Self.statementTexts(unit, outcomes: max(leader.count, follower.count))
            texts = all
            if all.contains(where: { !SQLText.cannotChangeData($0) }) { wrote = true }
            if differingWrite == nil, let (index, what) = Self.firstDifferingWrite(differences, texts: all, unitWrites: unit.writes) {
                differingWrite = what
                savepointsFrom = index + 1
            }
        }
        if differingWrite != nil {
            // Every SAVEPOINT, RELEASE and ROLLBACK TO both sides ran, one per statement (a driver may send
            // its SAVEPOINT in the same unit as the statement it guards).
            let all = texts ?? Self.statementTexts(unit, outcomes: leader.count)
            let ran = min(all.count, leader.count, follower.count)
            if savepointsFrom < ran {
                for k in savepointsFrom..<ran where leader[k].failure == nil && follower[k].failure == nil {
                    savepointCommand(all[k])
                }
            }
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

    /// Follows SAVEPOINT, RELEASE and ROLLBACK TO (answered alike) while a difference is pending: a rollback
    /// to a savepoint set before the difference undoes it on both sides (pgjdbc's autosave, psql's
    /// ON_ERROR_ROLLBACK and nested transactions in ORMs do this around every failing statement).
    private mutating func savepointCommand(_ text: String) {
        guard let (command, name) = SQLText.savepointCommand(text) else { return }
        let known = savepointsSinceDifference.lastIndex(of: name)
        switch command {
        case .savepoint:
            savepointsSinceDifference.append(name)
        case .release:
            // Releases the savepoint and every later one; one set before the difference takes all of these along.
            savepointsSinceDifference.removeSubrange((known ?? 0)...)
        case .rollbackTo:
            if let known {
                savepointsSinceDifference.removeSubrange((known + 1)...) // the savepoint itself stays
            } else {
                differingWrite = nil
                savepointsSinceDifference = []
            }
        }
    }

    /// The texts of the unit's statements, one per outcome where it can: a simple Query's text is split.
    static func statementTexts(_ unit: WorkUnit, outcomes: Int) -> [String] {
        guard unit.statements.count == 1, outcomes > 1 else { return Array(unit.statements) }
        return PostgresParser.splitStatements(unit.statements[0])
    }

    /// The first difference on a statement that may change data, where not both sides failed (a statement
    /// that failed on both changed nothing on either).
    static func firstDifferingWrite(_ differences: [OutcomeDifference], texts: [String], unitWrites: Bool) -> (Int, String)? {
        for d in differences {
            if d.leader?.failure != nil && d.follower?.failure != nil { continue }
            let mayWrite = d.index < texts.count ? !SQLText.cannotChangeData(texts[d.index]) : unitWrites
            if mayWrite { return (d.index, "\(d.kind.rawValue) on statement \(d.index + 1) of a unit") }
        }
        return nil
    }
}

extension SQLText {
    /// First words (upper case, as `leadingWords` gives them) of statements that cannot change stored data.
    static let readOnlyLeadingWords: Set<String> = [
        "SHOW", "VALUES", "TABLE", "FETCH", "MOVE", "CLOSE", "DECLARE", "PREPARE", "DEALLOCATE",
        "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "SET", "RESET", "DISCARD",
        "LISTEN", "UNLISTEN", "NOTIFY", "LOAD",
    ]

    static let into = Array("into".utf8), analyze = Array("analyze".utf8), analyse = Array("analyse".utf8)

    /// `COPY … TO STDOUT`: the words TO and STDOUT in a row (a file name containing "stdout" does not count).
    static func copiesToStdout(_ statement: String) -> Bool {
        let words = statement.lowercased().split { $0.isWhitespace || $0 == ";" }
        return zip(words, words.dropFirst()).contains { $0 == "to" && $1 == "stdout" }
    }

    /// Whether a statement cannot change stored data by its leading keyword (a cold path: only statements whose
    /// answers differed are asked). Transaction control counts as not changing data: what a COMMIT kept is
    /// judged by `KeptWriteCheck` from the outcomes. A `SELECT … INTO` (a new table), an `EXPLAIN ANALYZE` of
    /// DML and a `COPY` other than `TO STDOUT` may change data; a `SELECT` calling a function that writes is
    /// taken as a read, and a `WITH` is a read when it names no DML verb.
    public static func cannotChangeData(_ statement: String) -> Bool {
        var text = statement
        return text.withUTF8 { raw in
            let bytes = UnsafeRawBufferPointer(raw)
            let keyword = SQLBytes.leadingKeyword(bytes)
            if keyword == .with { return !SQLBytes.modifiesData(bytes, keyword: keyword) }
            if keyword == .copy { return copiesToStdout(statement) }
            if keyword.isDML || keyword == .create { return false }
            guard let word = leadingWords(statement, count: 1).first else { return true } // an empty statement
            switch word {
            case "SELECT": return !SQLBytes.containsWord(bytes, lowercased: into)
            case "EXPLAIN":
                let analyzes = SQLBytes.containsWord(bytes, lowercased: analyze) || SQLBytes.containsWord(bytes, lowercased: analyse)
                return !(analyzes && SQLBytes.dmlWords.contains { SQLBytes.containsWord(bytes, lowercased: $0) })
            default: return readOnlyLeadingWords.contains(word)
            }
        }
    }

    public enum SavepointCommand: Sendable, Equatable { case savepoint, release, rollbackTo }

    /// `SAVEPOINT name`, `RELEASE [SAVEPOINT] name` or `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`, with
    /// the name as PostgreSQL folds it (lower case unless quoted); nil for anything else.
    public static func savepointCommand(_ statement: String) -> (SavepointCommand, String)? {
        var words: [Substring] = []
        var rest = Substring(statement)
        while words.count < 6 {
            rest = rest.drop { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
            guard let first = rest.first, first != ";" else { break }
            if first == "\"" {
                let body = rest.dropFirst()
                guard let close = body.firstIndex(of: "\"") else { return nil }
                words.append(rest[rest.startIndex...close])
                rest = body[body.index(after: close)...]
            } else {
                let word = rest.prefix { !$0.isWhitespace && $0 != ";" }
                words.append(word)
                rest = rest[word.endIndex...]
            }
        }
        func name(_ w: Substring) -> String { w.hasPrefix("\"") ? String(w.dropFirst().dropLast()) : w.lowercased() }
        let lower = words.map { $0.hasPrefix("\"") ? String($0) : $0.lowercased() }
        guard let verb = lower.first else { return nil }
        switch verb {
        case "savepoint" where words.count == 2:
            return (.savepoint, name(words[1]))
        case "release":
            let i = lower.count > 1 && lower[1] == "savepoint" ? 2 : 1
            return words.count == i + 1 ? (.release, name(words[i])) : nil
        case "rollback":
            var i = 1
            if i < lower.count, lower[i] == "work" || lower[i] == "transaction" { i += 1 }
            guard i < lower.count, lower[i] == "to" else { return nil }
            i += 1
            if i < lower.count, lower[i] == "savepoint" { i += 1 }
            return words.count == i + 1 ? (.rollbackTo, name(words[i])) : nil
        default:
            return nil
        }
    }
}

// Cheap byte-level classification of SQL text: the first keywords decide transaction control, session state
// and what cannot be carried to a new connection. No parsing; libpg_query is for the rare deeper look.

/// What a statement does to the session, judged from its leading keywords.
public enum StatementKind: Equatable, Sendable {
    case begin, commit, rollback
    /// SET/RESET of a run-time parameter (replayed on a follower that joins later).
    case setting
    /// SQL-level PREPARE / DEALLOCATE.
    case prepare, deallocate
    /// DISCARD ALL / RESET ALL: forget tracked state.
    case discardAll
    case other
}

/// Session state a proxy cannot recreate on a new connection.
public struct UnreplayableState: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let temporaryTable = UnreplayableState(rawValue: 1)
    public static let listen = UnreplayableState(rawValue: 2)
    public static let advisoryLock = UnreplayableState(rawValue: 4)
    public static let holdCursor = UnreplayableState(rawValue: 8)

    public var names: [String] {
        var out: [String] = []
        if contains(.temporaryTable) { out.append("temporary tables") }
        if contains(.listen) { out.append("LISTEN") }
        if contains(.advisoryLock) { out.append("session advisory locks") }
        if contains(.holdCursor) { out.append("WITH HOLD cursors") }
        return out
    }
}

public enum SQLText {
    /// A string literal: single quotes, inner ones doubled (standard_conforming_strings, on since 9.1).
    public static func quoteLiteral(_ value: String) -> String { "'" + value.replacingOccurrences(of: "'", with: "''") + "'" }

    /// `value` as an escape-string literal (`E'…'`, backslashes doubled): read the same whatever the
    /// session's `standard_conforming_strings` (a plain literal's backslashes are escapes when it is off).
    public static func quoteEscapedLiteral(_ value: String) -> String {
        "E'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "''") + "'"
    }

    /// Upper-cased leading words of `text`, skipping whitespace, comments and opening parentheses.
    public static func leadingWords(_ text: String, count: Int = 2) -> [String] {
        var words: [String] = []
        var i = text.utf8.startIndex
        let u = text.utf8
        while i < u.endIndex && words.count < count {
            let c = u[i]
            if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == 0x28 { i = u.index(after: i); continue }
            if c == 0x2D, u.index(after: i) < u.endIndex, u[u.index(after: i)] == 0x2D { // -- comment
                while i < u.endIndex && u[i] != 0x0A { i = u.index(after: i) }
                continue
            }
            if c == 0x2F, u.index(after: i) < u.endIndex, u[u.index(after: i)] == 0x2A { // /* comment */
                i = u.index(i, offsetBy: 2)
                while i < u.endIndex {
                    if u[i] == 0x2A, u.index(after: i) < u.endIndex, u[u.index(after: i)] == 0x2F { i = u.index(i, offsetBy: 2); break }
                    i = u.index(after: i)
                }
                continue
            }
            guard isWordByte(c) else { break }
            let start = i
            while i < u.endIndex && isWordByte(u[i]) { i = u.index(after: i) }
            words.append(String(decoding: u[start..<i], as: UTF8.self).uppercased())
        }
        return words
    }

    @inline(__always) static func isWordByte(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x5F
    }

    public static func classify(_ text: String) -> StatementKind {
        let w = leadingWords(text, count: 2)
        guard let first = w.first else { return .other }
        switch first {
        case "BEGIN", "START": return .begin
        case "COMMIT", "END": return .commit
        case "ROLLBACK", "ABORT":
            // ROLLBACK TO SAVEPOINT stays inside the transaction.
            return w.count > 1 && w[1] == "TO" ? .other : .rollback
        case "SET":
            // SET LOCAL / SET TRANSACTION / SET SESSION CHARACTERISTICS end with the transaction or are not parameters.
            if w.count > 1 && (w[1] == "LOCAL" || w[1] == "TRANSACTION" || w[1] == "CONSTRAINTS") { return .other }
            return .setting
        case "RESET":
            return w.count > 1 && w[1] == "ALL" ? .discardAll : .setting
        case "DISCARD": return .discardAll
        case "PREPARE": return w.count > 1 && w[1] == "TRANSACTION" ? .other : .prepare
        case "DEALLOCATE": return .deallocate
        default: return .other
        }
    }

    /// State created by `text` that a follower joining later could not be given.
    public static func unreplayableState(_ text: String) -> UnreplayableState {
        var s: UnreplayableState = []
        let w = leadingWords(text, count: 3)
        if w.first == "LISTEN" { s.insert(.listen) }
        if w.first == "CREATE" && w.count > 1 && (w[1] == "TEMP" || w[1] == "TEMPORARY"
            || (w.count > 2 && (w[1] == "LOCAL" || w[1] == "GLOBAL") && (w[2] == "TEMP" || w[2] == "TEMPORARY"))) {
            s.insert(.temporaryTable)
        }
        if w.first == "DECLARE" && SQLBytes.contains(text, lowercased: Array("with hold".utf8)) { s.insert(.holdCursor) }
        if SQLBytes.contains(text, lowercased: Array("pg_advisory_lock".utf8)) { s.insert(.advisoryLock) }
        return s
    }

    /// The name a `PREPARE name AS ...` / `DEALLOCATE [PREPARE] name` refers to.
    public static func preparedName(_ text: String) -> String? {
        let w = leadingWords(text, count: 3)
        guard w.count >= 2 else { return nil }
        if w[0] == "DEALLOCATE" && w[1] == "PREPARE" { return w.count > 2 ? w[2].lowercased() : nil }
        return w[1].lowercased()
    }
}

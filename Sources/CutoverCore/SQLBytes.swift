// Allocation-free looks at raw SQL text in a message body: the first keyword and case-insensitive
// substring search. The hot path decides with these whether a statement needs a String at all.

/// The leading keywords that matter to the proxy; everything else is `.other`.
public enum LeadingKeyword: Sendable, Equatable {
    case begin, start, commit, end, rollback, abort, set, reset, prepare, deallocate, discard, listen, create, declare
    case insert, update, delete, merge, copy
    case other

    /// Keywords whose statements may change session state the proxy tracks or cannot replay.
    public var affectsSessionState: Bool {
        switch self {
        case .set, .reset, .prepare, .deallocate, .discard, .listen, .create, .declare: return true
        default: return false
        }
    }

    public var endsTransaction: Bool { self == .commit || self == .end }
}

public enum SQLBytes {
    static let keywords: [([UInt8], LeadingKeyword)] = ([
        ("BEGIN", .begin), ("START", .start), ("COMMIT", .commit), ("END", .end), ("ROLLBACK", .rollback), ("ABORT", .abort),
        ("SET", .set), ("RESET", .reset), ("PREPARE", .prepare), ("DEALLOCATE", .deallocate), ("DISCARD", .discard),
        ("LISTEN", .listen), ("CREATE", .create), ("DECLARE", .declare), ("INSERT", .insert), ("UPDATE", .update),
        ("DELETE", .delete), ("MERGE", .merge), ("COPY", .copy),
    ] as [(String, LeadingKeyword)]).map { (Array($0.0.utf8), $0.1) }

    @inline(__always) static func upper(_ c: UInt8) -> UInt8 { c >= 0x61 && c <= 0x7A ? c - 0x20 : c }
    @inline(__always) static func lower(_ c: UInt8) -> UInt8 { c >= 0x41 && c <= 0x5A ? c + 0x20 : c }

    /// The first keyword, skipping whitespace, `--` and `/* */` comments and opening parentheses.
    public static func leadingKeyword(_ text: UnsafeRawBufferPointer) -> LeadingKeyword {
        var i = 0
        let n = text.count
        while i < n {
            let c = text[i]
            if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == 0x28 { i += 1; continue }
            if c == 0x2D && i + 1 < n && text[i + 1] == 0x2D { while i < n && text[i] != 0x0A { i += 1 }; continue }
            if c == 0x2F && i + 1 < n && text[i + 1] == 0x2A {
                i += 2
                while i + 1 < n && !(text[i] == 0x2A && text[i + 1] == 0x2F) { i += 1 }
                i += 2
                continue
            }
            break
        }
        var end = i
        while end < n && SQLText.isWordByte(text[end]) { end += 1 }
        let length = end - i
        guard length >= 3 && length <= 10 else { return .other }
        outer: for (word, keyword) in keywords where word.count == length {
            for j in 0..<length where upper(text[i + j]) != word[j] { continue outer }
            return keyword
        }
        return .other
    }

    /// Case-insensitive search for `pattern` (given in lower case).
    public static func contains(_ text: UnsafeRawBufferPointer, lowercased pattern: [UInt8]) -> Bool {
        let m = pattern.count, n = text.count
        guard m > 0, n >= m, let first = pattern.first else { return m == 0 }
        var i = 0
        while i <= n - m {
            if lower(text[i]) == first {
                var j = 1
                while j < m && lower(text[i + j]) == pattern[j] { j += 1 }
                if j == m { return true }
            }
            i += 1
        }
        return false
    }

    public static func contains(_ text: String, lowercased pattern: [UInt8]) -> Bool {
        var t = text
        return t.withUTF8 { contains(UnsafeRawBufferPointer($0), lowercased: pattern) }
    }

    static let advisory = Array("advisory".utf8)
}

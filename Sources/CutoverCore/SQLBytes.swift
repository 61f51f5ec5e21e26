// Allocation-free looks at raw SQL text in a message body: the first keyword and case-insensitive
// substring search. The hot path decides with these whether a statement needs a String at all.

/// The leading keywords that matter to the proxy; everything else is `.other`.
public enum LeadingKeyword: Sendable, Equatable {
    case begin, start, commit, end, rollback, abort, set, reset, prepare, deallocate, discard, listen, create, declare
    case insert, update, delete, merge, copy, with
    case select
    case other

    /// Keywords whose statements may change session state the proxy tracks or cannot replay.
    public var affectsSessionState: Bool {
        switch self {
        case .set, .reset, .prepare, .deallocate, .discard, .listen, .create, .declare: return true
        default: return false
        }
    }

    public var endsTransaction: Bool { self == .commit || self == .end }

    /// Plain DML (see `SQLBytes.modifiesData` for statements that start with WITH).
    public var isDML: Bool { self == .insert || self == .update || self == .delete || self == .merge }

    /// CREATE, or a first keyword the proxy does not know (TRUNCATE, ALTER, DROP, CALL, DO, but also SHOW or
    /// VALUES): such a statement may change data even though it is not DML.
    public var mayBeDDLOrCall: Bool { self == .create || self == .other }
}

public enum SQLBytes {
    static let keywords: [([UInt8], LeadingKeyword)] = ([
        ("BEGIN", .begin), ("START", .start), ("COMMIT", .commit), ("END", .end), ("ROLLBACK", .rollback), ("ABORT", .abort),
        ("SET", .set), ("RESET", .reset), ("PREPARE", .prepare), ("DEALLOCATE", .deallocate), ("DISCARD", .discard),
        ("LISTEN", .listen), ("CREATE", .create), ("DECLARE", .declare), ("INSERT", .insert), ("UPDATE", .update),
        ("DELETE", .delete), ("MERGE", .merge), ("COPY", .copy), ("WITH", .with), ("SELECT", .select),
    ] as [(String, LeadingKeyword)]).map { (Array($0.0.utf8), $0.1) }

    @inline(__always) static func upper(_ c: UInt8) -> UInt8 { c >= 0x61 && c <= 0x7A ? c - 0x20 : c }
    @inline(__always) static func lower(_ c: UInt8) -> UInt8 { c >= 0x41 && c <= 0x5A ? c + 0x20 : c }

    static let deallocate = Array("DEALLOCATE".utf8)

    /// The first keyword, skipping whitespace, `--` and `/* */` comments and opening parentheses.
    public static func leadingKeyword(_ raw: UnsafeRawBufferPointer) -> LeadingKeyword {
        var i = 0
        let n = raw.count
        guard n > 0, let text = raw.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return .other }
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
        // SELECT, the most common statement, is none of ours: one masked 6-byte comparison instead of the
        // word loop (`& 0xDF` upper-cases letters).
        if n - i >= 7 {
            let word = UInt64(raw.loadUnaligned(fromByteOffset: i, as: UInt32.self).littleEndian)
                | UInt64(raw.loadUnaligned(fromByteOffset: i + 4, as: UInt16.self).littleEndian) << 32
            if word & 0xDFDF_DFDF_DFDF == 0x5443_454C_4553 { // "SELECT", little-endian
                return SQLText.isWordByte(text[i + 6]) ? .other : .select
            }
        }
        // Keywords are letters only: `& 0xDF` upper-cases a letter and maps nothing else into A–Z.
        var length = 0
        var packed: UInt64 = 0
        while i + length < n {
            let u = text[i + length] & 0xDF
            guard u >= 0x41 && u <= 0x5A else { break }
            if length == 10 { return .other } // longer than DEALLOCATE
            if length < 8 { packed |= UInt64(u) << (8 * UInt64(length)) }
            length += 1
        }
        // A digit or underscore right after the letters makes it an identifier (SET_x), not a keyword.
        if i + length < n, SQLText.isWordByte(text[i + length]) { return .other }
        guard length >= 3 else { return .other }
        if length == 10 {
            for j in 0..<10 where upper(text[i + j]) != deallocate[j] { return .other }
            return .deallocate
        }
        guard length <= 8 else { return .other }
        // Little-endian packed, upper-case keywords (generated from `keywords`; SQLBytesTests checks they agree).
        switch packed {
        case 0x4E49474542: return .begin // BEGIN
        case 0x5452415453: return .start // START
        case 0x54494D4D4F43: return .commit // COMMIT
        case 0x444E45: return .end // END
        case 0x4B4341424C4C4F52: return .rollback // ROLLBACK
        case 0x54524F4241: return .abort // ABORT
        case 0x544553: return .set // SET
        case 0x5445534552: return .reset // RESET
        case 0x45524150455250: return .prepare // PREPARE
        case 0x44524143534944: return .discard // DISCARD
        case 0x4E455453494C: return .listen // LISTEN
        case 0x455441455243: return .create // CREATE
        case 0x4552414C434544: return .declare // DECLARE
        case 0x545245534E49: return .insert // INSERT
        case 0x455441445055: return .update // UPDATE
        case 0x4554454C4544: return .delete // DELETE
        case 0x454752454D: return .merge // MERGE
        case 0x59504F43: return .copy // COPY
        case 0x48544957: return .with // WITH
        case 0x5443454C4553: return .select // SELECT
        default: return .other
        }
    }

    /// The first keyword of a String's text (no allocation: the String's UTF-8 is read in place).
    public static func leadingKeyword(_ text: String) -> LeadingKeyword {
        var t = text
        return t.withUTF8 { leadingKeyword(UnsafeRawBufferPointer($0)) }
    }

    /// Case-insensitive search for `pattern` (given in lower case).
    public static func contains(_ text: UnsafeRawBufferPointer, lowercased pattern: [UInt8]) -> Bool {
        let m = pattern.count, n = text.count
        guard m > 0, n >= m, let first = pattern.first, let base = text.baseAddress else { return m == 0 }
        return pattern.withUnsafeBufferPointer { pat -> Bool in
            let p = base.assumingMemoryBound(to: UInt8.self)
            let firstUpper = upper(first)
            var i = 0
            let last = n - m
            while i <= last {
                let c = p[i]
                if c == first || c == firstUpper {
                    var j = 1
                    while j < m && lower(p[i + j]) == pat[j] { j += 1 }
                    if j == m { return true }
                }
                i += 1
            }
            return false
        }
    }

    public static func contains(_ text: String, lowercased pattern: [UInt8]) -> Bool {
        var t = text
        return t.withUTF8 { contains(UnsafeRawBufferPointer($0), lowercased: pattern) }
    }

    static let dmlWords = ["insert", "update", "delete", "merge"].map { Array($0.utf8) }

    /// Whether a statement may change data: plain DML, or a `WITH` whose text names a DML verb as a whole
    /// word (`WITH moved AS (DELETE ...) INSERT ...`). The check errs towards yes (a `FOR UPDATE` or a verb
    /// in a string literal counts): for sync mirroring that only wraps a read in an implicit transaction.
    public static func modifiesData(_ text: String) -> Bool {
        var t = text
        return t.withUTF8 { modifiesData(UnsafeRawBufferPointer($0), keyword: leadingKeyword(UnsafeRawBufferPointer($0))) }
    }

    /// The same, for a statement whose leading keyword is known already.
    public static func modifiesData(_ raw: UnsafeRawBufferPointer, keyword: LeadingKeyword) -> Bool {
        if keyword.isDML { return true }
        return keyword == .with && dmlWords.contains { containsWord(raw, lowercased: $0) }
    }

    /// Whether a mirrored statement counts as a write for the async order check: it may change data, or it is a COPY.
    public static func isWrite(_ raw: UnsafeRawBufferPointer, keyword: LeadingKeyword) -> Bool {
        keyword == .copy || modifiesData(raw, keyword: keyword)
    }

    /// Case-insensitive search for `word` (lower case) standing alone: no letter, digit or `_` on either side.
    public static func containsWord(_ text: UnsafeRawBufferPointer, lowercased word: [UInt8]) -> Bool {
        let m = word.count, n = text.count
        guard m > 0, n >= m, let base = text.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return false }
        var i = 0
        while i <= n - m {
            if lower(base[i]) == word[0] && (i == 0 || !SQLText.isWordByte(base[i - 1])) {
                var j = 1
                while j < m && lower(base[i + j]) == word[j] { j += 1 }
                if j == m && (i + m == n || !SQLText.isWordByte(base[i + m])) { return true }
            }
            i += 1
        }
        return false
    }

    static let advisory = Array("advisory".utf8)

    /// Whether the text may call an advisory-lock function: memchr finds each `v`/`V` (rare in SQL), and
    /// only there is `advisory` compared, case-insensitively.
    public static func mayTakeAdvisoryLock(_ text: UnsafeRawBufferPointer) -> Bool {
        // A function call needs a parenthesis: one memchr dismisses most statements.
        guard let base = text.baseAddress, text.count >= 8, RawBytes.index(of: 0x28, in: text) != nil else { return false }
        let p = base.assumingMemoryBound(to: UInt8.self)
        for v: UInt8 in [0x76, 0x56] {
            var from = 1
            while let at = RawBytes.index(of: v, in: text, from: from) {
                // "advisory": the v is at index 2.
                if at >= 2 && at + 6 <= text.count {
                    var j = 0
                    while j < 8 && lower(p[at - 2 + j]) == advisory[j] { j += 1 }
                    if j == 8 { return true }
                }
                from = at + 1
            }
        }
        return false
    }

    /// Whether `byte` occurs (memchr).
    public static func containsByte(_ text: UnsafeRawBufferPointer, _ byte: UInt8) -> Bool {
        RawBytes.index(of: byte, in: text) != nil
    }

    /// Whether anything but white space follows a `;`: the text may hold a second statement (`SELECT 1;
    /// INSERT …`). A trailing `;` (pgbench, psql) is not one; a `;` in a literal errs towards yes.
    public static func mayHoldSeveralStatements(_ text: UnsafeRawBufferPointer) -> Bool {
        guard let first = RawBytes.index(of: 0x3B, in: text) else { return false }
        var i = first + 1
        while i < text.count {
            switch text[i] {
            case 0x20, 0x09, 0x0A, 0x0D, 0x3B: i += 1
            default: return true
            }
        }
        return false
    }
}

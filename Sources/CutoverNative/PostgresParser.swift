// libpg_query (PostgreSQL's own parser) behind a safe call: fingerprint, normalized text, JSON parse tree.
import CPGQuery

/// What libpg_query says of one statement text. Not thread-safe across loops sharing it: call from one thread.
public enum PostgresParser {
    public struct Result: Sendable, Equatable {
        public var fingerprint: String?
        public var normalized: String?
        public var parseTreeJSON: String?
        public var error: String?
    }

    public static func parse(_ text: String) -> Result {
        var r = Result()
        let fp = pg_query_fingerprint(text)
        if let e = fp.error { r.error = String(cString: e.pointee.message) } else if let s = fp.fingerprint_str { r.fingerprint = String(cString: s) }
        pg_query_free_fingerprint_result(fp)
        let norm = pg_query_normalize(text)
        if norm.error == nil, let s = norm.normalized_query { r.normalized = String(cString: s) }
        pg_query_free_normalize_result(norm)
        let parsed = pg_query_parse(text)
        if parsed.error == nil, let tree = parsed.parse_tree { r.parseTreeJSON = String(cString: tree) }
        pg_query_free_parse_result(parsed)
        return r
    }

    /// The statements of one simple Query's text, cut where PostgreSQL's scanner ends them (a `;` in a string,
    /// a comment or a dollar quote does not cut); the whole text when it cannot be split.
    public static func splitStatements(_ text: String) -> [String] {
        let result = pg_query_split_with_scanner(text)
        defer { pg_query_free_split_result(result) }
        guard result.error == nil, result.n_stmts > 0, let statements = result.stmts else { return [text] }
        let bytes = Array(text.utf8)
        var out: [String] = []
        for k in 0..<Int(result.n_stmts) {
            guard let s = statements[k]?.pointee else { continue }
            // A length of 0 means "to the end of the text" (the last statement, without a `;`).
            let start = Int(s.stmt_location), end = s.stmt_len == 0 ? bytes.count : min(bytes.count, start + Int(s.stmt_len))
            guard start >= 0, start < end else { continue }
            out.append(String(decoding: bytes[start..<end], as: UTF8.self))
        }
        return out.isEmpty ? [text] : out
    }
}

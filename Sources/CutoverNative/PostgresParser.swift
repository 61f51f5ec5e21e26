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
}

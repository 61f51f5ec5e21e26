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

    /// The parse tree alone, as JSON (nil and the error's message when the text does not parse).
    public static func parseTree(_ text: String) -> (json: String?, error: String?) {
        let parsed = pg_query_parse(text)
        defer { pg_query_free_parse_result(parsed) }
        if let e = parsed.error { return (nil, String(cString: e.pointee.message)) }
        return (parsed.parse_tree.map { String(cString: $0) }, nil)
    }

    /// One token of PostgreSQL's scanner: its byte range in the text and its kind (the `Token` enum of
    /// libpg_query's pg_query.proto: an ASCII punctuation character is its own code, `(` = 40).
    public struct Token: Equatable, Sendable {
        public var start: Int
        public var end: Int
        public var kind: Int
        public init(start: Int, end: Int, kind: Int) { self.start = start; self.end = end; self.kind = kind }
    }

    /// The text's tokens, as PostgreSQL's scanner cuts them (strings, quoted names and comments handled by
    /// it, not by us); nil if it cannot scan the text. libpg_query answers with a protobuf `ScanResult`,
    /// decoded here (two small messages of varints: no protobuf library for that).
    public static func tokens(_ text: String) -> [Token]? {
        let result = pg_query_scan(text)
        defer { pg_query_free_scan_result(result) }
        guard result.error == nil, let data = result.pbuf.data else { return nil }
        let bytes = UnsafeRawBufferPointer(start: data, count: Int(result.pbuf.len))
        var reader = ProtobufReader(bytes[...])
        var out: [Token] = []
        while let (field, wire) = reader.key() {
            guard field == 2, wire == 2, let token = reader.lengthDelimited() else {
                guard reader.skip(wire) else { return nil }
                continue
            }
            var t = ProtobufReader(token)
            var start = 0, end = 0, kind = 0
            while let (f, w) = t.key() {
                if w == 0, let v = t.varint() {
                    switch f { case 1: start = Int(v); case 2: end = Int(v); case 4: kind = Int(v); default: break }
                } else if !t.skip(w) { return nil }
            }
            out.append(Token(start: start, end: end, kind: kind))
        }
        return out
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

/// Reads the protobuf wire format: varints and length-delimited fields (all the scan result uses).
struct ProtobufReader {
    private var rest: Slice<UnsafeRawBufferPointer>
    init(_ bytes: Slice<UnsafeRawBufferPointer>) { rest = bytes }

    mutating func varint() -> UInt64? {
        var value: UInt64 = 0, shift: UInt64 = 0
        while let b = rest.first {
            rest = rest.dropFirst()
            value |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 { return value }
            shift += 7
            if shift > 63 { return nil }
        }
        return nil
    }

    /// The next field's number and wire type; nil at the end.
    mutating func key() -> (Int, Int)? {
        guard !rest.isEmpty, let k = varint() else { return nil }
        return (Int(k >> 3), Int(k & 7))
    }

    mutating func lengthDelimited() -> Slice<UnsafeRawBufferPointer>? {
        guard let n = varint(), n <= UInt64(rest.count) else { return nil }
        let field = rest.prefix(Int(n))
        rest = rest.dropFirst(Int(n))
        return field
    }

    mutating func skip(_ wire: Int) -> Bool {
        switch wire {
        case 0: return varint() != nil
        case 1: guard rest.count >= 8 else { return false }; rest = rest.dropFirst(8); return true
        case 2: return lengthDelimited() != nil
        case 5: guard rest.count >= 4 else { return false }; rest = rest.dropFirst(4); return true
        default: return false
        }
    }
}

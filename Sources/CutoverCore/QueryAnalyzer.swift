// libpg_query, PostgreSQL's own parser: fingerprints, normalized text (literals as $n) and the schemas a
// statement names. Results are cached by text so statements already seen cost a dictionary lookup.
import CutoverNative

/// What the parser says about one statement text.
public struct QueryAnalysis: Sendable, Equatable {
    public var fingerprint: String?
    public var normalized: String?
    /// Schema names qualifying relations in the statement (`onboarding.candidates` → "onboarding").
    public var schemas: Set<String>
    public var parseError: String?
}

/// Not thread-safe (one per event loop); libpg_query itself keeps per-thread memory contexts.
public final class QueryAnalyzer {
    private var cache: [String: QueryAnalysis] = [:]
    private let capacity: Int
    public private(set) var parses = 0

    public init(capacity: Int = 4096) { self.capacity = capacity }

    public func analyze(_ text: String) -> QueryAnalysis {
        if let hit = cache[text] { return hit }
        parses += 1
        let parsed = PostgresParser.parse(text)
        let result = QueryAnalysis(fingerprint: parsed.fingerprint, normalized: parsed.normalized,
                                   schemas: parsed.parseTreeJSON.map(Self.schemaNames(inJSON:)) ?? [], parseError: parsed.error)
        if cache.count >= capacity { cache.removeAll(keepingCapacity: true) }
        cache[text] = result
        return result
    }

    /// Collects every `"schemaname":"x"` in libpg_query's JSON parse tree (RangeVar and friends).
    static func schemaNames(inJSON json: String) -> Set<String> {
        var out: Set<String> = []
        let key = "\"schemaname\":\""
        var rest = json[...]
        while let r = rest.range(of: key) {
            let after = rest[r.upperBound...]
            guard let end = after.firstIndex(of: "\"") else { break }
            out.insert(String(after[..<end]))
            rest = after[end...]
        }
        return out
    }
}

/// Cross-schema detection: a cheap byte scan first, the parser only for texts that might qualify a name
/// with another route's schema.
public struct CrossSchemaDetector: Sendable {
    /// Every schema a route owns on the legacy side, lower-cased.
    public let knownSchemas: Set<String>
    /// `schema.` and `"schema".` as lower-case bytes, for the allocation-free pre-check.
    private let patterns: [(schema: String, plain: [UInt8], quoted: [UInt8])]

    public init(knownSchemas: Set<String>) {
        self.knownSchemas = Set(knownSchemas.map { $0.lowercased() })
        patterns = self.knownSchemas.sorted().map { ($0, Array(($0 + ".").utf8), Array(("\"" + $0 + "\".").utf8)) }
    }

    /// The schemas other than `own` whose qualified form appears in the bytes (a cheap over-approximation).
    public func candidates(in text: UnsafeRawBufferPointer, own: String?) -> [String] {
        var out: [String] = []
        for p in patterns where p.schema != own && (SQLBytes.contains(text, lowercased: p.plain) || SQLBytes.contains(text, lowercased: p.quoted)) {
            out.append(p.schema)
        }
        return out
    }

    /// Schemas other than `own` that `text` names, per the parser. Most statements are dismissed without parsing.
    public func foreignSchemas(in text: String, own: String?, analyzer: QueryAnalyzer) -> Set<String> {
        var t = text
        let candidates = t.withUTF8 { utf8 -> [String] in
            let raw = UnsafeRawBufferPointer(utf8)
            // A qualified name needs a dot: one memchr dismisses most statements.
            return SQLBytes.containsByte(raw, 0x2E) ? self.candidates(in: raw, own: own?.lowercased()) : []
        }
        guard !candidates.isEmpty else { return [] }
        return analyzer.analyze(text).schemas.intersection(candidates)
    }
}

// The proxy's own libpq sessions to a route's backends, blocking (the offline commands, and the proxy's
// catalog reads and sequence carries on libuv's thread pool): how to connect, and what they ask.
import CutoverNative

extension BackendConfig {
    /// libpq keywords and values for this backend: its own login, TLS mode and CA; values rendered alike on
    /// both sides whatever their server defaults (as pg_dump does); `schema` as the search_path if given.
    public func libpqParameters(schema: String? = nil, applicationName: String = "cutover", statementTimeoutMs: Int? = nil) -> [(String, String)] {
        var options = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex"
        if let statementTimeoutMs { options += " -c statement_timeout=\(statementTimeoutMs)" }
        if let schema { options += " -c search_path=" + Verification.quoteIdentifier(schema).replacingOccurrences(of: " ", with: "\\ ") }
        var p = [("host", host), ("port", "\(port)"), ("dbname", database), ("user", user), ("sslmode", tls.rawValue),
                 ("application_name", applicationName), ("connect_timeout", "10"), ("client_encoding", "UTF8"), ("options", options)]
        if let password { p.append(("password", password)) }
        if let tlsCAFile { p.append(("sslrootcert", tlsCAFile)) }
        return p
    }
}

/// What the proxy itself reads from and writes to a route's backends.
public enum BackendSession {
    /// The leader's catalog for a route side: `schema` (nil: the schema the backend user lands in).
    public static func readCatalog(_ backend: BackendConfig, schema: String?) -> Result<WriteCatalog, BackendSessionError> {
        do {
            let s = try PGSession(parameters: backend.libpqParameters(schema: schema, applicationName: "cutover catalog", statementTimeoutMs: 10_000),
                                  reaching: "backend \(backend.name)")
            defer { s.close() }
            let name = try schema ?? s.run("SELECT current_schema()").rows.first?.first ?? "public"
            // Only pg_catalog on the path: defaults and types come back schema-qualified (`nextval('onboarding.t_id_seq'
            // ::regclass)`), so the leader's rewritten statement names the same objects whatever the client's search_path.
            try s.run("SET search_path = pg_catalog")
            var rows = try s.run(WriteCatalog.query, [name]).rows.map { $0.map { $0.isEmpty ? nil : Optional($0) } }
            // Types, though, as the route's schema sees them: a domain or enum of the route's own is named
            // without its schema, which is another schema's name on the other side (public on new).
            try s.run("SELECT pg_catalog.set_config('search_path', pg_catalog.quote_ident($1) || ', pg_catalog', false)", [name])
            let typed = try s.run(WriteCatalog.query, [name]).rows
            if typed.count == rows.count { for k in rows.indices where rows[k].count > 2 && typed[k].count > 2 { rows[k][2] = typed[k][2] } }
            return .success(WriteCatalog(schema: name, rows: rows))
        } catch {
            return .failure(BackendSessionError(description: "\(error)"))
        }
    }

    /// Every sequence of the old leader's schema set on the new leader to at least its value there (never
    /// lowered): with captured values the follower's inserts carry the leader's ids and never draw from
    /// their own sequences, which must be caught up before that side hands out ids. Returns how many were set.
    public static func carrySequences(from old: BackendConfig, schema oldSchema: String?, to new: BackendConfig, schema newSchema: String?)
        -> Result<Int, BackendSessionError> {
        do {
            // Bounded: the route is paused while this runs (connect_timeout 10 s, each statement 10 s).
            let source = try PGSession(parameters: old.libpqParameters(schema: oldSchema, applicationName: "cutover sequences", statementTimeoutMs: 10_000),
                                       reaching: "backend \(old.name)")
            defer { source.close() }
            let target = try PGSession(parameters: new.libpqParameters(schema: newSchema, applicationName: "cutover sequences", statementTimeoutMs: 10_000),
                                       reaching: "backend \(new.name)")
            defer { target.close() }
            let fromSchema = try oldSchema ?? source.run("SELECT current_schema()").rows.first?.first ?? "public"
            let toSchema = try newSchema ?? target.run("SELECT current_schema()").rows.first?.first ?? "public"
            let sequences = try source.run(sequenceValues, [fromSchema]).rows
            let present = Set(try target.run(sequenceValues, [toSchema]).rows.map { $0[0] })
            var set = 0
            for row in sequences where present.contains(row[0]) {
                // One the new leader has but the old leader's user cannot read cannot be carried: the flip must
                // not go on blind. (Not on the new leader: nothing to carry.)
                guard row[3] == "true" else { throw BackendSessionError(description: "sequence \(fromSchema).\(row[0]): no privilege to read it on backend \(old.name)") }
                guard !row[1].isEmpty else { continue } // never used there
                let name = Verification.quoteIdentifier(toSchema) + "." + Verification.quoteIdentifier(row[0])
                // Never moved back: the farther of the two along the sequence's direction.
                let farther = row[2].hasPrefix("-") ? "LEAST" : "GREATEST"
                try target.run("SELECT pg_catalog.setval($1::regclass, \(farther)($2::bigint, (SELECT last_value FROM \(name))), true)", [name, row[1]])
                set += 1
            }
            return .success(set)
        } catch {
            return .failure(BackendSessionError(description: "\(error)"))
        }
    }

    /// A schema's sequences with their last value handed out (empty when none was yet). $1: schema.
    static let sequenceValues = """
        SELECT sequencename, COALESCE(last_value::text, ''), increment_by::text,
               pg_catalog.has_sequence_privilege(pg_catalog.quote_ident(schemaname) || '.' || pg_catalog.quote_ident(sequencename), 'SELECT, USAGE')::text
        FROM pg_catalog.pg_sequences WHERE schemaname = $1 ORDER BY 1
        """
}

public struct BackendSessionError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

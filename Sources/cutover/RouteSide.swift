// One side of a route for the offline commands (`verify`, `backfill`): a libpq session to its backend and its schema.
import ArgumentParser
import CutoverCore

/// One side of a route: a session to its backend and the schema its tables live in there.
struct RouteSide: CustomStringConvertible {
    let session: PGSession
    let schema: String
    let database: String
    let backendName: String

    /// Where this side's tables are looked for, as every "missing" message names it.
    var description: String { "schema \(schema) of database \(database) on backend \(backendName)" }

    /// Both sides of `route` from the config file, connected. Exits with status 2 (and says why) when the
    /// config, the route or a backend fails.
    static func connectBoth(configPath: String, route: String) throws -> (legacy: RouteSide, new: RouteSide) {
        let config: CutoverConfig
        do { config = try ConfigLoader.load(path: configPath) } catch let e as ConfigErrors {
            for p in e.problems { print("\(configPath): \(p)") }
            throw ExitCode(2)
        }
        guard let r = config.routes[route], let legacy = config.backends[r.legacy], let new = config.backends[r.new] else {
            print("cutover: no route \(route) in \(configPath)")
            throw ExitCode(2)
        }
        do {
            let l = try RouteSide(backend: legacy, schema: r.legacySchema)
            do { return (l, try RouteSide(backend: new, schema: r.newSchema)) } catch { l.session.close(); throw error }
        } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }

    /// Without a schema (a legacy side without `legacy_schema`), the one the backend user lands in, as a
    /// session through the proxy does.
    init(backend: BackendConfig, schema: String?) throws {
        var parameters = [("host", backend.host), ("port", "\(backend.port)"), ("dbname", backend.database), ("user", backend.user),
                          ("sslmode", backend.tls.rawValue), ("application_name", "cutover"), ("connect_timeout", "10"),
                          // Both sides render values the same way whatever their server defaults (as pg_dump does):
                          // COPY and the row hashes work on text.
                          ("client_encoding", "UTF8"),
                          ("options", "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=3 -c bytea_output=hex")]
        if let password = backend.password { parameters.append(("password", password)) }
        if let ca = backend.tlsCAFile { parameters.append(("sslrootcert", ca)) }
        session = try PGSession(parameters: parameters, reaching: "backend \(backend.name)")
        backendName = backend.name
        database = backend.database
        self.schema = try schema ?? session.run("SELECT current_schema()").rows.first?.first ?? "public"
    }

    /// The schema's tables (or those of `names` among them), in name order.
    func tables(only names: [String]) throws -> [String] {
        try session.run(Verification.listTables, [schema]).rows.map { $0[0] }.filter { names.isEmpty || names.contains($0) }
    }

    /// The names among `requested` (`--table`) that none of `sides` has, said with where they were looked for;
    /// nil when each is somewhere.
    static func unknownTables(_ requested: [String], on sides: [RouteSide]) throws -> String? {
        var unknown = requested
        for side in sides {
            let present = Set(try side.tables(only: []))
            unknown.removeAll(where: present.contains)
        }
        guard !unknown.isEmpty else { return nil }
        return "no table \(unknown.joined(separator: ", ")) in " + sides.map(\.description).joined(separator: " nor in ")
    }

    /// The columns a COPY can fill, in order.
    func copyColumns(_ table: String) throws -> [String] {
        try session.run(BackfillPlan.listCopyColumns, [schema, table]).rows.map { $0[0] }
    }

    /// `schema.table`, quoted.
    func qualified(_ table: String) -> String { Verification.quoteIdentifier(schema) + "." + Verification.quoteIdentifier(table) }

    /// This side's columns of `table` and their types, in order (empty when the table is not there).
    func columns(_ table: String) throws -> [(name: String, type: String)] {
        try session.run(Verification.listColumns, [schema, table]).rows.map { ($0[0], $0[1]) }
    }

    /// The table over `names` (legacy's columns; nil: this side's own). Nil when the table is not there
    /// (any more); when this side lacks one of `names`, the table is not read (rows -1) and its columns
    /// say which is missing.
    func fingerprint(_ table: String, names: [String]? = nil) throws -> (TableFingerprint, names: [String])? {
        let own = try columns(table)
        guard !own.isEmpty else { return nil }
        let wanted = names ?? own.map(\.name)
        let types = Dictionary(own.map { ($0.name, $0.type) }, uniquingKeysWith: { a, _ in a })
        let described = Verification.describeColumns(wanted, types: types)
        guard wanted.allSatisfy({ types[$0] != nil }) else {
            var unread = TableFingerprint.notRead
            unread.columns = described
            return (unread, wanted)
        }
        guard let row = try session.run(Verification.fingerprintQuery(schema: schema, table: table, columns: wanted)).rows.first else { return nil }
        return (TableFingerprint(columns: described, rows: Int64(row[0]) ?? -1, hash: row[1]), wanted)
    }
}

// `cutover verify`: compares a route's tables on its legacy schema and its new database, straight from the backends.
import ArgumentParser
import CutoverCore
import Foundation

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare a route's tables on its legacy schema and its new database: columns, row counts, contents.",
        discussion: """
            Connects to both backends with the credentials in the config (not through the proxy). Each table is
            read in one scan per side: its row count and an order-insensitive hash of its rows. A table that
            differs is checked again (writes still on their way to the follower explain a difference for a
            moment). Exit status: 0 every table matches, 1 some differ, 2 the config or a backend failed.
            """)
    @OptionGroup var options: ConfigOption
    @Argument(help: "The route (its database name).") var route: String
    @Option(name: .customLong("table"), help: "Only this table (repeatable).") var tables: [String] = []
    @Option(help: "How many times a differing table is checked before it is reported (1 s apart).") var attempts = 3

    func validate() throws {
        guard attempts >= 1 else { throw ValidationError("--attempts must be at least 1") }
    }

    func run() throws {
        let config: CutoverConfig
        do { config = try ConfigLoader.load(path: options.config) } catch let e as ConfigErrors {
            for p in e.problems { print("\(options.config): \(p)") }
            throw ExitCode(2)
        }
        guard let r = config.routes[route], let legacyBackend = config.backends[r.legacy], let newBackend = config.backends[r.new] else {
            print("cutover: no route \(route) in \(options.config)")
            throw ExitCode(2)
        }
        do {
            let legacy = try VerifiedSide(backend: legacyBackend, schema: r.legacySchema)
            let new = try VerifiedSide(backend: newBackend, schema: nil)
            defer { legacy.session.close(); new.session.close() }
            var rows = Verification.compare(legacy: try legacy.fingerprints(only: tables), new: try new.fingerprints(only: tables))
            for _ in 1..<attempts where rows.contains(where: \.verdict.mayBeTransient) {
                Thread.sleep(forTimeInterval: 1)
                for i in rows.indices where rows[i].verdict.mayBeTransient {
                    rows[i] = TableComparison(table: rows[i].table, legacy: try legacy.fingerprint(rows[i].table),
                                              new: try new.fingerprint(rows[i].table))
                }
            }
            printTable(["table", "legacy_rows", "new_rows", "verdict"], rows.map {
                [$0.table, $0.legacy.map { "\($0.rows)" } ?? "-", $0.new.map { "\($0.rows)" } ?? "-", $0.verdict.rawValue]
            })
            for row in rows where row.verdict == .columnsDiffer {
                print("\n\(row.table):\n  legacy: \(row.legacy?.columns ?? "")\n  new:    \(row.new?.columns ?? "")")
            }
            let differing = rows.filter { $0.verdict != .match }.count
            print("\nroute \(route): \(rows.count) table\(rows.count == 1 ? "" : "s"), \(rows.count - differing) match, \(differing) differ "
                  + "(legacy: schema \(legacy.schema) on \(legacyBackend.name); new: schema \(new.schema) on \(newBackend.name))")
            if differing > 0 { throw ExitCode(1) }
        } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }
}

/// One side of a route: a session to its backend and the schema its tables live in there.
struct VerifiedSide {
    let session: PGSession
    let schema: String

    /// Without a schema, the one the backend user lands in (as a session through the proxy does).
    init(backend: BackendConfig, schema: String?) throws {
        var parameters = [("host", backend.host), ("port", "\(backend.port)"), ("dbname", backend.database), ("user", backend.user),
                          ("sslmode", backend.tls.rawValue), ("application_name", "cutover verify"), ("connect_timeout", "10")]
        if let password = backend.password { parameters.append(("password", password)) }
        if let ca = backend.tlsCAFile { parameters.append(("sslrootcert", ca)) }
        session = try PGSession(parameters: parameters, reaching: "backend \(backend.name)")
        self.schema = try schema ?? session.run("SELECT current_schema()").rows.first?.first ?? "public"
    }

    func fingerprints(only names: [String]) throws -> [String: TableFingerprint] {
        var out: [String: TableFingerprint] = [:]
        for row in try session.run(Verification.listTables, [schema]).rows where names.isEmpty || names.contains(row[0]) {
            out[row[0]] = try fingerprint(row[0])
        }
        return out
    }

    /// Nil when the table is not there (any more).
    func fingerprint(_ table: String) throws -> TableFingerprint? {
        guard let columns = try session.run(Verification.listColumns, [schema, table]).rows.first?.first else { return nil }
        guard let row = try session.run(Verification.fingerprintQuery(schema: schema, table: table)).rows.first else { return nil }
        return TableFingerprint(columns: columns, rows: Int64(row[0]) ?? -1, hash: row[1])
    }
}

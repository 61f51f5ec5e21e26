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
        let (legacy, new) = try RouteSide.connectBoth(configPath: options.config, route: route)
        defer { legacy.session.close(); new.session.close() }
        do {
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
                  + "(legacy: \(legacy); new: \(new))")
            if differing > 0 { throw ExitCode(1) }
        } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }
}

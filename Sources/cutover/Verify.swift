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
            let legacyTables = try legacy.tables(only: tables)
            /// Legacy's table, and the new side's over legacy's columns.
            func compare(_ table: String) throws -> TableComparison {
                guard let (l, names) = try legacy.fingerprint(table) else { return TableComparison(table: table, legacy: nil, new: nil) }
                return TableComparison(table: table, legacy: l, new: try new.fingerprint(table, names: names)?.0)
            }
            var rows = try legacyTables.map(compare)
            rows += try new.tables(only: tables).filter { !legacyTables.contains($0) }.map {
                TableComparison(table: $0, legacy: nil, new: try new.fingerprint($0)?.0)
            }
            rows.sort { $0.table < $1.table }
            for _ in 1..<attempts where rows.contains(where: \.verdict.mayBeTransient) {
                Thread.sleep(forTimeInterval: 1)
                for i in rows.indices where rows[i].verdict.mayBeTransient { rows[i] = try compare(rows[i].table) }
            }
            printTable(["table", "legacy_rows", "new_rows", "verdict"], rows.map {
                [$0.table, $0.legacy.map { "\($0.rows)" } ?? "-", $0.new.map { "\($0.rows)" } ?? "-", $0.verdict.rawValue]
            })
            for row in rows where row.verdict == .columnsDiffer {
                print("\n\(row.table):\n  legacy: \(row.legacy?.columns ?? "")\n  new:    \(row.new?.columns ?? "")")
            }
            let differing = rows.filter(\.verdict.isDifference).count
            print("\nroute \(route): \(rows.count) table\(rows.count == 1 ? "" : "s"), \(rows.filter { $0.verdict == .match }.count) match, \(differing) differ "
                  + "(legacy: \(legacy); new: \(new))")
            if differing > 0 { throw ExitCode(1) }
        } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }
}

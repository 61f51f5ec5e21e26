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
            moment). Exit status: 0 every table matches, 1 some differ, 2 the config or a backend failed, or a
            --table is on neither side.
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
            /// Legacy's table, and the new side's over legacy's columns.
            func read(_ table: String) throws -> (TableFingerprint, TableFingerprint?)? {
                guard let (l, names) = try legacy.fingerprint(table) else { return nil }
                return (l, try new.fingerprint(table, names: names)?.0)
            }
            if let unknown = try RouteSide.unknownTables(tables, on: [legacy, new]) {
                print("cutover: \(unknown)")
                throw ExitCode(2)
            }
            var legacySide: [String: TableFingerprint] = [:], newSide: [String: TableFingerprint] = [:]
            for table in try legacy.tables(only: tables) {
                guard let (l, n) = try read(table) else { continue }
                legacySide[table] = l
                newSide[table] = n
            }
            // Tables legacy does not have are listed, not compared: no need to read them.
            for table in try new.tables(only: tables) where legacySide[table] == nil { newSide[table] = .notRead }
            var rows = Verification.compare(legacy: legacySide, new: newSide)
            for _ in 1..<attempts where rows.contains(where: \.verdict.mayBeTransient) {
                Thread.sleep(forTimeInterval: 1)
                for i in rows.indices where rows[i].verdict.mayBeTransient {
                    let sides = try read(rows[i].table)
                    rows[i] = TableComparison(table: rows[i].table, legacy: sides?.0, new: sides?.1)
                }
            }
            printTable(["table", "legacy_rows", "new_rows", "verdict"], rows.map {
                [$0.table, $0.legacy?.rowsText ?? "-", $0.new?.rowsText ?? "-", $0.verdict.rawValue]
            })
            for row in rows where row.verdict == .missingOnNew { print("\n\(row.table): missing in \(new)") }
            for row in rows where row.verdict == .columnsDiffer {
                print("\n\(row.table):\n  legacy: \(row.legacy?.columns ?? "")\n  new:    \(row.new?.columns ?? "")")
            }
            let differing = rows.filter(\.verdict.isDifference).count
            print("\nroute \(route): \(counted(rows.count, "table")), \(rows.filter { $0.verdict == .match }.count) match, \(differing) differ "
                  + "(legacy: \(legacy); new: \(new))")
            if differing > 0 { throw ExitCode(1) }
        } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }
}

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

            With --mark-in-sync (a route out of sync after a repair, or after an unclean shutdown), it first
            asks the proxy (--admin-url or $CUTOVER_ADMIN_URL) for the route's pause: the route must be
            held by a settled PAUSE, so nothing is written while both sides are read. If every table matches,
            it then sends MARK IN SYNC with that pause's id: the proxy accepts it only while that very pause
            still holds. Exit 1 also when the route is not paused.
            """)
    @OptionGroup var options: ConfigOption
    @Argument(help: "The route (its database name).") var route: String
    @Option(name: .customLong("table"), help: "Only this table (repeatable).") var tables: [String] = []
    @Option(help: "How many times a differing table is checked before it is reported (1 s apart).") var attempts = 3
    @Flag(help: "Under the route's settled PAUSE: if every table matches, declare the route in sync (MARK IN SYNC).") var markInSync = false
    @OptionGroup var admin: AdminOptions

    func validate() throws {
        guard attempts >= 1 else { throw ValidationError("--attempts must be at least 1") }
    }

    func run() throws {
        // Read before anything is compared: the check counts only if this same pause still holds when it ends.
        let pauseID = markInSync ? try settledPause() : nil
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
            if differing > 0 {
                if markInSync { print("cutover: not marked in sync: \(counted(differing, "table")) differ") }
                throw ExitCode(1)
            }
            if let pauseID {
                try admin.printResults(of: ["MARK IN SYNC \(route) \(pauseID)"])
            }
        } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }

    /// The id of the settled PAUSE holding the route now; exits 1 (and says what to do) without one.
    private func settledPause() throws -> Int {
        var found: Int?
        try admin.session { client in
            let r = try client.run("SHOW ROUTES")
            guard let name = r.columns.firstIndex(of: "route"), let id = r.columns.firstIndex(of: "pause_id"),
                  let settled = r.columns.firstIndex(of: "pause_settled"), let row = r.rows.first(where: { $0[name] == route }) else {
                print("cutover: the proxy has no route \(route) (or is older than MARK IN SYNC)")
                throw ExitCode(1)
            }
            guard let pause = Int(row[id]), row[settled] == "yes" else {
                print("cutover: --mark-in-sync needs route \(route) held by a settled pause: run `cutover pause \(route)` first"
                      + (row[id].isEmpty ? "" : " (pause \(row[id]) has not settled yet: sessions are still in transactions)"))
                throw ExitCode(1)
            }
            found = pause
        }
        return found!
    }
}

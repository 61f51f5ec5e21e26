// `cutover backfill`: copies a route's tables from its legacy schema into its new database, with their sequences.
import ArgumentParser
import CutoverCore

struct Backfill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a route's tables from its legacy schema into its new database, with their sequences.",
        discussion: """
            Reads legacy in one snapshot (REPEATABLE READ) and loads the new side in one transaction: every
            table or none. The new side's tables must exist (apply the service's schema first) with at least
            legacy's columns, and be empty unless --truncate. Referenced tables are loaded before the tables
            that reference them, and each sequence of the legacy schema is set to its legacy value on the
            new side. Rows written to legacy during the copy are not in it: PAUSE the route first (see the
            runbook), then flip it to dual-legacy before RESUME. Check the result with `cutover verify`.
            Exit status: 0 copied, 1 refused (nothing copied), 2 the config or a backend failed.
            """)
    @OptionGroup var options: ConfigOption
    @Argument(help: "The route (its database name).") var route: String
    @Option(name: .customLong("table"), help: "Only this table (repeatable).") var tables: [String] = []
    @Flag(help: "Empty the new side's tables first (in the same transaction).") var truncate = false

    func run() throws {
        let (legacy, new) = try RouteSide.connectBoth(configPath: options.config, route: route)
        defer { legacy.session.close(); new.session.close() }
        do {
            if let unknown = try RouteSide.unknownTables(tables, on: [legacy]) { try refuse([unknown]) }
            let names = try legacy.tables(only: tables)
            guard !names.isEmpty else {
                print("cutover: no tables to copy in \(legacy)")
                throw ExitCode(1)
            }
            var columns: [String: [String]] = [:]
            var problems: [String] = []
            let onNew = Set(try new.tables(only: []))
            for t in names {
                guard onNew.contains(t) else { problems.append("\(t): missing in \(new) (apply the service's schema first)"); continue }
                let legacyColumns = try legacy.copyColumns(t), newColumns = Set(try new.copyColumns(t))
                let lacking = legacyColumns.filter { !newColumns.contains($0) }
                if !lacking.isEmpty { problems.append("\(t): new lacks column(s) \(lacking.joined(separator: ", "))") }
                columns[t] = legacyColumns
            }
            try refuse(problems)
            let references = try new.session.run(BackfillPlan.listForeignKeys, [new.schema]).rows.map { (from: $0[0], to: $0[1]) }
            let order = BackfillPlan.loadOrder(names, references: references)
            try legacy.session.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try new.session.run("BEGIN")
            // Foreign keys declared DEFERRABLE (a cycle needs them) are then checked at COMMIT, not per row.
            try new.session.run("SET CONSTRAINTS ALL DEFERRED")
            if truncate {
                try new.session.run("TRUNCATE " + order.map(new.qualified).joined(separator: ", "))
            } else {
                for t in order where try new.session.run("SELECT EXISTS (SELECT 1 FROM \(new.qualified(t)))").rows.first?.first == "t" {
                    problems.append("\(t): not empty on new (--truncate replaces its rows)")
                }
                try refuse(problems) // the open transactions end with the connections
            }
            var copied: [[String]] = [], total: Int64 = 0
            for t in order {
                let list = columns[t, default: []].map(Verification.quoteIdentifier).joined(separator: ", ")
                let rows = try new.session.copy(from: legacy.session, "COPY (SELECT \(list) FROM \(legacy.qualified(t))) TO STDOUT",
                                                into: "COPY \(new.qualified(t)) (\(list)) FROM STDIN")
                copied.append([t, "\(rows)"])
                total += rows
            }
            let newSequences = Set(try new.session.run(BackfillPlan.listSequences, [new.schema]).rows.map { $0[0] })
            let legacySequences = try legacy.session.run(BackfillPlan.listSequences, [legacy.schema]).rows.map {
                (name: $0[0], owner: $0[1].isEmpty ? nil : $0[1])
            }
            var sequences = 0
            for s in BackfillPlan.sequencesToSet(legacySequences, copied: Set(order), wholeSchema: tables.isEmpty) where newSequences.contains(s) {
                guard let v = try legacy.session.run("SELECT last_value, is_called FROM \(legacy.qualified(s))").rows.first else { continue }
                try new.session.run("SELECT setval($1::regclass, $2::bigint, $3::boolean)", [new.qualified(s), v[0], v[1]])
                sequences += 1
            }
            try new.session.run("COMMIT")
            try legacy.session.run("COMMIT")
            printTable(["table", "rows"], copied)
            print("\nroute \(route): \(counted(order.count, "table")), \(total) rows and \(counted(sequences, "sequence")) "
                  + "copied from \(legacy) to \(new). Check with: cutover verify --config \(options.config) \(route)")
        } catch let e as PGSession.Failure {
            print("cutover: \(e) (nothing copied)")
            throw ExitCode(2)
        }
    }

    private func refuse(_ problems: [String]) throws {
        guard !problems.isEmpty else { return }
        for p in problems { print("cutover: \(p)") }
        print("cutover: nothing copied")
        throw ExitCode(1)
    }
}

// `cutover backfill`: copies a route's tables from one side to the other (legacy → new, or with --reverse
// new → legacy), with their sequences, once the proxy says the route is paused in the phase that makes it safe.
import ArgumentParser
import CutoverCore

struct Backfill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Copy a route's tables from its legacy schema into its new database (or back, --reverse), with their sequences.",
        discussion: """
            Reads the source in one snapshot (REPEATABLE READ) and loads the target in one transaction: every
            table or none. The target's tables must exist (apply the service's schema first) with at least the
            source's columns, and be empty unless --truncate. Referenced tables are loaded before the tables
            that reference them, and each sequence of the source schema is set to its source value on the
            target. --reverse copies the new side back into legacy (after writes went only to new) and always
            replaces legacy's rows of the copied tables, in the same transaction.

            It runs only when the proxy's admin console (--admin-url or CUTOVER_ADMIN_URL) says the route is
            paused in phase legacy (forward) or new (--reverse): then no client writes to the target while its
            rows are replaced, and none is lost between the copy and the flip that starts mirroring. Otherwise
            it refuses, says which phase the route is in and the commands to run, and, when the copy would
            replace rows, lists each target table with its row count. --overwrite-live skips the check, for a
            route no proxy serves; it lists the rows it replaces too. Check the result with `cutover verify`.

            Exit status: 0 copied; 1 refused, nothing copied (the route is not paused in the direction's phase,
            the admin console cannot be asked, a --table is unknown, a table is missing on the target, lacks
            columns there or holds rows without --truncate); 2 the config or a backend failed (nothing copied).
            """)
    @OptionGroup var options: ConfigOption
    @OptionGroup var admin: AdminOptions
    @Argument(help: "The route (its database name).") var route: String
    @Option(name: .customLong("table"), help: "Only this table (repeatable).") var tables: [String] = []
    @Flag(help: "Empty the target's tables first (in the same transaction).") var truncate = false
    @Flag(help: "Copy the new side back into legacy (route paused in phase new); replaces legacy's rows of those tables.")
    var reverse = false
    @Flag(name: .customLong("overwrite-live"), help: "Do not ask the proxy whether the route is paused: only for a route no proxy serves.")
    var overwriteLive = false

    var direction: BackfillDirection { reverse ? .reverse : .forward }
    /// Whether the copy deletes the target's rows first (and so what a refusal must show would be lost).
    var replaces: Bool { truncate || reverse }

    func run() throws {
        let (refusal, pauseID) = overwriteLive ? (nil, nil) : guardRefusal()
        if let refusal { print("cutover: \(refusal)") }
        let (legacy, new) = try RouteSide.connectBoth(configPath: options.config, route: route)
        defer { legacy.session.close(); new.session.close() }
        let (source, target) = direction == .forward ? (legacy, new) : (new, legacy)
        do {
            let names = try tablesToCopy(source)
            if refusal != nil {
                if replaces {
                    print("these rows in \(target) would be lost:")
                    try printRows(of: names, on: target)
                }
                try nothingCopied()
            }
            try copy(names, from: source, to: target, pauseID: pauseID)
        } catch let e as PGSession.Failure {
            print("cutover: \(e) (nothing copied)")
            throw ExitCode(2)
        }
    }

    /// Why the copy may not run, as the proxy sees the route (nil when it is paused in the direction's phase
    /// and that pause has settled), and the id of that pause, checked again before the copy commits.
    private func guardRefusal() -> (String?, String?) {
        do {
            let state = try admin.routeState(route)
            if let refusal = BackfillGuard.refusal(route: route, direction: direction, phase: state?.phase, paused: state?.paused) {
                return (refusal, nil)
            }
            // Settled: every session is held at an idle boundary, so no transaction still running on the source
            // can commit after the copy's snapshot.
            guard let state, state.settled else {
                return ("route \(route) is paused but its pause has not settled (sessions are still in transactions); wait, then run again", nil)
            }
            return (nil, state.pauseID)
        } catch {
            return ("cannot ask the proxy whether route \(route) is paused in phase \(direction.phase.rawValue): \(error); "
                + "if no proxy serves route \(route), run again with --overwrite-live", nil)
        }
    }

    /// Before the copy commits: the pause it started under still holds (a RESUME meanwhile would have let
    /// writes reach the source after the snapshot, and the flip that follows would miss them).
    private func stillUnderPause(_ pauseID: String?) throws {
        guard let pauseID else { return }
        let state = try? admin.routeState(route)
        guard let state, state.pauseID == pauseID, state.settled else {
            print("cutover: the pause of route \(route) ended during the copy (pause \(pauseID), now \(state.map { $0.pauseID.isEmpty ? "none" : $0.pauseID } ?? "unknown")); nothing copied")
            throw ExitCode(1)
        }
    }

    /// The source's tables to copy (all, or those of --table); refuses when a --table is not there or none is.
    private func tablesToCopy(_ source: RouteSide) throws -> [String] {
        if let unknown = try RouteSide.unknownTables(tables, on: [source]) { try refuse([unknown]) }
        let names = try source.tables(only: tables)
        if names.isEmpty { try refuse(["no tables to copy in \(source)"]) }
        return names
    }

    /// Each of `names` the target has, with its row count now: what replacing them destroys.
    private func printRows(of names: [String], on target: RouteSide) throws {
        let present = Set(try target.tables(only: names))
        printTable(["table", "rows"], try names.filter(present.contains).map { t in
            [t, try target.session.run("SELECT count(*) FROM \(target.qualified(t))").rows.first?.first ?? "?"]
        })
    }

    /// The copy itself, one routine for both directions: checks, then one snapshot on the source and one
    /// transaction on the target, tables in foreign-key order, then the sequences.
    private func copy(_ names: [String], from source: RouteSide, to target: RouteSide, pauseID: String?) throws {
        var columns: [String: [String]] = [:]
        var problems: [String] = []
        let onTarget = Set(try target.tables(only: []))
        for t in names {
            guard onTarget.contains(t) else { problems.append("\(t): missing in \(target) (apply the service's schema first)"); continue }
            let sourceColumns = try source.copyColumns(t), targetColumns = Set(try target.copyColumns(t))
            let lacking = sourceColumns.filter { !targetColumns.contains($0) }
            if !lacking.isEmpty { problems.append("\(t): column(s) \(lacking.joined(separator: ", ")) missing in \(target)") }
            columns[t] = sourceColumns
        }
        try refuse(problems)
        if overwriteLive && replaces {
            print("--overwrite-live: not asking a proxy; replacing these rows in \(target):")
            try printRows(of: names, on: target)
        }
        let references = try target.session.run(BackfillPlan.listForeignKeys, [target.schema]).rows.map { (from: $0[0], to: $0[1]) }
        let order = BackfillPlan.loadOrder(names, references: references)
        try source.session.run("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try target.session.run("BEGIN")
        // Foreign keys declared DEFERRABLE (a cycle needs them) are then checked at COMMIT, not per row.
        try target.session.run("SET CONSTRAINTS ALL DEFERRED")
        if replaces {
            try target.session.run("TRUNCATE " + order.map(target.qualified).joined(separator: ", "))
        } else {
            for t in order where try target.session.run("SELECT EXISTS (SELECT 1 FROM \(target.qualified(t)))").rows.first?.first == "t" {
                problems.append("\(t): not empty in \(target) (--truncate replaces its rows)")
            }
            try refuse(problems) // the open transactions end with the connections
        }
        var copied: [[String]] = [], total: Int64 = 0
        for t in order {
            let list = columns[t, default: []].map(Verification.quoteIdentifier).joined(separator: ", ")
            let rows = try target.session.copy(from: source.session, "COPY (SELECT \(list) FROM \(source.qualified(t))) TO STDOUT",
                                               into: "COPY \(target.qualified(t)) (\(list)) FROM STDIN")
            copied.append([t, "\(rows)"])
            total += rows
        }
        let sequences = try copySequences(from: source, to: target, copied: Set(order))
        try stillUnderPause(pauseID) // exits with the transactions open: they roll back with the connections
        try target.session.run("COMMIT")
        try source.session.run("COMMIT")
        printTable(["table", "rows"], copied)
        print("\nroute \(route): \(counted(order.count, "table")), \(total) rows and \(counted(sequences, "sequence")) "
              + "copied from \(source) to \(target). Check with: cutover verify --config \(options.config) \(route)")
    }

    /// Sets each of the source schema's sequences that the target has to the source's state (in the open
    /// transactions): serial and identity columns continue where the source's do. Returns how many.
    private func copySequences(from source: RouteSide, to target: RouteSide, copied: Set<String>) throws -> Int {
        let targetSequences = Set(try target.session.run(BackfillPlan.listSequences, [target.schema]).rows.map { $0[0] })
        let sourceSequences = try source.session.run(BackfillPlan.listSequences, [source.schema]).rows.map {
            (name: $0[0], owner: $0[1].isEmpty ? nil : $0[1])
        }
        var set = 0
        for s in BackfillPlan.sequencesToSet(sourceSequences, copied: copied, wholeSchema: tables.isEmpty) where targetSequences.contains(s) {
            guard let v = try source.session.run("SELECT last_value, is_called FROM \(source.qualified(s))").rows.first else { continue }
            try target.session.run("SELECT setval($1::regclass, $2::bigint, $3::boolean)", [target.qualified(s), v[0], v[1]])
            set += 1
        }
        return set
    }

    /// Prints `problems` and stops (exit 1) when there are any.
    private func refuse(_ problems: [String]) throws {
        guard !problems.isEmpty else { return }
        for p in problems { print("cutover: \(p)") }
        try nothingCopied()
    }

    private func nothingCopied() throws -> Never {
        print("cutover: nothing copied")
        throw ExitCode(1)
    }
}

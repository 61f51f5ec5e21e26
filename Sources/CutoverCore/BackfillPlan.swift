// What `cutover backfill` asks the catalogs, in which order it loads tables, and when it may run: the pure part of the command.

public enum BackfillPlan {
    /// Foreign keys between tables of one schema, as (referencing table, referenced table). $1: schema.
    public static let listForeignKeys = """
        SELECT c.relname, r.relname FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype = 'f' AND n.nspname = $1
        """

    /// A schema's sequences (serial and identity columns' too) with the table that owns each (NULL for a
    /// free-standing one). $1: schema.
    public static let listSequences = """
        SELECT s.relname, t.relname FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
        LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        LEFT JOIN pg_class t ON t.oid = d.refobjid
        WHERE s.relkind = 'S' AND n.nspname = $1 ORDER BY 1
        """

    /// The sequences a backfill sets: all of the schema's for a whole-schema copy; with `--table`, only those
    /// owned by the copied tables (another table's sequence may already be in use on the new side).
    public static func sequencesToSet(_ sequences: [(name: String, owner: String?)], copied: Set<String>, wholeSchema: Bool) -> [String] {
        sequences.filter { wholeSchema || $0.owner.map(copied.contains) == true }.map(\.name)
    }

    /// The columns a COPY can fill (generated columns are computed), in order. $1: schema, $2: table.
    public static let listCopyColumns = """
        SELECT attname FROM pg_attribute WHERE attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass
        AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum
        """

    /// `tables` ordered so that a referenced table is loaded before the tables that reference it (foreign
    /// keys are checked row by row as a COPY loads). Self-references are ignored; tables in a cycle keep
    /// their given order, after the others.
    public static func loadOrder(_ tables: [String], references: [(from: String, to: String)]) -> [String] {
        let members = Set(tables)
        var needs: [String: Set<String>] = [:]
        for (from, to) in references where from != to && members.contains(from) && members.contains(to) {
            needs[from, default: []].insert(to)
        }
        var order: [String] = [], placed = Set<String>()
        var progress = true
        while progress {
            progress = false
            for t in tables where !placed.contains(t) && needs[t, default: []].isSubset(of: placed) {
                order.append(t)
                placed.insert(t)
                progress = true
            }
        }
        return order + tables.filter { !placed.contains($0) }
    }
}

/// Which way `cutover backfill` copies. Forward fills the new side from legacy before mirroring starts;
/// reverse refills legacy from the new side after writes went only to new (phase `new`), before going back.
public enum BackfillDirection: Sendable, Equatable {
    case forward, reverse

    public var source: Side { self == .forward ? .legacy : .new }
    public var target: Side { self == .forward ? .new : .legacy }
    /// The phase in which the target receives no writes at all (not even mirrored ones), so the copy
    /// replaces nothing a client wrote and loses nothing a client writes meanwhile (the route is paused too).
    public var phase: Phase { self == .forward ? .legacy : .new }
    /// The phase to flip to after the copy, still paused, so that writes reach both sides from then on.
    public var next: Phase { self == .forward ? .dualLegacy : .dualNew }
    /// The flag that selects this direction on the command line.
    public var flag: String { self == .forward ? "" : " --reverse" }
    public var description: String { "\(source.rawValue) → \(target.rawValue)" }
}

/// Whether a backfill may run, from the proxy's own view of the route (its SHOW ROUTES row).
public enum BackfillGuard {
    /// Nil when the route is paused in the direction's phase; otherwise why not, with the commands that
    /// get there. `phase` nil: the proxy has no such route; `paused` is SHOW ROUTES' column (`yes` when held).
    public static func refusal(route: String, direction: BackfillDirection, phase: String?, paused: String?) -> String? {
        guard let phase, let current = Phase(rawValue: phase) else {
            return "the proxy has no route \(route), so it cannot say whether it serves it: check --admin-url (or CUTOVER_ADMIN_URL), "
                + "or, if no proxy serves route \(route), run again with --overwrite-live"
        }
        let isPaused = paused == "yes"
        if current == direction.phase && isPaused { return nil }
        var lines = ["route \(route) is in phase \(phase) and \(isPaused ? "paused" : "not paused (\(paused ?? "unknown"))"); "
                     + "backfill \(direction.description) runs only in phase \(direction.phase.rawValue) with the route paused, "
                     + "so that no client writes to \(direction.target.rawValue) while its tables are replaced"]
        // In the other direction's phase the target is the live side: walking back to this direction's phase
        // would throw its writes away, so the way forward is the other copy.
        let other: BackfillDirection = direction == .forward ? .reverse : .forward
        let advised = current == other.phase ? other : direction
        if advised != direction {
            lines.append("in phase \(phase), \(other.source.rawValue) is the live side: to copy it to \(other.target.rawValue), "
                         + "run backfill\(other.flag) instead")
        }
        lines.append("the commands, in order:")
        lines += steps(from: current, to: advised.phase).map { "  cutover phase \(route) \($0.rawValue)" }
        if !isPaused { lines.append("  cutover pause \(route)") }
        lines += ["  cutover backfill \(route)\(advised.flag)", "  cutover verify \(route)",
                  "  cutover phase \(route) \(advised.next.rawValue)", "  cutover resume \(route)"]
        return lines.joined(separator: "\n")
    }

    /// The phases to flip through, one step at a time, from `current` to `target` (without `current`).
    static func steps(from current: Phase, to target: Phase) -> [Phase] {
        let ladder = Phase.allCases
        let from = ladder.firstIndex(of: current)!, to = ladder.firstIndex(of: target)!
        return from <= to ? Array(ladder[from...to].dropFirst()) : Array(ladder[to...from].reversed().dropFirst())
    }
}

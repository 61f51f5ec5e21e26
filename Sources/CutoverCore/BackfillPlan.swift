// What `cutover backfill` asks the catalogs and in which order it loads tables: the pure part of the command.

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

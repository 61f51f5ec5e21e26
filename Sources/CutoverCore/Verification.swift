// Comparing a route's tables on its two sides (the legacy schema, the new database): the pure part of `cutover verify`.

/// One side's summary of a table over legacy's columns: those columns with this side's types, the row count,
/// and an order-insensitive multiset hash of the rows (two sums of 64-bit halves of md5 of each row's
/// text in UTF-8: duplicates count, unlike XOR, and order does not). Columns the new side has in addition
/// are not compared (a backfill leaves them to their defaults).
public struct TableFingerprint: Equatable, Sendable {
    public var columns: String
    public var rows: Int64
    public var hash: String

    public init(columns: String, rows: Int64, hash: String) {
        self.columns = columns; self.rows = rows; self.hash = hash
    }

    /// A table that was not read (only on the new side, or lacking some of legacy's columns): rows unknown.
    public static let notRead = TableFingerprint(columns: "", rows: -1, hash: "")

    /// The row count for a report ("-" when it was not read).
    public var rowsText: String { rows < 0 ? "-" : "\(rows)" }
}

public enum TableVerdict: String, Sendable {
    case match
    case missingOnNew = "missing on new"
    /// A table legacy does not have (migration bookkeeping, a table the service added): listed, not compared.
    case onlyOnNew = "only on new (not compared)"
    case columnsDiffer = "columns differ"
    case rowsDiffer = "row counts differ"
    case contentsDiffer = "contents differ"

    /// Differences a write still in flight can explain (async mirroring): worth another look before reporting.
    public var mayBeTransient: Bool { self == .rowsDiffer || self == .contentsDiffer }
    /// Whether the verdict fails the verification.
    public var isDifference: Bool { self != .match && self != .onlyOnNew }
}

public struct TableComparison: Equatable, Sendable {
    public var table: String
    public var legacy: TableFingerprint?
    public var new: TableFingerprint?
    public var verdict: TableVerdict

    public init(table: String, legacy: TableFingerprint?, new: TableFingerprint?) {
        self.table = table; self.legacy = legacy; self.new = new
        verdict = Verification.verdict(legacy: legacy, new: new)
    }
}

public enum Verification {
    /// A schema's ordinary and partitioned tables (not partitions: their rows are counted through the parent). $1: schema.
    public static let listTables = """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1
        """

    /// A table's columns and their types, in order; no rows when the table is not there. $1: schema, $2: table.
    public static let listColumns = """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
        WHERE a.attrelid = to_regclass(quote_ident($1) || '.' || quote_ident($2)) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """

    /// Row count and multiset hash of one table over `columns`, in one scan.
    public static func fingerprintQuery(schema: String, table: String, columns: [String]) -> String {
        let half = { (from: Int) in "coalesce(sum(('x' || substr(h, \(from), 16))::bit(64)::bigint::numeric), 0)" }
        let row = "ROW(" + columns.map { "t." + quoteIdentifier($0) }.joined(separator: ", ") + ")::text"
        return "SELECT count(*), \(half(1)) || ':' || \(half(17)) FROM (SELECT md5(convert_to(\(row), 'UTF8')) AS h "
            + "FROM \(quoteIdentifier(schema)).\(quoteIdentifier(table)) t) s"
    }

    /// "name type, ..." for legacy's `names` as one side has them ("name (missing)" where it lacks one).
    public static func describeColumns(_ names: [String], types: [String: String]) -> String {
        names.map { "\($0) \(types[$0] ?? "(missing)")" }.joined(separator: ", ")
    }

    public static func quoteIdentifier(_ name: String) -> String { "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }

    public static func verdict(legacy: TableFingerprint?, new: TableFingerprint?) -> TableVerdict {
        guard let legacy else { return new == nil ? .missingOnNew : .onlyOnNew }
        guard let new else { return .missingOnNew }
        if legacy.columns != new.columns { return .columnsDiffer }
        if legacy.rows != new.rows { return .rowsDiffer }
        if legacy.hash != new.hash { return .contentsDiffer }
        return .match
    }

    /// Every table of either side, by name, with its verdict.
    public static func compare(legacy: [String: TableFingerprint], new: [String: TableFingerprint]) -> [TableComparison] {
        Set(legacy.keys).union(new.keys).sorted().map { name in
            TableComparison(table: name, legacy: legacy[name], new: new[name])
        }
    }
}

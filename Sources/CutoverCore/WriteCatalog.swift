// What mirroring must know of the leader's tables to make writes deterministic: each column's type, its
// default and whether that default differs per side (now(), nextval, uuids), identity columns, and triggers
// whose functions call such functions. Read from the leader in one query; pure from there on.
import CutoverNative

public struct WriteCatalog: Sendable, Equatable {
    public enum Identity: Sendable, Equatable { case always, byDefault }

    public struct Column: Sendable, Equatable {
        public var name: String
        /// `format_type` of the column: what a captured value is cast back to (`timestamp(3) with time zone`).
        public var type: String
        /// The expression that fills the column when a statement leaves it out; for an identity column,
        /// `nextval` of its sequence. Nil when the column has no default (NULL) or is generated.
        public var defaultExpression: String?
        public var identity: Identity?
        /// A stored generated column: computed on each side from the row's other columns, never written.
        public var generated: Bool
        /// The default gives each side its own value (time, sequences, random, uuids, the session's user…).
        public var defaultDiffersPerSide: Bool
        /// That value is the same all through a transaction (`now()`, not `nextval`): one captured value
        /// serves every execution of a statement in it.
        public var defaultIsTransactionConstant: Bool

        public init(name: String, type: String, defaultExpression: String? = nil, identity: Identity? = nil, generated: Bool = false) {
            self.name = name
            self.type = type
            self.identity = identity
            self.generated = generated
            self.defaultExpression = generated ? nil : defaultExpression
            let worst = generated || identity != nil ? nil : defaultExpression.flatMap { NondeterministicCall.worstClass($0) }
            defaultDiffersPerSide = !generated && (identity != nil || worst != nil)
            defaultIsTransactionConstant = identity == nil && worst == .constant
        }
    }

    public struct Table: Sendable, Equatable {
        public var name: String
        public var columns: [Column]
        /// The triggers whose functions call something that differs per side (their names), if any: what
        /// they store cannot be captured by rewriting the statement.
        public var nondeterministicTriggers: [String]

        public init(name: String, columns: [Column], nondeterministicTriggers: [String] = []) {
            self.name = name; self.columns = columns; self.nondeterministicTriggers = nondeterministicTriggers
        }

        public func column(_ name: String) -> Column? { columns.first { $0.name == name } }
    }

    /// The leader's schema these tables are in (the route's schema on legacy; `public` or `new_schema` on new).
    public var schema: String
    public var tables: [String: Table]

    public init(schema: String, tables: [Table]) {
        self.schema = schema
        self.tables = Dictionary(tables.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// One row per column of every table of schema $1, in column order: table, column, type, default,
    /// identity ('a', 'd' or ''), generated ('s' or ''), the identity's sequence, and the table's triggers
    /// whose function's source names a function that differs per side (comma-separated).
    public static let query = """
        SELECT c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), pg_catalog.pg_get_expr(d.adbin, d.adrelid),
               a.attidentity::text, a.attgenerated::text,
               CASE WHEN a.attidentity <> '' THEN pg_catalog.pg_get_serial_sequence(pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), a.attname) END,
               (SELECT pg_catalog.string_agg(t.tgname, ',' ORDER BY t.tgname) FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                 WHERE t.tgrelid = c.oid AND NOT t.tgisinternal AND t.tgenabled <> 'D'
                   AND p.prosrc ~* '(now|current_timestamp|current_date|current_time|localtime|clock_timestamp|statement_timestamp|transaction_timestamp|timeofday|random|uuid|nextval|txid|xact_id|backend_pid|client_addr|current_user|session_user)')
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
        ORDER BY c.relname, a.attnum
        """

    /// Builds the catalog from `query`'s rows.
    public init(schema: String, rows: [[String?]]) {
        var tables: [Table] = []
        for row in rows where row.count >= 8 {
            guard let table = row[0], let name = row[1], let type = row[2] else { continue }
            let identity: Identity? = row[4] == "a" ? .always : row[4] == "d" ? .byDefault : nil
            let sequenceDefault = row[6].map { "nextval(\(SQLText.quoteLiteral($0))::regclass)" }
            let column = Column(name: name, type: type, defaultExpression: identity != nil ? sequenceDefault : row[3],
                                identity: identity, generated: row[5] == "s")
            if tables.last?.name != table {
                tables.append(Table(name: table, columns: [], nondeterministicTriggers: row[7].map { $0.split(separator: ",").map(String.init) } ?? []))
            }
            tables[tables.count - 1].columns.append(column)
        }
        self.init(schema: schema, tables: tables)
    }
}

/// The functions whose value differs between two servers running the same statement, and how often each
/// is evaluated: what decides whether capturing it once is exact.
public enum NondeterministicCall: Sendable, Equatable {
    /// The same all through a transaction (`now()`, `CURRENT_TIMESTAMP`) or a session (`current_user`,
    /// `pg_backend_pid()`): one captured value is exact wherever it appears.
    case constant(type: String)
    /// The same all through one statement (`statement_timestamp()`).
    case perStatement(type: String)
    /// A new value at every call (`random()`, `gen_random_uuid()`, `nextval()`, `clock_timestamp()`): exact
    /// only where the expression is evaluated once (a VALUES row).
    case perCall(type: String)

    public var type: String {
        switch self { case .constant(let t), .perStatement(let t), .perCall(let t): return t }
    }

    /// A function call by its (last) name; `schema` must be absent or pg_catalog for built-ins.
    public static func function(_ name: String, schema: String?) -> NondeterministicCall? {
        let builtIn = schema == nil || schema == "pg_catalog"
        // uuid-ossp lives in whatever schema the extension was created in; the rest are pg_catalog's.
        if name.hasPrefix("uuid_generate_v1") || name == "uuid_generate_v4" { return .perCall(type: "uuid") }
        guard builtIn else { return nil }
        switch name {
        case "now", "transaction_timestamp": return .constant(type: "timestamp with time zone")
        case "statement_timestamp": return .perStatement(type: "timestamp with time zone")
        case "clock_timestamp": return .perCall(type: "timestamp with time zone")
        case "timeofday": return .perCall(type: "text")
        case "random": return .perCall(type: "double precision")
        case "gen_random_uuid": return .perCall(type: "uuid")
        // currval and lastval change when the same statement calls nextval: per call, to be safe.
        case "nextval", "currval", "lastval": return .perCall(type: "bigint")
        case "txid_current": return .constant(type: "bigint")
        case "pg_current_xact_id": return .constant(type: "xid8")
        case "pg_backend_pid": return .constant(type: "integer")
        case "inet_client_addr", "inet_server_addr": return .constant(type: "inet")
        case "inet_client_port", "inet_server_port": return .constant(type: "integer")
        default: return nil
        }
    }

    /// A `SQLValueFunction` of the parse tree by its `op` (`CURRENT_TIMESTAMP(3)` has a typmod of 3).
    public static func sqlValueFunction(_ op: String, typmod: Int) -> NondeterministicCall? {
        let precision = typmod >= 0 ? "(\(typmod))" : ""
        switch op {
        case "SVFOP_CURRENT_DATE": return .constant(type: "date")
        case "SVFOP_CURRENT_TIME", "SVFOP_CURRENT_TIME_N": return .constant(type: "time\(precision) with time zone")
        case "SVFOP_CURRENT_TIMESTAMP", "SVFOP_CURRENT_TIMESTAMP_N": return .constant(type: "timestamp\(precision) with time zone")
        case "SVFOP_LOCALTIME", "SVFOP_LOCALTIME_N": return .constant(type: "time\(precision) without time zone")
        case "SVFOP_LOCALTIMESTAMP", "SVFOP_LOCALTIMESTAMP_N": return .constant(type: "timestamp\(precision) without time zone")
        // The two sides log in as their own backend users.
        case "SVFOP_CURRENT_ROLE", "SVFOP_CURRENT_USER", "SVFOP_USER", "SVFOP_SESSION_USER": return .constant(type: "name")
        default: return nil
        }
    }
}

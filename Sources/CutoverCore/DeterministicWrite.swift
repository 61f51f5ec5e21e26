// How a mirrored write is made to store the same values on both sides: every value that would differ per
// side (now(), nextval, uuids, random(), the session's user, a column default that calls them) is computed
// once, by the leader, kept in a session setting as a side effect of the leader's own statement, read back
// by the proxy, and handed to the follower, whose statement reads it instead of computing its own. Pure:
// statement text and catalog in, rewritten texts out. Parsing is PostgreSQL's (libpg_query): the parse tree
// says what to rewrite, the scanner's tokens say where it ends.
import CutoverNative

/// What mirroring does with one write statement's text.
public enum WritePlan: Sendable, Equatable {
    /// Nothing in it differs per side: both run it as the client sent it.
    case asSent
    /// Values that differ per side are captured from the leader (see `CapturedWrite`).
    case captured(CapturedWrite)
    /// Something in it differs per side and cannot be captured (a trigger, `random()` in a WHERE clause,
    /// per-row defaults of an INSERT … SELECT): both run it as sent, and the route is marked out of sync
    /// when the write is kept. The reason names the statement's part.
    case nondeterministic(String)
    /// It writes to tables the catalog does not have (created after it was read, behind the proxy's back):
    /// run as sent; the caller reads the catalog again and plans the text once more, to find out.
    case needsCatalog([String])
}

/// A write whose per-side values are captured from the leader.
///
///     leader:   INSERT INTO t (name, id) VALUES ('a', NULLIF(set_config('cutover.w…_1', (nextval(…))::bigint::text, false), chr(1))::bigint)
///     proxy:    SELECT current_setting('cutover.w…_1', true)          -- after the unit: '42'
///     follower: SELECT set_config('cutover.w…_1', '42', false)        -- before the unit
///               INSERT INTO t (name, id) VALUES ('a', NULLIF(current_setting('cutover.w…_1'), chr(1))::bigint)
///
/// The leader keeps PostgreSQL's semantics (its values are its own: `now()` is its transaction's start);
/// the client sees the answers it would have seen (same parameters, same result columns).
public struct CapturedWrite: Sendable, Equatable {
    public var leaderText: String
    public var followerText: String
    /// The session settings the leader's statement fills, in order.
    public var settings: [String]
    /// Identity columns given explicit values: the sequences behind them must be carried at a leader flip.
    public var needsOverride: Bool
    /// For each setting: filled as a list, one `octet_length:value` entry an execution, not overwritten.
    /// Values that change at every evaluation (`nextval`, `gen_random_uuid()`) where they are evaluated
    /// exactly once an execution (an INSERT … VALUES row): a driver's batch (one Parse, many Binds before one
    /// Sync) then leaves every execution's value for the readback behind the unit.
    public var appended: [Bool]
    /// Several executions of this statement in one unit can be captured by one readback behind it: each of
    /// its values is either appended or the same all through the transaction (`now()`, `current_user`), so
    /// the last one written serves them all. A value per statement (`statement_timestamp()`) or per row of a
    /// varying count (`RETURNING`) is neither.
    public var repeatable: Bool

    public init(leaderText: String, followerText: String, settings: [String], needsOverride: Bool, appended: [Bool]? = nil, repeatable: Bool = false) {
        self.leaderText = leaderText
        self.followerText = followerText
        self.settings = settings
        self.needsOverride = needsOverride
        self.appended = appended ?? settings.map { _ in false }
        self.repeatable = repeatable
    }

    /// The values of each of `executions` executions of this statement, from the readback's row: an
    /// appended setting gives each its own entry, any other the one value it holds (a single execution that
    /// never reached an appended value gets nil: its copy does not reach it either, or fails). Nil when a
    /// list does not read as one or has another number of entries: every unit that may run a rewritten
    /// statement is followed by a readback or an emptying query, so no entry is left from an earlier unit.
    public func valuesByExecution(_ row: [String?], executions: Int) -> [[String?]]? {
        var out = Array(repeating: [String?](repeating: nil, count: settings.count), count: executions)
        for k in settings.indices {
            let value = k < row.count ? row[k] : nil
            guard appended[k] else {
                for e in 0..<executions { out[e][k] = value }
                continue
            }
            // One entry an execution (none for a single one that never reached it); anything else means
            // the leader evaluated the value another number of times than this plan says.
            guard let entries = Self.entries(value ?? ""), entries.count == executions || (executions == 1 && entries.isEmpty) else { return nil }
            for (e, entry) in entries.enumerated() { out[e][k] = entry }
        }
        return out
    }

    /// The entries of an appended setting (`5:hello2:42` → hello, 42); nil if it does not read as such a list.
    static func entries(_ list: String) -> [String]? {
        let bytes = Array(list.utf8)
        var out: [String] = []
        var i = 0
        while i < bytes.count {
            var length = 0, digits = 0
            while i < bytes.count, bytes[i] >= 48, bytes[i] <= 57, digits < 10 {
                length = length * 10 + Int(bytes[i] - 48); i += 1; digits += 1
            }
            guard digits > 0, i < bytes.count, bytes[i] == 58 /* : */, i + 1 + length <= bytes.count else { return nil }
            out.append(String(decoding: bytes[(i + 1)..<(i + 1 + length)], as: UTF8.self))
            i += 1 + length
        }
        return out
    }

    /// The proxy's own query, run on the leader after the unit: the captured values, one column each (NULL
    /// for one the statement did not reach, e.g. after an error).
    public var readbackQuery: String {
        // Each setting is emptied once read: a later statement that fails before computing it then reads
        // back as missing, not as this one's value.
        "SELECT " + (settings.map { "pg_catalog.current_setting(\(SQLText.quoteLiteral($0)), true)" }
                     + settings.map { "pg_catalog.set_config(\(SQLText.quoteLiteral($0)), '', false)" }).joined(separator: ", ")
    }
}

public enum DeterministicWrite {
    /// The plan for one statement text (a simple Query's whole text, or one Parse's). `catalog` is the
    /// leader's (nil: not loaded, so no table's defaults are known).
    public static func plan(_ text: String, catalog: WriteCatalog?) -> WritePlan {
        // A text PostgreSQL's parser (this libpg_query's version) cannot read may still write: it is not
        // passed silently (a syntax error fails on both sides anyway, and marks the route only if it wrote).
        guard let json = PostgresParser.parseTree(text).json, let tree = try? JSONNode.parse(json) else {
            return .nondeterministic("the statement could not be parsed here, so its values were not checked")
        }
        let utf8 = Array(text.utf8)
        guard let tokens = PostgresParser.tokens(text) else { return .asSent }
        var rewriter = Rewriter(text: utf8, tokens: tokens, catalog: catalog, tag: Self.tag)
        for statement in tree["stmts"]?.array ?? [] {
            guard let stmt = statement["stmt"] else { continue }
            let start = statement["stmt_location"]?.int ?? 0, length = statement["stmt_len"]?.int ?? 0
            rewriter.statementEnd = length == 0 ? utf8.count : min(utf8.count, start + length)
            rewriter.statement(stmt)
        }
        if let reason = rewriter.reasons.first { return .nondeterministic(reason) }
        if !rewriter.unknownTables.isEmpty { return .needsCatalog(rewriter.unknownTables) }
        guard !rewriter.edits.isEmpty else { return .asSent }
        // The readback selects two columns per value; PostgreSQL allows 1 664 (and the follower's copy is
        // rendered value by value): a bulk VALUES list of that size is refused rather than half captured.
        guard rewriter.settings.count <= maximumCaptures else {
            return .nondeterministic("\(rewriter.settings.count) values differ per side in one statement; at most \(maximumCaptures) are captured")
        }
        guard let (leader, follower) = rewriter.apply() else { return .nondeterministic("overlapping rewrites (a capture inside another)") }
        return .captured(CapturedWrite(leaderText: leader, followerText: follower, settings: rewriter.settings, needsOverride: rewriter.overrides,
                                       appended: rewriter.appended, repeatable: rewriter.repeatable))
    }

    /// At most this many values per statement (see `plan`).
    public static let maximumCaptures = 800

    /// An INSERT … SELECT's rows are captured up to this many bytes in all (`pg_column_size`): their text goes
    /// through one setting per column (PostgreSQL caps a value at 1 GB), the readback and the follower's
    /// statement. Past it the settings hold `notCaptured`.
    public static let maximumRowBytes = 128 << 20

    /// The proxy's own query that empties the first `count` settings, answering no row: behind a unit that
    /// ran a rewritten statement whose values are not read back (the unit was refused), so that no listed
    /// value outlives it.
    public static func emptyingQuery(settings count: Int) -> String {
        "SELECT WHERE (" + (1...max(1, count)).map { "pg_catalog.set_config('\(tag)_\($0)', '', false)" }.joined(separator: " || ") + ") IS NULL"
    }

    /// What a setting holds when the leader's values were too large to capture (chr(2)).
    public static let notCaptured = "\u{2}"

    /// Setting names are positional (`cutover.v_1`, …): a unit runs one captured statement and its values
    /// are read back right after it, so names can be reused; names per text would leave a placeholder
    /// setting in the leader's backend for every distinct statement, for the life of the connection.
    static let tag = "cutover.v"
}

/// Where an expression sits, which decides how often it is evaluated.
enum EvaluationContext {
    /// A non-DML statement (a SELECT, DDL): nothing it computes is stored by mirroring.
    case none
    /// A VALUES row of an INSERT: evaluated once.
    case once
    /// Stored per row (UPDATE SET, INSERT … SELECT's list, ON CONFLICT DO UPDATE SET, RETURNING).
    case perRow
    /// Decides which rows (WHERE, FROM, USING, subqueries): not stored, evaluated per row.
    case filter
}

/// One statement's rewrites, collected as byte-range edits of the text, applied last to first.
struct Rewriter {
    let text: [UInt8]
    let tokens: [PostgresParser.Token]
    let catalog: WriteCatalog?
    let tag: String
    private(set) var edits: [(range: Range<Int>, leader: String, follower: String)] = []
    private(set) var settings: [String] = []
    /// Per setting: filled as a list (see `CapturedWrite.appended`).
    private(set) var appended: [Bool] = []
    /// See `CapturedWrite.repeatable`: cleared by the first value that is neither appended nor constant
    /// through the transaction.
    private(set) var repeatable = true
    private(set) var reasons: [String] = []
    private(set) var overrides = false
    /// Tables of the route's schema the catalog does not have.
    private(set) var unknownTables: [String] = []
    /// Where the statement being rewritten ends (its `;` excluded).
    var statementEnd = 0
    /// Inside COALESCE, CASE, AND/OR: a value there may not be evaluated at every execution.
    private var conditionalDepth = 0

    init(text: [UInt8], tokens: [PostgresParser.Token], catalog: WriteCatalog?, tag: String) {
        self.text = text; self.tokens = tokens; self.catalog = catalog; self.tag = tag
    }

    static let openParen = 40, closeParen = 41, comma = 44, valuesKeyword = 703, defaultKeyword = 375

    // MARK: statements

    mutating func statement(_ node: JSONNode) {
        visit(node, .none)
    }

    /// Walks `node`, handing DML nodes and calls to their handlers.
    mutating func visit(_ node: JSONNode, _ context: EvaluationContext) {
        if let call = FunctionCallNode(node) { return self.call(call, node, context) }
        if let insert = node["InsertStmt"] { return self.insert(insert) }
        if let update = node["UpdateStmt"] { return self.update(update) }
        if let delete = node["DeleteStmt"] { return self.delete(delete) }
        if let merge = node["MergeStmt"] { return self.merge(merge) }
        if let copy = node["CopyStmt"] { return self.copy(copy) }
        // A subquery or a CTE may feed stored values: a constant in it is captured (exact), a per-call value
        // marks. Only a condition (`.filter`) is left to each side.
        let subquery = node["SubLink"] != nil || node["RangeSubselect"] != nil || node["CommonTableExpr"] != nil
        let inner: EvaluationContext = subquery && context == .once ? .perRow : context
        let conditional = node["CoalesceExpr"] != nil || node["CaseExpr"] != nil || node["BoolExpr"] != nil
        if conditional { conditionalDepth += 1 }
        for child in node.children { visit(child, inner) }
        if conditional { conditionalDepth -= 1 }
    }

    private mutating func visit(_ node: JSONNode?, _ context: EvaluationContext) {
        if let node { visit(node, context) }
    }

    private mutating func call(_ call: FunctionCallNode, _ node: JSONNode, _ context: EvaluationContext) {
        guard let kind = call.classification, context != .none else {
            // Not one of ours: its arguments may be (`upper(gen_random_uuid()::text)`).
            for child in node.children { visit(child, context) }
            return
        }
        switch (context, kind) {
        case (.once, _), (.perRow, .constant), (.perRow, .perStatement):
            guard let range = span(of: call) else { return reasons.append("cannot find the end of \(call.name)()") }
            // Once a row of VALUES: a value of its own at each execution, listed; elsewhere one value a
            // statement, which serves a batch of executions only if it holds for the whole transaction.
            let once = context == .once && kind.evaluationClass != .constant
            if !once && kind.evaluationClass != .constant { repeatable = false }
            // Evaluated only when reached (`COALESCE($1, gen_random_uuid())`): a batch's executions would
            // not each leave an entry, so one cannot tell which is whose.
            if once && conditionalDepth > 0 { repeatable = false }
            capture(range, type: kind.type, expression: String(decoding: text[range], as: UTF8.self), append: once)
        case (.filter, .constant), (.filter, .perStatement):
            break // decides which rows; each side evaluates its own (see docs/phases.md)
        case (.perRow, .perCall), (.filter, .perCall):
            reasons.append("\(call.name)() is evaluated per row (\(context == .filter ? "in a condition or subquery" : "in a value stored per row")): each side computes its own")
        case (.none, _):
            break
        }
    }

    /// Replaces `range` with a capture of `expression` (cast to `type`) on the leader and its reading on the follower.
    private mutating func capture(_ range: Range<Int>, type: String, expression: String, append: Bool) {
        let (leader, follower) = captured(expression, type: type, append: append)
        edits.append((range, leader, follower))
    }

    /// `expression` (of `type`) as text that reads back as the same value on the follower: dates and times as
    /// JSON's ISO 8601 (the same whatever either session's DateStyle or TimeZone), anything else by its
    /// output function.
    static func asText(_ expression: String, type: String) -> String {
        let temporal = !type.hasSuffix("]") && (type == "date" || type.hasPrefix("timestamp") || type.hasPrefix("time"))
        return temporal ? "pg_catalog.to_json((\(expression))::\(type)) #>> '{}'" : "(\(expression))::\(type)::text"
    }

    /// The type an untyped literal or parameter of an INSERT … SELECT is cast to where it stands: its
    /// column's, without a length a cast would cut to (`character(5)` → `bpchar`, `bit(3)` → `bit varying`),
    /// so the column's own assignment still raises what the statement as sent would.
    static func itemType(_ type: String) -> String {
        if type.hasPrefix("character(") || type == "character" { return "bpchar" }
        if type.hasPrefix("bit(") || type == "bit" { return "bit varying" }
        return baseType(type)
    }

    /// A type without its modifier (`character varying(5)` → `character varying`): the capture is cast to
    /// the base type and the column's own assignment applies the modifier on each side, raising what the
    /// statement as sent would raise (a value too long) instead of truncating it in an explicit cast.
    static func baseType(_ type: String) -> String {
        // Only where the bare type is unbounded: bare `character` is char(1) and bare `bit` is bit(1), so
        // those keep their length (a cast to them would truncate).
        let unbounded = ["character varying", "numeric", "timestamp", "time", "interval", "bit varying"]
        guard unbounded.contains(where: { type.hasPrefix($0) }) else { return type }
        var out = "", depth = 0
        for c in type {
            if c == "(" { depth += 1; continue }
            if c == ")" { depth -= 1; continue }
            if depth == 0 { out.append(c) }
        }
        return out.replacingOccurrences(of: "  ", with: " ").trimmingCharacters(in: .whitespaces)
    }

    private mutating func captured(_ expression: String, type fullType: String, append: Bool) -> (String, String) {
        let type = Self.baseType(fullType)
        let name = "\(tag)_\(settings.count + 1)"
        settings.append(name)
        appended.append(append)
        let quoted = SQLText.quoteLiteral(name)
        // chr(1) stands for NULL (a setting cannot hold one); no value of these types is that text.
        // Dates and times as JSON's ISO 8601, which reads back the same whatever either session's DateStyle.
        let asText = Self.asText(expression, type: type)
        let leader: String
        if append {
            // The list grows by `octet_length:value`; the value itself comes from a subquery evaluated once
            // (PostgreSQL does not pull up a subquery with a volatile output), so the call runs once.
            leader = "(SELECT NULLIF(CASE WHEN pg_catalog.set_config(\(quoted), cutover_c.o || pg_catalog.octet_length(cutover_c.v) || ':' || cutover_c.v, false) IS NOT NULL THEN cutover_c.v END, pg_catalog.chr(1)) "
                + "FROM (SELECT COALESCE(pg_catalog.current_setting(\(quoted), true), '') AS o, COALESCE(\(asText), pg_catalog.chr(1)) AS v) AS cutover_c)::\(type)"
        } else {
            leader = "NULLIF(pg_catalog.set_config(\(quoted), COALESCE(\(asText), pg_catalog.chr(1)), false), pg_catalog.chr(1))::\(type)"
        }
        let follower = "NULLIF(pg_catalog.current_setting(\(quoted)), pg_catalog.chr(1))::\(type)"
        _ = fullType
        return (leader, follower)
    }

    // MARK: INSERT

    private mutating func insert(_ s: JSONNode) {
        visit(s["withClause"], .perRow)
        let table = lookUp(s["relation"], verb: "INSERT into")
        let select = s["selectStmt"]?["SelectStmt"]
        let rows = select?["valuesLists"]?.array.map { $0["List"]?["items"]?.array ?? [] }
        let plainValues = rows != nil && select?["larg"] == nil && select?["sortClause"] == nil && select?["limitCount"] == nil
        let explicit = (s["cols"]?.array ?? []).compactMap { $0["ResTarget"]?["name"]?.string }
        var targets: [WriteCatalog.Column?] = []
        if let table {
            if explicit.isEmpty {
                let width = rows?.first?.count ?? select?["targetList"]?.array.count ?? 0
                targets = Array(table.columns.prefix(width))
            } else {
                targets = explicit.map { table.column($0) }
            }
        }
        let override = s["override"]?.string ?? "OVERRIDING_NOT_SET"
        var givesIdentity = false
        if let rows, plainValues, let table {
            // An explicit value for a GENERATED ALWAYS identity column is an error as sent; OVERRIDING added
            // for the captures would let it through. Left as sent: both sides refuse it alike.
            let identityAlways = targets.indices.filter { targets[$0]?.identity == .always }
            if rows.contains(where: { row in identityAlways.contains { $0 < row.count && row[$0]["SetToDefault"] == nil } }),
               s["override"]?.string == "OVERRIDING_NOT_SET" {
                _ = table
                return
            }
        }
        if let rows, plainValues {
            for row in rows {
                for (j, item) in row.enumerated() {
                    if let location = item["SetToDefault"]?["location"]?.int, j < targets.count, let column = targets[j], column.defaultDiffersPerSide,
                       let expression = column.defaultExpression, let end = tokenEnd(at: location) {
                        capture(location..<end, type: column.type, expression: expression, append: !column.defaultIsTransactionConstant)
                        if column.identity == .always { givesIdentity = true }
                    } else {
                        visit(item, .once)
                    }
                }
            }
        } else if let select, let table, rows == nil, select["larg"] == nil,
                  !neededDefaults(table, targets).isEmpty || Self.storesCall(select) {
            // Each row needs values of its own: the leader's rows are captured whole (`selectRows`).
            return selectRows(s, table, select, explicit: explicit, targets: targets, override: override)
        } else if let select {
            visit(select["targetList"], .perRow)
            for key in ["fromClause", "valuesLists", "larg", "rarg", "withClause"] { visit(select[key], .perRow) }
            for key in ["whereClause", "groupClause", "havingClause"] { visit(select[key], .filter) }
        }
        if let table {
            let needed = neededDefaults(table, targets)
            if !needed.isEmpty {
                if select == nil {
                    defaultValues(s, needed)
                } else if let rows, plainValues {
                    addColumns(s, needed, explicit: explicit, targets: targets, rows: rows)
                } else {
                    reasons.append("INSERT … SELECT into \(table.name) leaves \(needed.map(\.name).joined(separator: ", ")) to a default that differs per side and per row")
                }
                if needed.contains(where: { $0.identity == .always }) { givesIdentity = true }
            }
        }
        if givesIdentity {
            overrides = true
            if override == "OVERRIDING_USER_VALUE" {
                reasons.append("OVERRIDING USER VALUE: the identity's value cannot be given to the follower")
            } else if override == "OVERRIDING_NOT_SET" && select != nil, let values = firstToken(Self.valuesKeyword, after: s["relation"]?["location"]?.int ?? 0) {
                edits.append((values.start..<values.start, "OVERRIDING SYSTEM VALUE ", "OVERRIDING SYSTEM VALUE "))
            }
        }
        if let conflict = s["onConflictClause"] {
            visit(conflict["targetList"], .perRow)
            visit(conflict["whereClause"], .filter)
        }
        returning(s["returningList"])
    }

    /// The columns an INSERT into `targets` leaves to a default that differs per side.
    private func neededDefaults(_ table: WriteCatalog.Table, _ targets: [WriteCatalog.Column?]) -> [WriteCatalog.Column] {
        let given = Set(targets.compactMap { $0?.name })
        return table.columns.filter { $0.defaultDiffersPerSide && !given.contains($0.name) }
    }

    /// A call in the tree whose value differs per side (only a per-call one, with `perCallOnly`).
    static func containsCall(_ node: JSONNode?, perCallOnly: Bool = false) -> Bool {
        var found = false
        node?.walk { n, _ in
            if !found, let c = FunctionCallNode(n)?.classification, !perCallOnly || c.evaluationClass == .perCall { found = true }
        }
        return found
    }

    /// An INSERT's SELECT whose rows carry a value that differs per side: a call in what it selects, or a
    /// per-call one in what decides its rows (`WHERE random() < 0.1`). A time in a condition (`WHERE at <
    /// now()`) is left to each side, as everywhere.
    static func storesCall(_ select: JSONNode) -> Bool {
        ["targetList", "fromClause", "withClause", "valuesLists"].contains { containsCall(select[$0]) }
            || ["whereClause", "groupClause", "havingClause", "sortClause", "limitCount", "limitOffset"].contains { containsCall(select[$0], perCallOnly: true) }
    }

    /// A select item that is a star (`*`, `t.*`, `(row).*`): how many columns it stands for is not known here.
    static func isStar(_ item: JSONNode) -> Bool {
        guard let value = item["ResTarget"]?["val"] else { return false }
        if value["ColumnRef"]?["fields"]?.array.contains(where: { $0["A_Star"] != nil }) == true { return true }
        return value["A_Indirection"]?["indirection"]?.array.contains(where: { $0["A_Star"] != nil }) == true
    }

    /// A select item PostgreSQL types from its column in an INSERT … SELECT and as text in a subquery: a
    /// parameter or an untyped literal (`'2024-01-01'`, NULL).
    static func isUntyped(_ item: JSONNode) -> Bool {
        guard let value = item["ResTarget"]?["val"] else { return false }
        if value["ParamRef"] != nil { return true }
        guard let constant = value["A_Const"] else { return false }
        return constant["sval"] != nil || constant["isnull"]?.bool == true
    }

    /// `INSERT … SELECT` whose rows need values of their own (a serial id, a uuid default, a call in the
    /// SELECT): the leader's rows are captured whole, column by column as arrays, and the follower inserts
    /// exactly those rows, whatever its own SELECT would return and in whatever order.
    ///
    ///     leader:   INSERT INTO t (a, "id") WITH cutover_q (c1) AS MATERIALIZED (SELECT (x)::integer FROM s),
    ///                 cutover_rows (c1, d1) AS MATERIALIZED (SELECT cutover_q.*, (nextval(…)) FROM cutover_q)
    ///               SELECT * FROM cutover_rows WHERE (SELECT set_config('cutover.v_1', array_agg(c1::integer::text)…) || … FROM cutover_rows) IS NOT NULL
    ///     follower: INSERT INTO t (a, "id") WITH cutover_q (c1) AS (SELECT (x)::integer FROM s)
    ///               SELECT cutover_u.c1::integer, cutover_u.d1::bigint FROM ROWS FROM (unnest('{…}'::text[]), unnest('{…}'::text[])) AS cutover_u (c1, d1)
    ///
    /// A parameter or an untyped literal selected is cast to its column's type where it stands, so that it
    /// gets the type PostgreSQL infers for an INSERT … SELECT (inside a subquery it would become text); every
    /// other item keeps its own type and the INSERT's assignment casts it as it would have. The follower runs
    /// the SELECT too, for whatever its functions do besides returning values, and discards its rows (its
    /// parameters are then also typed as the Bind expects). The aggregate is an InitPlan: it runs, over the
    /// materialized rows, before the first row is inserted, also when there are none. Rows larger than
    /// `maximumRowBytes` in all are not captured: the settings hold a marker instead, and the proxy sends the
    /// follower the statement as the client wrote it and marks the route.
    private mutating func selectRows(_ s: JSONNode, _ table: WriteCatalog.Table, _ select: JSONNode, explicit: [String],
                                     targets: [WriteCatalog.Column?], override: String) {
        let items = select["targetList"]?.array ?? []
        let hasStar = items.contains(where: Self.isStar)
        if hasStar && explicit.isEmpty {
            return reasons.append("INSERT … SELECT * into \(table.name) without a column list: how many columns it fills is not known here, so its rows cannot be captured")
        }
        if hasStar && items.contains(where: Self.isUntyped) {
            return reasons.append("INSERT … SELECT *, with a parameter or an untyped literal, into \(table.name): its column is not known here, so its rows cannot be captured")
        }
        let columns = targets.compactMap { $0 }
        guard columns.count == targets.count, !columns.isEmpty else {
            return reasons.append("INSERT … SELECT into \(table.name) names a column its catalog does not have")
        }
        // An explicit value for a GENERATED ALWAYS identity column fails as sent on both sides: left as sent.
        if override == "OVERRIDING_NOT_SET" && columns.contains(where: { $0.identity == .always }) { return }
        let needed = neededDefaults(table, targets)
        if override == "OVERRIDING_USER_VALUE" && needed.contains(where: { $0.identity != nil }) || override == "OVERRIDING_USER_VALUE" && columns.contains(where: { $0.identity != nil }) {
            return reasons.append("OVERRIDING USER VALUE: the identity's value cannot be given to the follower")
        }
        guard let start = selectStart(select), let end = selectEnd(s), start < end else {
            return reasons.append("cannot find where the SELECT of an INSERT … SELECT into \(table.name) begins and ends")
        }
        // The SELECT, its untyped items cast to their columns' types.
        var body: [UInt8] = []
        var at = start
        if !hasStar {
            for k in items.indices where Self.isUntyped(items[k]) {
                guard k < columns.count, let range = itemValue(items, k, before: end) else {
                    return reasons.append("cannot find the end of item \(k + 1) of an INSERT … SELECT into \(table.name)")
                }
                body += text[at..<range.lowerBound] + Array("(".utf8) + text[range] + Array(")::\(Self.itemType(columns[k].type))".utf8)
                at = range.upperBound
            }
        }
        body += text[at..<end]
        let selectText = String(decoding: body, as: UTF8.self)
        let all = columns + needed
        let c = columns.indices.map { "c\($0 + 1)" }, d = needed.indices.map { "d\($0 + 1)" }
        let names = c + d
        var captures: [String] = [], markers: [String] = [], reads: [String] = [], values: [String] = []
        for (k, column) in all.enumerated() {
            let name = "\(tag)_\(settings.count + 1)"
            settings.append(name)
            appended.append(false)
            let type = Self.baseType(column.type)
            captures.append("pg_catalog.set_config(\(SQLText.quoteLiteral(name)), COALESCE(pg_catalog.array_agg(\(Self.asText(names[k], type: type)))::text, '{}'), false)")
            markers.append("pg_catalog.set_config(\(SQLText.quoteLiteral(name)), pg_catalog.chr(2), false)")
            reads.append("pg_catalog.current_setting(\(SQLText.quoteLiteral(name)))::text[]")
            values.append("cutover_u.\(names[k])::\(type)")
        }
        repeatable = false // one array per column, overwritten by the next execution
        if needed.contains(where: { $0.identity != nil }) { overrides = true }
        // The column list: the defaults' columns added to the client's, or written out whole.
        var prefix = ""
        if !needed.isEmpty {
            let added = needed.map { Verification.quoteIdentifier($0.name) }.joined(separator: ", ")
            if let firstColumn = s["cols"]?.array.first?["ResTarget"]?["location"]?.int {
                guard let close = closingParen(enclosing: firstColumn) else { return reasons.append("cannot find the end of the column list") }
                edits.append((close..<close, ", " + added, ", " + added))
            } else if override != "OVERRIDING_NOT_SET" {
                return reasons.append("INSERT … OVERRIDING … SELECT into \(table.name) without a column list: the columns cannot be written out")
            } else {
                prefix = "(" + all.map { Verification.quoteIdentifier($0.name) }.joined(separator: ", ") + ") "
            }
            if override == "OVERRIDING_NOT_SET" && needed.contains(where: { $0.identity == .always }) { prefix += "OVERRIDING SYSTEM VALUE " }
        }
        let defaults = needed.map { ", (\($0.defaultExpression ?? "NULL"))" }.joined()
        // (A newline ends the SELECT's text: it may end in a `--` comment.)
        let cList = c.joined(separator: ", "), nameList = names.joined(separator: ", ")
        let size = "(SELECT COALESCE(pg_catalog.sum(pg_catalog.pg_column_size(cutover_r.*)), 0) FROM cutover_rows AS cutover_r)"
        let markerList: String = markers.joined(separator: " || "), captureList: String = captures.joined(separator: " || ")
        let capture = "CASE WHEN \(size) > \(DeterministicWrite.maximumRowBytes) THEN \(markerList) ELSE (SELECT \(captureList) FROM cutover_rows) END"
        var leader = prefix + "WITH cutover_q (\(cList)) AS MATERIALIZED (\(selectText)\n), "
        leader += "cutover_rows (\(nameList)) AS MATERIALIZED (SELECT cutover_q.*\(defaults) FROM cutover_q) "
        leader += "SELECT * FROM cutover_rows WHERE (SELECT \(capture)) IS NOT NULL "
        let unnests = reads.map { "pg_catalog.unnest(\($0))" }.joined(separator: ", ")
        var follower = prefix + "WITH cutover_q (\(cList)) AS MATERIALIZED (\(selectText)\n) "
        follower += "SELECT \(values.joined(separator: ", ")) FROM ROWS FROM (\(unnests)) AS cutover_u (\(nameList)) "
        follower += "WHERE (SELECT pg_catalog.count(*) FROM cutover_q) >= 0 "
        edits.append((start..<end, leader, follower))
        if let conflict = s["onConflictClause"] {
            visit(conflict["targetList"], .perRow)
            visit(conflict["whereClause"], .filter)
        }
        returning(s["returningList"])
    }

    /// A comment, which the scanner reports as a token.
    private func isComment(_ k: Int) -> Bool {
        let start = tokens[k].start
        return tokens[k].end - start >= 2 && ((text[start] == 45 && text[start + 1] == 45) || (text[start] == 47 && text[start + 1] == 42))
    }

    /// The text of a token, upper-cased (keywords).
    private func word(_ k: Int) -> String { String(decoding: text[tokens[k].start..<tokens[k].end], as: UTF8.self).uppercased() }

    /// Where a SELECT begins: its WITH, else its SELECT keyword (nil when it is parenthesized).
    private func selectStart(_ select: JSONNode) -> Int? {
        if let with = select["withClause"]?["location"]?.int { return with }
        guard let first = select["targetList"]?.array.first?["ResTarget"]?["location"]?.int, var k = tokenIndex(at: first) else { return nil }
        var depth = 0
        while k > 0 {
            k -= 1
            switch tokens[k].kind {
            case Self.closeParen: depth += 1
            case Self.openParen: depth -= 1
            default:
                if depth == 0 && word(k) == "SELECT" {
                    return k > 0 && tokens[k - 1].kind == Self.openParen ? nil : tokens[k].start
                }
            }
        }
        return nil
    }

    /// Where an INSERT's SELECT ends: at ON CONFLICT, RETURNING or the statement's end.
    private func selectEnd(_ s: JSONNode) -> Int? {
        var end = statementEnd
        if let on = s["onConflictClause"]?["location"]?.int { end = min(end, on) }
        if let first = s["returningList"]?.array.first?["ResTarget"]?["location"]?.int, let k = tokenIndex(at: first), k > 0 {
            end = min(end, tokens[k - 1].start)
        }
        return end
    }

    /// The bytes of select item `k`'s expression, without its alias: up to the comma before the next item,
    /// or, for the last, up to the first clause keyword at its own depth.
    private func itemValue(_ items: [JSONNode], _ k: Int, before end: Int) -> Range<Int>? {
        guard let start = items[k]["ResTarget"]?["location"]?.int, let first = tokenIndex(at: start) else { return nil }
        var last: Int // index of the item's last token
        if k + 1 < items.count {
            guard let next = items[k + 1]["ResTarget"]?["location"]?.int, var n = tokenIndex(at: next) else { return nil }
            while n > first, isComment(n - 1) { n -= 1 }
            guard n > first, tokens[n - 1].kind == Self.comma else { return nil }
            last = n - 2
        } else {
            let stops: Set<String> = ["FROM", "INTO", "WHERE", "GROUP", "HAVING", "WINDOW", "ORDER", "LIMIT", "OFFSET", "FETCH", "FOR",
                                      "UNION", "INTERSECT", "EXCEPT", "ON", "RETURNING"]
            var depth = 0, j = first
            scan: while j < tokens.count, tokens[j].start < end {
                switch tokens[j].kind {
                case Self.openParen: depth += 1
                case Self.closeParen: if depth == 0 { break scan }; depth -= 1
                case 59 /* ; */: if depth == 0 { break scan }
                default:
                    if depth == 0, j > first, tokens[j - 1].kind != 46 /* . */, stops.contains(word(j)) {
                        let before = word(j - 1)
                        if !(word(j) == "FROM" && before == "DISTINCT") && !(word(j) == "GROUP" && before == "WITHIN") { break scan }
                    }
                }
                j += 1
            }
            last = j - 1
        }
        while last > first, isComment(last) { last -= 1 }
        if items[k]["ResTarget"]?["name"] != nil {
            // `expr AS alias` or `expr alias`
            last -= 1
            if last >= first, word(last) == "AS" { last -= 1 }
        }
        guard last >= first else { return nil }
        return tokens[first].start..<tokens[last].end
    }

    /// RETURNING: per row; a call that is a whole item keeps the column name PostgreSQL gives it (a driver
    /// may read the column by name), which the capture's NULLIF would otherwise become.
    private mutating func returning(_ list: JSONNode?) {
        for item in list?.array ?? [] {
            guard let target = item["ResTarget"], let value = target["val"] else { continue }
            if target["name"] == nil, let call = FunctionCallNode(value), let kind = call.classification,
               kind.evaluationClass != .perCall, let range = span(of: call) {
                // One value a statement, and RETURNING reaches it once a row returned: a batch needs it constant.
                if kind.evaluationClass != .constant { repeatable = false }
                let (leader, follower) = captured(String(decoding: text[range], as: UTF8.self), type: kind.type, append: false)
                let alias = " AS " + Verification.quoteIdentifier(call.columnName)
                edits.append((range, leader + alias, follower + alias))
            } else if target["name"] == nil, value["TypeCast"] != nil, let call = Self.castCall(value), call.classification != nil,
                      let end = itemEnd(from: call.location) {
                // `now()::date` is named after its call too: the alias goes after the whole item.
                visit(value, .perRow)
                let alias = " AS " + Verification.quoteIdentifier(call.columnName)
                edits.append((end..<end, alias, alias))
            } else {
                visit(value, .perRow)
            }
        }
    }

    /// `INSERT INTO t DEFAULT VALUES` with defaults that differ per side: `(cols) VALUES (captures)`.
    private mutating func defaultValues(_ s: JSONNode, _ needed: [WriteCatalog.Column]) {
        guard let start = firstToken(Self.defaultKeyword, after: s["relation"]?["location"]?.int ?? 0),
              let values = firstToken(Self.valuesKeyword, after: start.start) else { return reasons.append("cannot find DEFAULT VALUES") }
        var leader: [String] = [], follower: [String] = []
        for column in needed {
            let (l, f) = captured(column.defaultExpression ?? "NULL", type: column.type, append: !column.defaultIsTransactionConstant)
            leader.append(l); follower.append(f)
        }
        let override = needed.contains { $0.identity == .always } ? " OVERRIDING SYSTEM VALUE" : ""
        let columns = "(" + needed.map { Verification.quoteIdentifier($0.name) }.joined(separator: ", ") + ")" + override + " VALUES "
        edits.append((start.start..<values.end, columns + "(" + leader.joined(separator: ", ") + ")", columns + "(" + follower.joined(separator: ", ") + ")"))
    }

    /// Adds `needed` columns to an INSERT … VALUES: to its column list (written out when it had none) and,
    /// with a capture of each default, to every row.
    private mutating func addColumns(_ s: JSONNode, _ needed: [WriteCatalog.Column], explicit: [String], targets: [WriteCatalog.Column?],
                                     rows: [[JSONNode]]) {
        let names = needed.map { Verification.quoteIdentifier($0.name) }.joined(separator: ", ")
        if let firstColumn = s["cols"]?.array.first?["ResTarget"]?["location"]?.int {
            guard let close = closingParen(enclosing: firstColumn) else { return reasons.append("cannot find the end of the column list") }
            edits.append((close..<close, ", " + names, ", " + names))
        } else {
            guard let values = firstToken(Self.valuesKeyword, after: s["relation"]?["location"]?.int ?? 0) else { return reasons.append("cannot find VALUES") }
            let all = (targets.compactMap { $0?.name }.map(Verification.quoteIdentifier) + [names]).joined(separator: ", ")
            edits.append((values.start..<values.start, "(" + all + ") ", "(" + all + ") "))
        }
        guard let values = firstToken(Self.valuesKeyword, after: s["relation"]?["location"]?.int ?? 0) else { return reasons.append("cannot find VALUES") }
        let ends = rowEnds(afterValues: values)
        guard ends.count == rows.count else { return reasons.append("cannot find the end of each VALUES row") }
        for close in ends {
            var leader = "", follower = ""
            for column in needed {
                let (l, f) = captured(column.defaultExpression ?? "NULL", type: column.type, append: !column.defaultIsTransactionConstant)
                leader += ", " + l
                follower += ", " + f
            }
            edits.append((close..<close, leader, follower))
        }
    }

    // MARK: UPDATE, DELETE, MERGE, COPY

    private mutating func update(_ s: JSONNode) {
        visit(s["withClause"], .perRow)
        let table = lookUp(s["relation"], verb: "UPDATE of")
        for target in s["targetList"]?.array ?? [] {
            let name = target["ResTarget"]?["name"]?.string
            if let location = target["ResTarget"]?["val"]?["SetToDefault"]?["location"]?.int, let column = name.flatMap({ table?.column($0) }),
               column.defaultDiffersPerSide, let expression = column.defaultExpression {
                // SET col = DEFAULT: exact only if the default is the same for every row.
                if NondeterministicCall.worstClass(expression) == .perCall {
                    reasons.append("SET \(column.name) = DEFAULT gives each row its own value of a default that differs per side")
                } else if let end = tokenEnd(at: location) {
                    if !column.defaultIsTransactionConstant { repeatable = false }
                    capture(location..<end, type: column.type, expression: expression, append: false)
                }
            } else {
                visit(target["ResTarget"]?["val"], .perRow)
            }
        }
        visit(s["fromClause"], .perRow) // UPDATE … FROM (SELECT now() AS ts) s SET x = s.ts stores it
        visit(s["whereClause"], .filter)
        returning(s["returningList"])
    }

    private mutating func delete(_ s: JSONNode) {
        visit(s["withClause"], .perRow)
        _ = lookUp(s["relation"], verb: "DELETE from")
        visit(s["usingClause"], .filter)
        visit(s["whereClause"], .filter)
        returning(s["returningList"])
    }

    private mutating func merge(_ s: JSONNode) {
        let table = lookUp(s["relation"], verb: "MERGE into")
        var differs = table?.columns.contains { $0.defaultDiffersPerSide } ?? false
        s.walk { node, _ in if FunctionCallNode(node)?.classification != nil { differs = true } }
        if differs { reasons.append("MERGE with values that differ per side (defaults or calls) is not rewritten") }
    }

    private mutating func copy(_ s: JSONNode) {
        guard s["is_from"]?.bool == true, s["filename"] == nil, s["relation"] != nil else { return }
        guard let table = lookUp(s["relation"], verb: "COPY into") else { return }
        let given = Set((s["attlist"]?.array ?? []).compactMap { $0["String"]?["sval"]?.string })
        let needed = table.columns.filter { $0.defaultDiffersPerSide && (given.isEmpty ? false : !given.contains($0.name)) }
        // Without a column list COPY fills every column from the data: nothing is left to a default.
        if !needed.isEmpty {
            reasons.append("COPY into \(table.name) leaves \(needed.map(\.name).joined(separator: ", ")) to a default that differs per side")
        }
    }

    /// The catalog's table for a relation of the route's schema; a reason when it cannot be known. Temporary
    /// tables are the session's own (each side has its own copy) and need nothing.
    private mutating func lookUp(_ relation: JSONNode?, verb: String) -> WriteCatalog.Table? {
        guard let relation = relation?["RangeVar"] ?? relation, let name = relation["relname"]?.string else { return nil }
        if relation["relpersistence"]?.string == "t" || relation["schemaname"]?.string == "pg_temp" { return nil }
        guard let catalog else {
            // Not read yet (or it could not be): the caller reads it and plans again.
            if !unknownTables.contains(name) { unknownTables.append(name) }
            return nil
        }
        if let schema = relation["schemaname"]?.string, schema != catalog.schema {
            reasons.append("\(verb) \(schema).\(name): outside the route's schema \(catalog.schema), its defaults are unknown")
            return nil
        }
        guard let table = catalog.tables[name] else {
            if !unknownTables.contains(name) { unknownTables.append(name) }
            return nil
        }
        if !table.nondeterministicTriggers.isEmpty {
            reasons.append("\(verb) \(name): trigger \(table.nondeterministicTriggers.joined(separator: ", ")) calls a function whose value differs per side")
        }
        return table
    }

    /// The call a chain of casts wraps (`now()::date::text` → now()).
    static func castCall(_ node: JSONNode) -> FunctionCallNode? {
        if let inner = node["TypeCast"]?["arg"] { return castCall(inner) }
        return FunctionCallNode(node)
    }

    /// Where a target-list item that starts at `location` ends: the next `,`, `;` or `)` outside its own
    /// parentheses, or the end of the text.
    private func itemEnd(from location: Int) -> Int? {
        guard var k = tokenIndex(at: location) else { return nil }
        var depth = 0
        while k < tokens.count {
            switch tokens[k].kind {
            case Self.openParen: depth += 1
            case Self.closeParen: if depth == 0 { return tokens[k].start }; depth -= 1
            case Self.comma, 59 /* ; */: if depth == 0 { return tokens[k].start }
            default: break
            }
            k += 1
        }
        return tokens.last?.end
    }

    // MARK: tokens

    private func tokenIndex(at location: Int) -> Int? {
        var lo = 0, hi = tokens.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if tokens[mid].start < location { lo = mid + 1 } else { hi = mid }
        }
        return lo < tokens.count && tokens[lo].start == location ? lo : nil
    }

    private func tokenEnd(at location: Int) -> Int? { tokenIndex(at: location).map { tokens[$0].end } }

    private func firstToken(_ kind: Int, after location: Int) -> PostgresParser.Token? {
        tokens.first { $0.start >= location && $0.kind == kind }
    }

    /// The matching `)` of the `(` just after token `index`, if that is one.
    private func matchingParen(after index: Int) -> Int? {
        guard index + 1 < tokens.count, tokens[index + 1].kind == Self.openParen else { return nil }
        return matchingParen(from: index + 1)
    }

    /// The byte offset of the `)` closing the parenthesized list whose first element starts at `location`.
    private func closingParen(enclosing location: Int) -> Int? {
        guard let i = tokenIndex(at: location), i > 0, tokens[i - 1].kind == Self.openParen, let close = matchingParen(from: i - 1) else { return nil }
        return tokens[close].start
    }

    /// The `)` matching the `(` at token `open`.
    private func matchingParen(from open: Int) -> Int? {
        var depth = 0
        for k in open..<tokens.count {
            if tokens[k].kind == Self.openParen { depth += 1 }
            if tokens[k].kind == Self.closeParen { depth -= 1; if depth == 0 { return k } }
        }
        return nil
    }

    /// The offsets of each VALUES row's closing `)`: `VALUES (…), (…)` read token by token.
    private func rowEnds(afterValues values: PostgresParser.Token) -> [Int] {
        guard var k = tokenIndex(at: values.start) else { return [] }
        var ends: [Int] = []
        while k + 1 < tokens.count, tokens[k + 1].kind == Self.openParen, let close = matchingParen(from: k + 1) {
            ends.append(tokens[close].start)
            guard close + 1 < tokens.count, tokens[close + 1].kind == Self.comma else { break }
            k = close + 1
        }
        return ends
    }

    /// The bytes a call spans: its name (schema-qualified or not) through its closing parenthesis; a
    /// keyword such as `CURRENT_TIMESTAMP` through its optional `(precision)`.
    private func span(of call: FunctionCallNode) -> Range<Int>? {
        guard let first = tokenIndex(at: call.location) else { return nil }
        var last = first
        if call.isKeyword {
            if let close = matchingParen(after: first) { last = close }
        } else {
            // name [. name]* ( … )
            var k = first
            while k + 2 < tokens.count, tokens[k + 1].kind == 46 /* . */ { k += 2 }
            guard let close = matchingParen(after: k) else { return nil }
            last = close
        }
        return tokens[first].start..<tokens[last].end
    }

    /// The rewritten texts for the leader and the follower; nil if two edits overlap.
    func apply() -> (String, String)? {
        let sorted = edits.sorted { ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound) }
        for k in sorted.indices.dropFirst() where sorted[k].range.lowerBound < sorted[k - 1].range.upperBound { return nil }
        var leader: [UInt8] = [], follower: [UInt8] = []
        var at = 0
        for e in sorted {
            leader += text[at..<e.range.lowerBound]; follower += text[at..<e.range.lowerBound]
            leader += Array(e.leader.utf8); follower += Array(e.follower.utf8)
            at = e.range.upperBound
        }
        leader += text[at...]; follower += text[at...]
        return (String(decoding: leader, as: UTF8.self), String(decoding: follower, as: UTF8.self))
    }
}

/// A call in the parse tree that may differ per side: a `FuncCall` by name or a `SQLValueFunction`.
struct FunctionCallNode {
    let name: String
    let location: Int
    let classification: NondeterministicCall?
    /// `CURRENT_TIMESTAMP` and friends: keywords, with an optional precision in parentheses.
    let isKeyword: Bool

    /// The name PostgreSQL gives a result column that is this call alone (`now`, `current_timestamp`).
    var columnName: String { name.lowercased().replacingOccurrences(of: "_n", with: "", options: .anchored.union(.backwards)) }

    init?(_ node: JSONNode) {
        if let f = node["FuncCall"] {
            let parts = (f["funcname"]?.array ?? []).compactMap { $0["String"]?["sval"]?.string }
            guard let last = parts.last else { return nil }
            name = last
            location = f["location"]?.int ?? -1
            classification = NondeterministicCall.function(last, schema: parts.count > 1 ? parts[parts.count - 2] : nil)
            isKeyword = false
        } else if let v = node["SQLValueFunction"], let op = v["op"]?.string {
            name = op.replacingOccurrences(of: "SVFOP_", with: "")
            location = v["location"]?.int ?? -1
            classification = NondeterministicCall.sqlValueFunction(op, typmod: v["typmod"]?.int ?? -1)
            isKeyword = true
        } else {
            return nil
        }
    }
}

extension NondeterministicCall {
    enum EvaluationClass: Int, Comparable {
        case constant, perStatement, perCall
        static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    var evaluationClass: EvaluationClass {
        switch self { case .constant: return .constant; case .perStatement: return .perStatement; case .perCall: return .perCall }
    }

    /// The most often evaluated call in an expression (nil: none differs per side).
    static func worstClass(_ expression: String) -> EvaluationClass? {
        guard let json = PostgresParser.parseTree("SELECT " + expression).json, let tree = try? JSONNode.parse(json) else { return .perCall }
        var worst: EvaluationClass?
        tree.walk { node, _ in
            if let c = FunctionCallNode(node)?.classification?.evaluationClass { worst = max(worst ?? c, c) }
        }
        return worst
    }
}

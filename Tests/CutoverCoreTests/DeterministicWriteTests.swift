// The mirroring rewrite as text in, texts out: what is captured from the leader, what the follower reads,
// and what is refused as non-deterministic (never silently passed).
import CutoverCore
import CutoverProtocol
import Testing

@Suite struct DeterministicWriteTests {
    /// A table shaped like the services' own: bigserial id, now() and uuid defaults, a plain column.
    static let catalog = WriteCatalog(schema: "onboarding", tables: [
        .init(name: "candidates", columns: [
            .init(name: "id", type: "bigint", defaultExpression: "nextval('onboarding.candidates_id_seq'::regclass)"),
            .init(name: "name", type: "text"),
            .init(name: "status", type: "text", defaultExpression: "'new'::text"),
            .init(name: "created_at", type: "timestamp with time zone", defaultExpression: "now()"),
            .init(name: "token", type: "uuid", defaultExpression: "gen_random_uuid()"),
            .init(name: "updated_at", type: "timestamp with time zone"),
        ]),
        .init(name: "events", columns: [
            .init(name: "id", type: "integer", defaultExpression: "nextval('onboarding.events_id_seq'::regclass)", identity: .always),
            .init(name: "body", type: "text"),
        ]),
        .init(name: "audited", columns: [.init(name: "v", type: "text")], nondeterministicTriggers: ["stamp"]),
        .init(name: "plain", columns: [.init(name: "k", type: "integer"), .init(name: "v", type: "text")]),
    ])

    func plan(_ text: String) -> WritePlan { DeterministicWrite.plan(text, catalog: Self.catalog) }

    func captured(_ text: String) -> CapturedWrite? {
        if case .captured(let c) = plan(text) { return c }
        Issue.record("not captured: \(plan(text))")
        return nil
    }

    func reason(_ text: String) -> String? {
        if case .nondeterministic(let r) = plan(text) { return r }
        return nil
    }

    @Test func theCatalogKnowsWhichDefaultsDifferPerSide() {
        let t = Self.catalog.tables["candidates"]!
        #expect(t.columns.map(\.defaultDiffersPerSide) == [true, false, false, true, true, false])
        #expect(Self.catalog.tables["events"]!.columns[0].defaultDiffersPerSide, "an identity column")
        #expect(WriteCatalog.Column(name: "d", type: "text", defaultExpression: "(now())::text").defaultDiffersPerSide)
        #expect(WriteCatalog.Column(name: "d", type: "timestamp", defaultExpression: "CURRENT_TIMESTAMP").defaultDiffersPerSide)
        #expect(!WriteCatalog.Column(name: "d", type: "int", defaultExpression: "(1 + 2)").defaultDiffersPerSide)
        #expect(!WriteCatalog.Column(name: "g", type: "int", defaultExpression: "now()", generated: true).defaultDiffersPerSide)
    }

    @Test func theCatalogIsBuiltFromTheLeadersRows() {
        let rows: [[String?]] = [
            ["t", "id", "integer", nil, "a", "", "onboarding.t_id_seq", nil],
            ["t", "at", "timestamp with time zone", "now()", "", "", nil, nil],
            ["u", "v", "text", nil, "", "", nil, "audit,stamp"],
        ]
        let c = WriteCatalog(schema: "onboarding", rows: rows)
        #expect(c.tables["t"]?.columns.map(\.name) == ["id", "at"])
        #expect(c.tables["t"]?.columns[0].identity == .always)
        #expect(c.tables["t"]?.columns[0].defaultExpression == "nextval('onboarding.t_id_seq'::regclass)")
        #expect(c.tables["u"]?.nondeterministicTriggers == ["audit", "stamp"])
    }

    @Test func anInsertGetsItsPerSideDefaultsCapturedRowByRow() throws {
        let c = try #require(captured("INSERT INTO candidates (name) VALUES ('a'), ($1) RETURNING id"))
        #expect(c.settings.count == 6, "id, created_at and token for each of two rows")
        #expect(c.leaderText.hasPrefix(#"INSERT INTO candidates (name, "id", "created_at", "token") VALUES ('a', (SELECT NULLIF(CASE WHEN pg_catalog.set_config('"#))
        #expect(c.leaderText.contains("COALESCE((nextval('onboarding.candidates_id_seq'::regclass))::bigint::text, pg_catalog.chr(1))"))
        #expect(c.leaderText.contains("COALESCE(pg_catalog.to_json((now())::timestamp with time zone) #>> '{}', pg_catalog.chr(1))"))
        #expect(c.leaderText.hasSuffix("::uuid) RETURNING id"))
        #expect(c.followerText.contains("($1, NULLIF(pg_catalog.current_setting('\(c.settings[3])'), pg_catalog.chr(1))::bigint"))
        #expect(!c.followerText.contains("nextval") && !c.followerText.contains("now()") && !c.followerText.contains("gen_random_uuid"))
        #expect(c.readbackQuery.hasPrefix("SELECT pg_catalog.current_setting('\(c.settings[0])', true), "))
        #expect(!c.needsOverride)
    }

    @Test func callsInAValuesRowAreCapturedOneByOne() throws {
        let c = try #require(captured("INSERT INTO plain VALUES (1, gen_random_uuid()::text), (2, 'x' || random() || CURRENT_TIMESTAMP(3))"))
        #expect(c.settings.count == 3)
        #expect(c.followerText == "INSERT INTO plain VALUES (1, NULLIF(pg_catalog.current_setting('\(c.settings[0])'), pg_catalog.chr(1))::uuid::text), "
                + "(2, 'x' || NULLIF(pg_catalog.current_setting('\(c.settings[1])'), pg_catalog.chr(1))::double precision || "
                + "NULLIF(pg_catalog.current_setting('\(c.settings[2])'), pg_catalog.chr(1))::timestamp with time zone)")
        // Cast to the base type: the column's own modifier applies on each side, as to the statement as sent.
        #expect(c.leaderText.contains("COALESCE(pg_catalog.to_json((CURRENT_TIMESTAMP(3))::timestamp with time zone) #>> '{}'"))
        #expect(c.settings == ["cutover.v_1", "cutover.v_2", "cutover.v_3"], "positional names, reused by every statement")
    }

    @Test func anUpdateCapturesTimeButNotAPerRowRandom() throws {
        let c = try #require(captured("UPDATE candidates SET status = 'hired', updated_at = now() WHERE id = $1"))
        #expect(c.settings.count == 1)
        #expect(c.followerText == "UPDATE candidates SET status = 'hired', updated_at = NULLIF(pg_catalog.current_setting('\(c.settings[0])'), pg_catalog.chr(1))::timestamp with time zone WHERE id = $1")
        #expect(reason("UPDATE candidates SET name = random()::text")?.contains("random() is evaluated per row") == true)
        // A time condition decides rows on each side; it is left as written (an index can still serve it).
        #expect(plan("DELETE FROM candidates WHERE created_at < now() - interval '1 day'") == .asSent)
        #expect(reason("DELETE FROM candidates WHERE random() < 0.5") != nil)
        #expect(captured("UPDATE candidates SET created_at = DEFAULT WHERE id = 1") != nil)
        #expect(reason("UPDATE candidates SET id = DEFAULT")?.contains("DEFAULT gives each row its own value") == true)
    }

    @Test func identityAlwaysGetsOverridingSystemValue() throws {
        let c = try #require(captured("INSERT INTO events (body) VALUES ('x')"))
        #expect(c.needsOverride)
        #expect(c.leaderText.hasPrefix(#"INSERT INTO events (body, "id") OVERRIDING SYSTEM VALUE VALUES ('x', "#))
        #expect(reason("INSERT INTO events (body) OVERRIDING USER VALUE VALUES ('x')") != nil)
        let d = try #require(captured("INSERT INTO events DEFAULT VALUES"))
        #expect(d.followerText == #"INSERT INTO events ("id") OVERRIDING SYSTEM VALUE VALUES (NULLIF(pg_catalog.current_setting('"# + d.settings[0] + "'), pg_catalog.chr(1))::integer)")
    }

    @Test func defaultKeywordsAndAWholeRowWithoutAColumnList() throws {
        let c = try #require(captured("INSERT INTO candidates VALUES (DEFAULT, 'n', DEFAULT)"))
        // id and status given (id by DEFAULT, captured in place), created_at and token added to a written-out list.
        #expect(c.settings.count == 3)
        #expect(c.followerText.hasPrefix(#"INSERT INTO candidates ("id", "name", "status", "created_at", "token") VALUES (NULLIF(pg_catalog.current_setting("#))
        #expect(c.followerText.contains(", 'n', DEFAULT, NULLIF("), "status's constant default stays a DEFAULT")
    }

    @Test func whatCannotBeCapturedIsNamed() {
        #expect(reason("INSERT INTO candidates (name) SELECT v FROM plain UNION ALL SELECT 'x'")?.contains("INSERT … SELECT into candidates leaves id, created_at, token") == true)
        #expect(reason("INSERT INTO candidates SELECT * FROM candidates")?.contains("how many columns it fills is not known") == true)
        #expect(reason("INSERT INTO audited VALUES ('x')")?.contains("trigger stamp") == true)
        #expect(plan("INSERT INTO nosuch VALUES (1)") == .needsCatalog(["nosuch"]), "read the catalog again, then decide")
        #expect(reason("INSERT INTO public.partners (name) VALUES ('x')")?.contains("outside the route's schema") == true)
        #expect(reason("COPY candidates (name) FROM STDIN")?.contains("COPY into candidates leaves id, created_at, token") == true)
        #expect(reason("MERGE INTO candidates c USING plain p ON c.id = p.k WHEN NOT MATCHED THEN INSERT (name) VALUES (p.v)") != nil)
        #expect(DeterministicWrite.plan("INSERT INTO candidates (name) VALUES ('x')", catalog: nil) != .asSent, "no catalog: unknown, never silent")
    }

    @Test func whatNeedsNothingIsSentAsIs() {
        #expect(plan("SELECT now(), random()") == .asSent, "a read stores nothing")
        #expect(plan("INSERT INTO candidates (id, name, created_at, token) VALUES (1, 'now()', '2020-01-01', '00000000-0000-0000-0000-000000000000')") == .asSent)
        #expect(plan("INSERT INTO candidates (id, name, created_at, token) SELECT k, v, '2020-01-01', NULL FROM plain") == .asSent)
        #expect(plan("COPY candidates FROM STDIN") == .asSent, "COPY without a column list fills every column from the data")
        #expect(plan("UPDATE plain SET v = 'x' WHERE k = 1") == .asSent)
        #expect(plan("CREATE TEMP TABLE scratch AS SELECT random()") == .asSent)
        #expect(plan("INSERT INTO pg_temp.scratch VALUES (now())") != .asSent, "a call in a VALUES row is still captured")
        #expect(plan("not sql at all") != .asSent, "what cannot be read here is not passed as harmless")
    }

    @Test func reviewFindings() throws {
        // RETURNING keeps the column name PostgreSQL gives a bare call.
        let r = try #require(captured("UPDATE plain SET v = 'x' RETURNING k, now(), CURRENT_TIMESTAMP"))
        #expect(r.followerText.contains(#"::timestamp with time zone AS "now""#) && r.followerText.contains(#"AS "current_timestamp""#))
        let cast = try #require(captured("UPDATE plain SET v = 'x' RETURNING now()::date, k"))
        #expect(cast.followerText.hasSuffix(#"::timestamp with time zone::date AS "now", k"#), "\(cast.followerText)")
        // A value stored through a subquery or a CTE is captured too (not only a VALUES item).
        #expect(captured("INSERT INTO plain (k, v) VALUES (1, (SELECT now()::text))") != nil)
        #expect(captured("WITH c AS (SELECT now() AS ts) INSERT INTO plain (k, v) SELECT 1, ts::text FROM c") != nil)
        #expect(captured("UPDATE plain SET v = s.ts::text FROM (SELECT now() AS ts) s") != nil)
        #expect(captured("INSERT INTO plain (k, v) SELECT 1, x FROM (SELECT random()::text AS x) s")?.leaderText.contains("cutover_rows") == true,
                "a per-row random() in an INSERT … SELECT: the rows are captured whole")
        // An explicit value for a GENERATED ALWAYS identity is refused as sent: no OVERRIDING added for it.
        #expect(plan("INSERT INTO events (id, body) VALUES (DEFAULT, 'a'), (5, 'b')") == .asSent)
        // A bulk VALUES list past the readback's width is refused, not half captured.
        let rows = (1...300).map { "('n\($0)')" }.joined(separator: ", ")
        #expect(reason("INSERT INTO candidates (name) VALUES \(rows)")?.contains("at most 800") == true)
        // A schema-qualified function of the same name is not PostgreSQL's.
        #expect(plan("INSERT INTO plain VALUES (1, myschema.now()::text)") == .asSent)
        #expect(NondeterministicCall.function("currval", schema: "myschema") == nil)
        // A value the leader never computed fails on the follower, if the follower evaluates it.
        let u = try #require(captured("UPDATE candidates SET updated_at = now() WHERE id = -1"))
        #expect(CapturedUnit.followerText(u, values: [nil]).contains("current_setting('cutover.not_computed_by_the_leader')"))
    }

    @Test func secondReviewFindings() throws {
        // Bare `character` is char(1) and bare `bit` is bit(1): their lengths stay; unbounded bases lose them.
        let c = WriteCatalog(schema: "s", tables: [.init(name: "t", columns: [
            .init(name: "code", type: "character(36)", defaultExpression: "(gen_random_uuid())::text"),
            .init(name: "name", type: "character varying(5)", defaultExpression: "(now())::text"),
            .init(name: "k", type: "integer")])])
        guard case .captured(let w) = DeterministicWrite.plan("INSERT INTO t (k) VALUES (1)", catalog: c) else { Issue.record("not captured"); return }
        #expect(w.followerText.contains("::character(36)") && w.followerText.contains("::character varying)"), "\(w.followerText)")
        // The follower's own statement is closed before it is parsed too (a failed Bind skipped its Close).
        let write = try #require(captured("INSERT INTO candidates (name) VALUES ($1)"))
        var parse = ByteWriter()
        parse.beginMessage(UInt8(ascii: "P")); parse.writeCString("s1"); parse.writeCString("INSERT INTO candidates (name) VALUES ($1)")
        parse.writeBytes([0, 0]); parse.endMessage()
        var bind = ByteWriter()
        bind.beginMessage(UInt8(ascii: "B")); bind.writeCString(""); bind.writeCString("s1"); bind.writeBytes([0, 0, 0, 0, 0, 0]); bind.endMessage()
        let rendered = CapturedUnit.renderForFollower(bind.bytes, executions: [CaptureExecution(write: write, text: nil, statement: "s1", parse: parse.bytes)],
                                                      values: [["1", "2026-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000"]])
        #expect(rendered.first == UInt8(ascii: "C"), "Close first")
        #expect(String(decoding: rendered, as: UTF8.self).contains("cutover_capture"))
    }

    @Test func severalStatementsAndConflictsGetSettingsOfTheirOwn() throws {
        let c = try #require(captured("INSERT INTO plain VALUES (1, now()::text); UPDATE candidates SET updated_at = now() WHERE id = 1"))
        #expect(c.settings.count == 2 && Set(c.settings).count == 2)
        let u = try #require(captured("INSERT INTO plain (k, v) VALUES (1, 'a') ON CONFLICT (k) DO UPDATE SET v = now()::text"))
        #expect(u.settings.count == 1)
        #expect(reason("INSERT INTO plain (k, v) VALUES (1, 'a') ON CONFLICT (k) DO UPDATE SET v = gen_random_uuid()::text") != nil)
        // A data-modifying CTE: the inner INSERT is rewritten like any other.
        let w = try #require(captured("WITH n AS (INSERT INTO candidates (name) VALUES ('x') RETURNING id) SELECT id FROM n"))
        #expect(w.settings.count == 3)
    }

    // MARK: a driver's batch (one Parse, many Binds, one Sync)

    @Test func valuesThatChangeAtEveryCallAreListedOncePerExecution() throws {
        let w = try #require(captured("INSERT INTO candidates (name) VALUES ($1)"))
        // id (nextval) and token (uuid) are listed; created_at (now()) holds for the whole transaction.
        #expect(w.appended == [true, false, true], "\(w.settings)")
        #expect(w.repeatable)
        #expect(w.leaderText.contains("octet_length(cutover_c.v)"))
        // Three executions: each gets its own id and token, all the same created_at.
        let row: [String?] = ["2:412:423:100", "2026-01-01T00:00:00+00:00",
                              "36:00000000-0000-0000-0000-00000000000136:00000000-0000-0000-0000-00000000000236:00000000-0000-0000-0000-000000000003"]
        let values = try #require(w.valuesByExecution(row, executions: 3))
        #expect(values.map { $0[0] } == ["41", "42", "100"] as [String?])
        #expect(values[0][1] == "2026-01-01T00:00:00+00:00" && values[2][1] == "2026-01-01T00:00:00+00:00")
        #expect(values.map { $0[2] } == (1...3).map { "00000000-0000-0000-0000-00000000000\($0)" } as [String?])
        // Another number of entries than executions: which is whose cannot be known, so nothing is guessed.
        #expect(w.valuesByExecution(["2:412:42", nil, nil], executions: 1) == nil)
        #expect(w.valuesByExecution(["2:412:42", nil, nil], executions: 3) == nil)
        // A single execution that never reached the value (its statement failed first) reads nil.
        #expect(w.valuesByExecution(["", nil, nil], executions: 1)?[0][0] == nil)
        // A list that does not read as one is refused too.
        #expect(w.valuesByExecution(["9:42", nil, nil], executions: 1) == nil)
        // One execution reads its one entry; NULL travels as chr(1) inside the entry.
        #expect(w.valuesByExecution(["1:\u{1}", "x", "1:y"], executions: 1)?[0] == ["\u{1}", "x", "y"])
    }

    @Test func aBatchNeedsEveryValueListedOrConstantThroughTheTransaction() throws {
        #expect(try #require(captured("UPDATE candidates SET updated_at = now() WHERE id = $1")).repeatable)
        #expect(try #require(captured("INSERT INTO plain VALUES ($1, gen_random_uuid()::text)")).repeatable)
        // One value a statement: each execution has its own, and one setting cannot hold them all.
        #expect(try #require(captured("UPDATE candidates SET updated_at = statement_timestamp() WHERE id = $1")).repeatable == false)
        #expect(try #require(captured("INSERT INTO plain VALUES (1, 'a') RETURNING statement_timestamp()")).repeatable == false)
        #expect(try #require(captured("INSERT INTO plain VALUES (1, 'a') RETURNING now()")).repeatable)
    }

    @Test func aBatchOfBindsIsRenderedOneOwnStatementEach() throws {
        let text = "INSERT INTO candidates (name) VALUES ($1)"
        let write = try #require(captured(text))
        var unit = ByteWriter()
        unit.beginMessage(UInt8(ascii: "P")); unit.writeCString(""); unit.writeCString(text); unit.writeBytes([0, 0]); unit.endMessage()
        for _ in 0..<3 {
            unit.beginMessage(UInt8(ascii: "B")); unit.writeCString(""); unit.writeCString(""); unit.writeBytes([0, 0, 0, 0, 0, 0]); unit.endMessage()
            unit.beginMessage(UInt8(ascii: "E")); unit.writeCString(""); unit.writeBytes([0, 0, 0, 0]); unit.endMessage()
        }
        let e = CaptureExecution(write: write, text: text, statement: nil, parse: nil)
        let values: [[String?]] = (1...3).map { ["\($0)", "2026-01-01T00:00:00+00:00", "00000000-0000-0000-0000-00000000000\($0)"] }
        let rendered = String(decoding: CapturedUnit.renderForFollower(unit.bytes + CapturedUnit.sync, executions: [e, e, e], values: values), as: UTF8.self)
        // The client's unnamed statement keeps its text; each Bind runs from the proxy's own, with its values.
        #expect(rendered.contains(text))
        for k in 1...3 { #expect(rendered.contains("NULLIF(E'\(k)'"), "execution \(k): \(rendered)") }
        #expect(rendered.components(separatedBy: "cutover_capture").count - 1 == 3 * 4) // Close, Parse, Bind, Close
    }

    // MARK: INSERT … SELECT

    @Test func anInsertSelectHasItsRowsCapturedWhole() throws {
        let w = try #require(captured("INSERT INTO candidates (name) SELECT v AS label FROM plain WHERE k IS DISTINCT FROM $1 ORDER BY k ON CONFLICT DO NOTHING RETURNING id"))
        // name, then id, created_at, token: one array each.
        #expect(w.settings.count == 4 && w.appended == [false, false, false, false] && !w.repeatable)
        // Each item is cast where it stands (its alias stays outside), the SELECT is materialized, the
        // defaults evaluated once a row, the arrays built before the first row is inserted.
        #expect(w.leaderText.hasPrefix(#"INSERT INTO candidates (name, "id", "created_at", "token") WITH cutover_q (c1) AS MATERIALIZED (SELECT v AS label FROM plain WHERE k IS DISTINCT FROM $1 ORDER BY k "# + "\n), "), "\(w.leaderText)")
        #expect(w.leaderText.contains("(SELECT cutover_q.*, (nextval('onboarding.candidates_id_seq'::regclass)), (now()), (gen_random_uuid()) FROM cutover_q)"))
        #expect(w.leaderText.contains("> \(DeterministicWrite.maximumRowBytes) THEN pg_catalog.set_config('cutover.v_1', pg_catalog.chr(2), false)"), "too large: a marker")
        #expect(w.leaderText.hasSuffix("FROM cutover_rows) END) IS NOT NULL ON CONFLICT DO NOTHING RETURNING id"))
        // The follower inserts the leader's rows, and runs the SELECT too (for what its functions do).
        #expect(w.followerText.contains("WITH cutover_q (c1) AS MATERIALIZED (SELECT v AS label FROM plain WHERE k IS DISTINCT FROM $1 ORDER BY k \n) SELECT cutover_u.c1::text, cutover_u.d1::bigint, cutover_u.d2::timestamp with time zone, cutover_u.d3::uuid FROM ROWS FROM ("), "\(w.followerText)")
        #expect(w.followerText.hasSuffix("AS cutover_u (c1, d1, d2, d3) WHERE (SELECT pg_catalog.count(*) FROM cutover_q) >= 0 ON CONFLICT DO NOTHING RETURNING id"))
        let rendered = CapturedUnit.followerText(w, values: [#"{"C:\\dir",b}"#, "{1,2}", "{2026-01-01T00:00:00+00:00,2026-01-01T00:00:00+00:00}", "{00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000002}"])
        #expect(rendered.contains("pg_catalog.unnest(E'{1,2}'::text[])") && !rendered.contains("nextval"))
        // Backslashes doubled in an E'' literal: the same whatever standard_conforming_strings.
        #expect(rendered.contains(#"pg_catalog.unnest(E'{"C:\\\\dir",b}'::text[])"#), "\(rendered)")
    }

    @Test func anInsertSelectIntoAnIdentityOrWithoutAColumnList() throws {
        // An ALWAYS identity left to its default: OVERRIDING SYSTEM VALUE on both sides, sequences carried.
        let e = try #require(captured("INSERT INTO events (body) SELECT v FROM plain"))
        #expect(e.leaderText.hasPrefix(#"INSERT INTO events (body, "id") OVERRIDING SYSTEM VALUE WITH cutover_q"#), "\(e.leaderText)")
        #expect(e.followerText.hasPrefix(#"INSERT INTO events (body, "id") OVERRIDING SYSTEM VALUE WITH cutover_q"#))
        #expect(e.needsOverride)
        // Without a column list the list is written out (the SELECT fills the first columns).
        let p = try #require(captured("INSERT INTO plain SELECT k + 1, gen_random_uuid()::text FROM plain"))
        #expect(p.leaderText.hasPrefix("INSERT INTO plain WITH cutover_q (c1, c2) AS MATERIALIZED (SELECT k + 1, gen_random_uuid()::text FROM plain\n)"), "\(p.leaderText)")
        // Only parameters and untyped literals are cast where they stand (to a type that does not cut them).
        let typed = try #require(captured("INSERT INTO candidates (name, created_at) SELECT $1, '2024-01-01' -- a comment"))
        #expect(typed.leaderText.contains("(SELECT ($1)::text, ('2024-01-01')::timestamp with time zone -- a comment\n)"), "\(typed.leaderText)")
        #expect(DeterministicWrite.plan("INSERT INTO t (c) SELECT 'abcdef'", catalog: WriteCatalog(schema: "s", tables: [.init(name: "t", columns: [
            .init(name: "c", type: "character(5)"), .init(name: "id", type: "bigint", defaultExpression: "nextval('s.q'::regclass)")])]))
            .leaderTextContains("('abcdef')::bpchar"))
        // A time in a condition is left to each side (as everywhere): no rows captured for it.
        #expect(plan("INSERT INTO plain SELECT k, v FROM plain WHERE k < extract(epoch from now())") == .asSent)
        #expect(captured("INSERT INTO plain SELECT k, v FROM plain WHERE random() < 0.5")?.leaderText.contains("cutover_rows") == true)
        // A star with an untyped item: its column is unknown.
        #expect(reason("INSERT INTO candidates (name, status) SELECT *, $1 FROM (SELECT v FROM plain) s") != nil)
        #expect(reason("INSERT INTO candidates SELECT (c).* FROM (SELECT candidates AS c FROM candidates) s") != nil)
        // A value in COALESCE is not evaluated at every execution: not for a batch.
        #expect(try #require(captured("INSERT INTO plain VALUES (1, COALESCE($1, gen_random_uuid()::text))")).repeatable == false)
        // A parenthesized SELECT or a set operation is not rewritten: marked.
        #expect(reason("INSERT INTO candidates (name) (SELECT v FROM plain)") != nil)
    }
}

extension WritePlan {
    func leaderTextContains(_ part: String) -> Bool {
        if case .captured(let w) = self { return w.leaderText.contains(part) }
        return false
    }
}

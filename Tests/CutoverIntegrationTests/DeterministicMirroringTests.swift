// Integration: tables shaped like the services' own (bigserial, identity, now() and uuid defaults,
// updated_at = now()) written by 8 clients at once through a dual-legacy route end identical on both sides,
// in sync and async mode; what cannot be made identical marks the route out of sync with its reason.
import CLibPQ
import CutoverCore
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct DeterministicMirroringTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    static let schema = """
        DROP TABLE IF EXISTS det_items, det_events, det_kv;
        CREATE TABLE det_items (id bigserial PRIMARY KEY, owner int NOT NULL, name text NOT NULL, status text NOT NULL DEFAULT 'new',
            created_at timestamptz NOT NULL DEFAULT now(), token uuid NOT NULL DEFAULT gen_random_uuid(), stamp text DEFAULT now()::text,
            updated_at timestamptz, n bigint NOT NULL DEFAULT 0);
        CREATE TABLE det_events (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner int, body text, at timestamptz DEFAULT clock_timestamp(),
            day date DEFAULT CURRENT_DATE);
        CREATE TABLE det_kv (k text PRIMARY KEY, v bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
        """

    /// The rows of every table, as text, ordered: what must be equal on both sides.
    func contents(_ c: PQConnection) throws -> [[String?]] {
        try c.query("SELECT 'i', id::text, owner::text, name, status, created_at::text, token::text, stamp, updated_at::text, n::text FROM det_items ORDER BY id")
            + c.query("SELECT 'e', id::text, owner::text, body, at::text, day::text, '', '', '', '' FROM det_events ORDER BY id")
            + c.query("SELECT 'k', k, v::text, at::text, '', '', '', '', '', '' FROM det_kv ORDER BY k")
    }

    /// 8 clients for `seconds`: each inserts (simple, multi-row, extended with RETURNING, a named prepared
    /// statement with RETURNING, DEFAULT VALUES into an identity table, batches of one Parse and many
    /// Binds, INSERT … SELECT), updates its rows (updated_at = now(), commutative and non-commutative), upserts,
    /// deletes, in autocommit and in explicit transactions.
    func load(_ p: RouteProxy, seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        let failures = Failures()
        let conninfo = f.conninfo(p.port, database: p.name)
        DispatchQueue.concurrentPerform(iterations: 8) { client in
            do {
                let c = try PQConnection(conninfo + " application_name=det\(client)")
                // A named prepared statement, parsed once and bound again and again (pgjdbc, asyncpg, psycopg's prepare).
                try c.prepare("add_event", "INSERT INTO det_events (owner, body) VALUES ($1, $2) RETURNING id, at")
                var k = 0
                while Date() < deadline {
                    k += 1
                    switch k % 12 {
                    case 0: try c.query("INSERT INTO det_items (owner, name) VALUES (\(client), 'simple \(k)')")
                    case 1: try c.query("INSERT INTO det_items (owner, name) VALUES (\(client), 'multi a'), (\(client), 'multi b')")
                    case 2:
                        let rows = try c.query("INSERT INTO det_items (owner, name) VALUES ($1, $2) RETURNING id, created_at, token", ["\(client)", "extended \(k)"])
                        if rows.count != 1 { failures.add("RETURNING gave \(rows.count) rows") }
                    case 3: try c.query("UPDATE det_items SET status = 'seen', updated_at = now(), n = n * 2 + 1 WHERE owner = \(client) AND id % 3 = \(k % 3)")
                    case 4:
                        try c.query("BEGIN")
                        try c.query("INSERT INTO det_events (owner, body) VALUES (\(client), 'in a transaction')")
                        try c.query("UPDATE det_items SET n = n + 1, updated_at = CURRENT_TIMESTAMP WHERE owner = \(client) AND id % 5 = 0")
                        try c.query("COMMIT")
                    case 5: try c.query("INSERT INTO det_kv (k, v) VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET v = det_kv.v + 1, at = now()", ["key \(client) \(k % 4)"])
                    case 6: try c.query("DELETE FROM det_items WHERE owner = \(client) AND id % 7 = \(k % 7) AND status = 'seen'")
                    case 7 where k % 22 == 7: try c.query("INSERT INTO det_events DEFAULT VALUES")
                    case 8:
                        // A driver's batch: one Parse, a Bind/Execute per row, one Sync (pgjdbc's executeBatch).
                        try c.batch("INSERT INTO det_items (owner, name) VALUES ($1, $2)", (0..<4).map { ["\(client)", "batch \(k).\($0)"] })
                    case 9:
                        let rows = try c.batch("INSERT INTO det_events (owner, body) VALUES ($1, $2) RETURNING id", (0..<3).map { ["\(client)", "batch \(k).\($0)"] })
                        if rows.map(\.count) != [1, 1, 1] { failures.add("batch RETURNING gave \(rows.map(\.count)) rows") }
                    case 11:
                        // INSERT … SELECT: each row gets an id, a token and a stamp of its own, and the SELECT
                        // reads rows that concurrent sessions are changing.
                        try c.query("INSERT INTO det_items (owner, name, n) SELECT owner, 'copy of ' || id, $2 FROM det_items WHERE owner = $1 AND id % 13 = $2 ORDER BY id LIMIT 2",
                                    ["\(client)", "\(k % 13)"])
                    case 10:
                        try c.batch("UPDATE det_items SET updated_at = now(), n = n + $2 WHERE owner = $1 AND id % 4 = $3",
                                    (0..<3).map { ["\(client)", "\($0 + 1)", "\($0)"] })
                    default:
                        let rows = try c.execPrepared("add_event", ["\(client)", "prepared \(k)"])
                        if rows.count != 1 { failures.add("prepared RETURNING gave \(rows.count) rows") }
                    }
                }
            } catch {
                failures.add("client \(client): \(error)")
            }
        }
        #expect(failures.all.isEmpty, "\(failures.all.prefix(5))")
    }

    func run(mirror: String) throws {
        let route = "det\(mirror)"
        try f.onBothRecruitmentSides(Self.schema)
        let p = try RouteProxy(f, route, route: "mirror = \"\(mirror)\"")
        defer { p.stop() }
        load(p, seconds: 10)
        // The follower catches up (async), then both sides are read straight from the backends.
        try waitUntil("every session ended and its follower answered everything", seconds: 60) {
            try p.route()["sessions"] == "0" && p.admin().query("SHOW STATS").first { $0[0] == route }?[5] == "0"
        }
        let legacy = try contents(f.recruitmentLegacy()), new = try contents(f.recruitmentNew())
        #expect(legacy.count > 200, "the load wrote rows: \(legacy.count)")
        let differing = zip(legacy, new).filter { $0 != $1 }.count + abs(legacy.count - new.count)
        let row = try p.route()
        #expect(differing == 0, "\(mirror): \(differing) of \(legacy.count) rows differ; first: \(zip(legacy, new).first { $0 != $1 }.map { "\($0.0) vs \($0.1)" } ?? "-")")
        #expect(row["in_sync"] == "yes", "\(row)")
        // The sequences carried at a leader flip: the new side hands out ids after legacy's.
        try p.admin().query("SET PHASE \(route) TO dual-new")
        let before = try f.recruitmentLegacy().scalar("SELECT max(id) FROM det_items") ?? "0"
        let id = try p.client().scalar("INSERT INTO det_items (owner, name) VALUES (99, 'after the flip') RETURNING id") ?? "0"
        #expect((Int(id) ?? 0) > (Int(before) ?? 0), "new leader's id \(id) after legacy's \(before)")
        #expect(try f.recruitmentLegacy().scalar("SELECT token::text FROM det_items WHERE id = \(id)")
                == f.recruitmentNew().scalar("SELECT token::text FROM det_items WHERE id = \(id)"))
    }

    @Test func syncModeLeavesBothSidesIdentical() throws { try run(mirror: "sync") }

    @Test func asyncModeLeavesBothSidesIdentical() throws { try run(mirror: "async") }

    /// A statement prepared before the follower joined, and one carried across a leader flip, is still
    /// captured: the proxy parses it again on the (new) leader with its rewritten text.
    @Test func namedStatementsStayCapturedWhenTheFollowerJoinsAndWhenTheLeaderChanges() throws {
        try f.onBothRecruitmentSides(Self.schema)
        let p = try RouteProxy(f, "detnamed")
        defer { p.stop() }
        let c = try p.client()
        try c.prepare("add", "INSERT INTO det_items (owner, name) VALUES ($1, $2) RETURNING id")
        #expect(try p.admin().query("SET PHASE detnamed TO legacy").count == 1)
        _ = try c.execPrepared("add", ["1", "legacy only"]) // the new side misses it: re-copied below
        // Without a follower the leader runs the client's text again: nothing fills a setting no readback empties.
        let setting = try c.scalar("SELECT current_setting('cutover.v_1', true)")
        #expect(setting == nil || setting == "", "\(setting ?? "-")")
        try f.recruitmentNew().query("INSERT INTO det_items SELECT * FROM (VALUES (1::bigint, 1, 'legacy only', 'new', now(), gen_random_uuid(), NULL::text, NULL::timestamptz, 0::bigint)) v")
        try f.recruitmentNew().query("SELECT setval('det_items_id_seq', 1)")
        #expect(try p.admin().query("SET PHASE detnamed TO dual-legacy").count == 1)
        for k in 0..<3 { _ = try c.execPrepared("add", ["2", "after the follower joined \(k)"]) }
        try p.admin().query("SET PHASE detnamed TO dual-new")
        for k in 0..<3 { _ = try c.execPrepared("add", ["3", "after the leader changed \(k)"]) }
        try waitUntil("the follower answered everything") { try p.admin().query("SHOW STATS").first { $0[0] == "detnamed" }?[5] == "0" }
        let q = "SELECT id, owner, name, created_at::text, token::text FROM det_items WHERE owner > 1 ORDER BY id"
        let legacy = try f.recruitmentLegacy().query(q), new = try f.recruitmentNew().query(q)
        #expect(legacy.count == 6 && legacy == new, "\(legacy) vs \(new)")
        #expect(try p.route()["in_sync"] == "yes")
    }

    /// Defaults are inlined schema-qualified (a client's own search_path cannot break the leader's
    /// statement); a whole transaction in one Query is captured in lock-step.
    @Test func qualifiedDefaultsAndATransactionInOneQueryInLockStep() throws {
        try f.onBothRecruitmentSides(Self.schema)
        let p = try RouteProxy(f, "detpath", route: "mirror = \"sync\"")
        defer { p.stop() }
        let c = try p.client()
        // The catalog's defaults are schema-qualified: inlined into the leader's statement, they name the same
        // sequence whatever search_path the client set.
        var legacy = BackendConfig(name: "legacy", host: "127.0.0.1", port: f.legacy.port, database: "hexabuilders", user: "hexabuilders",
                                   password: FixtureSecrets.legacyPassword)
        legacy.tls = .disable
        guard case .success(let catalog) = BackendSession.readCatalog(legacy, schema: "recruitment") else { Issue.record("catalog"); return }
        #expect(catalog.tables["det_items"]?.column("id")?.defaultExpression == "nextval('recruitment.det_items_id_seq'::regclass)")
        try c.query("INSERT INTO det_items (owner, name) VALUES (5, 'captured')")
        let q = "SELECT id, created_at::text, token::text FROM det_items ORDER BY id"
        #expect(try f.recruitmentLegacy().query(q) == f.recruitmentNew().query(q))
        #expect(try p.route()["in_sync"] == "yes")
        // A whole transaction in one Query, in lock-step: captured, committed, read back, identical.
        let started = Date()
        try c.query("BEGIN; INSERT INTO det_items (owner, name) VALUES (6, 'in one Query'); UPDATE det_items SET updated_at = now() WHERE owner = 6; COMMIT")
        #expect(Date().timeIntervalSince(started) < 3, "answered at once, not after a follower timeout")
        let all = "SELECT id, created_at::text, token::text, updated_at::text FROM det_items ORDER BY id"
        #expect(try f.recruitmentLegacy().query(all) == f.recruitmentNew().query(all))
        #expect(try p.route()["in_sync"] == "yes")
    }

    /// A unit that runs a rewritten statement without its values being read back (refused) is followed by
    /// a query that empties what it filled: no listed value outlives it, to grow or to be taken for a later
    /// unit's. And the follower runs an INSERT … SELECT's SELECT too, for what its functions do.
    @Test func refusedUnitsLeaveNothingBehindAndTheFollowerRunsTheSelect() throws {
        for c in [try f.recruitmentLegacy(), try f.recruitmentNew()] {
            try c.query(Self.schema)
            try c.query("""
                DROP TABLE IF EXISTS det_audit; CREATE TABLE det_audit (k int);
                CREATE OR REPLACE FUNCTION det_bump(k int) RETURNS int LANGUAGE sql VOLATILE AS $$ INSERT INTO det_audit VALUES (k); SELECT k $$;
                """)
        }
        let p = try RouteProxy(f, "detempty")
        defer { p.stop() }
        let c = try p.client()
        try c.query("INSERT INTO det_items (owner, name) SELECT det_bump(7), 'through a function'")
        try waitUntil("the follower answered") { try p.admin().query("SHOW STATS").first { $0[0] == "detempty" }?[5] == "0" }
        #expect(try f.recruitmentNew().scalar("SELECT count(*) FROM det_audit") == "1", "the follower ran the SELECT's function")
        let q = "SELECT id, owner, token::text FROM det_items ORDER BY id"
        #expect(try f.recruitmentLegacy().query(q) == f.recruitmentNew().query(q))
        #expect(try p.route()["in_sync"] == "yes")
        // Parsed (rewritten) in one unit, bound in the next: refused, and what it filled is emptied behind it.
        try c.prepare("", "INSERT INTO det_items (owner, name) VALUES ($1, $2)")
        _ = try c.execPrepared("", ["1", "bound in a later unit"])
        let setting = try c.scalar("SELECT current_setting('cutover.v_1', true)")
        #expect(setting == nil || setting == "", "\(setting ?? "-")")
        try waitUntil("the route is marked") { try p.route()["in_sync"] == "no" }
        #expect(try p.route()["out_of_sync_reason"]?.contains("a Bind of the unnamed statement parsed in an earlier unit") == true)
    }

    @Test func whatCannotBeCapturedMarksTheRouteOutOfSyncWithItsReason() throws {
        try f.onBothRecruitmentSides(Self.schema)
        let p = try RouteProxy(f, "detmark")
        defer { p.stop() }
        let c = try p.client()
        try c.query("INSERT INTO det_items (owner, name) VALUES (1, 'captured')")
        usleep(300_000)
        #expect(try p.route()["in_sync"] == "yes")
        try c.query("INSERT INTO det_items (owner, name) SELECT 2, name FROM det_items UNION ALL SELECT 3, 'x'")
        try waitUntil("the route is marked") { try p.route()["in_sync"] == "no" }
        let reason = try p.route()["out_of_sync_reason"] ?? ""
        #expect(reason.contains("nondeterministic") && reason.contains("INSERT … SELECT into det_items"), "\(reason)")
        let recorded = try p.admin().query("SHOW DIVERGENCES detmark").filter { $0[2] == "nondeterministic" }
        #expect(recorded.first?[7]?.contains("leaves id, created_at, token, stamp to a default that differs per side and per row") == true, "\(recorded)")
    }
}

/// Failures collected from several threads.
final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ s: String) { lock.lock(); list.append(s); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return list }
}

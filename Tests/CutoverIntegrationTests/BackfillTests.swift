// Integration: `cutover backfill` copies a route's legacy tables (foreign keys, sequences) into its new database.
import Foundation
import Testing

@Suite(.serialized) struct BackfillTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func backfillCopiesInOneSnapshotWithSequencesAndRefusesToMixRows() throws {
        try f.onboarding.createDatabase(name: "backfill_new", owner: "onboarding_user")
        let ddl = """
            CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
            CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
                                 total numeric NOT NULL, doubled numeric GENERATED ALWAYS AS (total * 2) STORED, note text);
            """
        try f.legacy.psql("""
            CREATE SCHEMA backfill_s; SET search_path = backfill_s; \(ddl)
            INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 300) g;
            INSERT INTO orders (customer_id, total, note) SELECT 1 + g % 300, g / 7.0, CASE WHEN g % 5 = 0 THEN NULL ELSE E'tab\\there' END
              FROM generate_series(1, 5000) g;
            DELETE FROM customers WHERE id = 300 AND NOT EXISTS (SELECT 1 FROM orders WHERE customer_id = 300);
            SELECT nextval('customers_id_seq'), nextval('customers_id_seq');
            """, database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        @discardableResult func newSQL(_ sql: String) throws -> String {
            try f.onboarding.psql(sql, database: "backfill_new", user: "onboarding_user", password: FixtureSecrets.onboardingPassword)
        }
        try newSQL(ddl)
        let path = try f.offlineConfig("shop", legacySchema: "backfill_s", newDatabase: "backfill_new")
        func cli(_ args: [String]) throws -> ProcessResult { try f.cli(args) }

        let first = try cli(["backfill", "--config", path, "shop", "--overwrite-live"])
        #expect(first.status == 0, "\(first.stdout)\(first.stderr)")
        #expect(first.stdout.contains("2 tables, 5300 rows and 2 sequences copied"), "\(first.stdout)")
        let verify = try cli(["verify", "--config", path, "shop", "--attempts", "1"])
        #expect(verify.status == 0, "\(verify.stdout)")
        // Sequences continue where legacy's are (customers' is past its max id), identity included.
        #expect(try newSQL("SELECT nextval('customers_id_seq') || ',' || nextval('orders_id_seq')") == "303,5001")

        // A second run would mix rows: refused, nothing changes; --truncate replaces them.
        let again = try cli(["backfill", "--config", path, "shop", "--overwrite-live"])
        #expect(again.status == 1 && again.stdout.contains("not empty in schema public of database backfill_new on backend new")
                && again.stdout.contains("nothing copied"), "\(again.stdout)")
        #expect(try newSQL("SELECT count(*) FROM orders") == "5000")
        let replaced = try cli(["backfill", "--config", path, "shop", "--overwrite-live", "--truncate"])
        #expect(replaced.status == 0, "\(replaced.stdout)")
        #expect(replaced.stdout.contains("--overwrite-live: not asking a proxy; replacing these rows in schema public of database backfill_new")
                && replaced.stdout.range(of: #"orders\s+5000"#, options: .regularExpression) != nil, "what is replaced is listed: \(replaced.stdout)")
        #expect(try newSQL("SELECT count(*) FROM orders") == "5000")

        // With --table, only the copied tables' sequences are set: customers' is in use on the new side.
        try newSQL("SELECT setval('customers_id_seq', 9000)")
        let one = try cli(["backfill", "--config", path, "shop", "--overwrite-live", "--table", "orders", "--truncate"])
        #expect(one.status == 0 && one.stdout.contains("1 table, 5000 rows and 1 sequence copied"), "\(one.stdout)")
        #expect(try newSQL("SELECT nextval('customers_id_seq') || ',' || nextval('orders_id_seq')") == "9001,5001")

        // A column the new side lacks is found before anything is copied.
        try newSQL("ALTER TABLE orders DROP COLUMN note")
        let lacking = try cli(["backfill", "--config", path, "shop", "--overwrite-live", "--truncate"])
        #expect(lacking.status == 1 && lacking.stdout.contains("orders: column(s) note missing in schema public of database backfill_new"), "\(lacking.stdout)")
        #expect(try newSQL("SELECT count(*) FROM orders") == "5000", "the refused run truncated nothing")
    }

    @Test func aForeignKeyCycleLoadsWhenItsKeysAreDeferrable() throws {
        try f.onboarding.createDatabase(name: "backfill_cycle", owner: "onboarding_user")
        let ddl = """
            CREATE TABLE teams (id int PRIMARY KEY, lead int);
            CREATE TABLE people (id int PRIMARY KEY, team int REFERENCES teams DEFERRABLE);
            ALTER TABLE teams ADD FOREIGN KEY (lead) REFERENCES people DEFERRABLE;
            """
        try f.legacy.psql("""
            CREATE SCHEMA cycle_s; SET search_path = cycle_s; \(ddl)
            BEGIN; SET CONSTRAINTS ALL DEFERRED;
            INSERT INTO teams SELECT g, g * 10 FROM generate_series(1, 5) g;
            INSERT INTO people SELECT g, 1 + g % 5 FROM generate_series(1, 50) g;
            COMMIT;
            """, database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        try f.onboarding.psql(ddl, database: "backfill_cycle", user: "onboarding_user", password: FixtureSecrets.onboardingPassword)
        let path = try f.offlineConfig("cycle", legacySchema: "cycle_s", newDatabase: "backfill_cycle")
        let r = try f.cli(["backfill", "--config", path, "cycle", "--overwrite-live"])
        #expect(r.status == 0 && r.stdout.contains("2 tables, 55 rows"), "\(r.stdout)")
        #expect(try f.cli(["verify", "--config", path, "cycle", "--attempts", "1"]).status == 0)
    }

    @Test func newSchemaIsWhereBackfillAndVerifyLookAndTheProxysSearchPathOnTheNewSide() throws {
        try f.onboarding.createDatabase(name: "schema_new", owner: "onboarding_user")
        try f.legacy.psql("""
            CREATE SCHEMA schema_s; CREATE TABLE schema_s.items (id serial PRIMARY KEY, v text);
            INSERT INTO schema_s.items (v) SELECT 'v' || g FROM generate_series(1, 40) g;
            """, database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        @discardableResult func newSQL(_ sql: String) throws -> String {
            try f.onboarding.psql(sql, database: "schema_new", user: "onboarding_user", password: FixtureSecrets.onboardingPassword)
        }
        // A table of that name in public must not be taken for the one in the route's schema.
        try newSQL("CREATE SCHEMA svc; CREATE TABLE public.items (id int, v text)")
        let port = PostgresCluster.freePort()
        let path = try f.offlineConfig("schemed", legacySchema: "schema_s", newDatabase: "schema_new",
                                       extra: "new_schema = \"svc\"\nphase = \"new\"", proxyPort: port)
        let missing = try f.cli(["backfill", "--config", path, "schemed", "--overwrite-live"])
        #expect(missing.status == 1 && missing.stdout.contains("items: missing in schema svc of database schema_new on backend new"), "\(missing.stdout)")
        let unverified = try f.cli(["verify", "--config", path, "schemed", "--attempts", "1"])
        #expect(unverified.status == 1 && unverified.stdout.contains("items: missing in schema svc of database schema_new on backend new"),
                "\(unverified.stdout)")

        try newSQL("CREATE TABLE svc.items (id serial PRIMARY KEY, v text)")
        let copied = try f.cli(["backfill", "--config", path, "schemed", "--overwrite-live"])
        #expect(copied.status == 0 && copied.stdout.contains("1 table, 40 rows and 1 sequence copied"), "\(copied.stdout)")
        #expect(try newSQL("SELECT count(*) FROM svc.items") == "40" && newSQL("SELECT count(*) FROM public.items") == "0")
        #expect(try f.cli(["verify", "--config", path, "schemed", "--attempts", "1"]).status == 0)

        // Through the proxy (phase new: the new side leads), unqualified names resolve in new_schema.
        let (proxy, _) = try f.serveOffline(path, port: port)
        defer { stopBackgroundProcess(proxy) }
        let c = try PQConnection(f.conninfo(port, database: "schemed", user: "u", password: ""))
        #expect(try c.scalar("SELECT current_schema() || ':' || count(*) FROM items") == "svc:40")
    }

    @Test func backfillRunsOnlyWhenTheProxySaysTheRouteIsPausedInItsDirectionsPhaseAndReverseRefillsLegacy() throws {
        try f.onboarding.createDatabase(name: "guard_new", owner: "onboarding_user")
        let ddl = "CREATE TABLE items (id serial PRIMARY KEY, v text NOT NULL);"
        try f.legacy.psql("CREATE SCHEMA guard_s; SET search_path = guard_s; \(ddl) INSERT INTO items (v) SELECT 'legacy ' || g FROM generate_series(1, 10) g;",
                          database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        @discardableResult func newSQL(_ sql: String) throws -> String {
            try f.onboarding.psql(sql, database: "guard_new", user: "onboarding_user", password: FixtureSecrets.onboardingPassword)
        }
        func legacySQL(_ sql: String) throws -> String {
            try f.legacy.psql(sql, database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
        }
        try newSQL("\(ddl) INSERT INTO items (v) VALUES ('stray 1'), ('stray 2'), ('stray 3');")
        let port = PostgresCluster.freePort()
        let path = try f.offlineConfig("guarded", legacySchema: "guard_s", newDatabase: "guard_new", proxyPort: port)
        let (proxy, url) = try f.serveOffline(path, port: port)
        defer { stopBackgroundProcess(proxy) }
        func cutover(_ args: [String], adminURL: String = url) throws -> ProcessResult {
            try runProcess(ProxyFixture.cutoverBinary, args, environment: ProxyFixture.proxyEnvironment.merging(["CUTOVER_ADMIN_URL": adminURL]) { $1 })
        }
        func backfill(_ extra: [String], adminURL: String = url) throws -> ProcessResult {
            try cutover(["backfill", "--config", path, "guarded"] + extra, adminURL: adminURL)
        }
        func lists(_ r: ProcessResult, _ table: String, _ rows: Int) -> Bool {
            r.stdout.range(of: "\n\(table) +\(rows) *\n", options: .regularExpression) != nil
        }

        // No console to ask, or one that does not answer: refused, and what --truncate would destroy is listed.
        let noURL = try backfill(["--truncate"], adminURL: "")
        #expect(noURL.status == 1 && noURL.stdout.contains("cannot ask the proxy whether route guarded is paused in phase legacy")
                && noURL.stdout.contains("CUTOVER_ADMIN_URL") && noURL.stdout.contains("--overwrite-live"), "\(noURL.stdout)")
        #expect(noURL.stdout.contains("these rows in schema public of database guard_new on backend new would be lost:") && lists(noURL, "items", 3),
                "\(noURL.stdout)")
        let unreachable = try backfill(["--truncate"], adminURL: "host=127.0.0.1 port=1 dbname=cutover user=ops connect_timeout=2")
        #expect(unreachable.status == 1 && unreachable.stdout.contains("cannot reach the admin console"), "\(unreachable.stdout)")

        // In phase legacy but not paused: refused with the commands to run.
        let running = try backfill(["--truncate"])
        #expect(running.status == 1 && running.stdout.contains("route guarded is in phase legacy and not paused (no)")
                && running.stdout.contains("  cutover pause guarded\n  cutover backfill guarded\n") && lists(running, "items", 3), "\(running.stdout)")
        #expect(try newSQL("SELECT count(*) FROM items") == "3", "nothing was touched")

        // Paused in legacy: the copy runs.
        #expect(try cutover(["pause", "guarded"]).status == 0)
        let copied = try backfill(["--truncate"])
        #expect(copied.status == 0 && copied.stdout.contains("1 table, 10 rows and 1 sequence copied"), "\(copied.stdout)")

        // Walk to new; writes then reach the new side only.
        for phase in ["dual-legacy", "dual-new", "new"] {
            let flip = try cutover(["phase", "guarded", phase])
            #expect(flip.status == 0, "\(phase): \(flip.stdout)")
            if phase == "dual-legacy" { #expect(try cutover(["resume", "guarded"]).status == 0) }
        }
        let client = try PQConnection(f.conninfo(port, database: "guarded", user: "u", password: ""))
        try client.query("INSERT INTO items (v) SELECT 'new ' || g FROM generate_series(1, 5) g")
        #expect(try newSQL("SELECT count(*) FROM items") == "15" && legacySQL("SELECT count(*) FROM guard_s.items") == "10")

        // In phase new the new side is live: a forward copy is refused (it would wipe it), pointing at --reverse.
        #expect(try cutover(["pause", "guarded"]).status == 0)
        let wipe = try backfill(["--truncate"])
        #expect(wipe.status == 1 && wipe.stdout.contains("route guarded is in phase new and paused")
                && wipe.stdout.contains("run backfill --reverse instead") && wipe.stdout.contains("  cutover backfill guarded --reverse\n")
                && lists(wipe, "items", 15), "\(wipe.stdout)")
        #expect(try newSQL("SELECT count(*) FROM items") == "15", "the live side was not touched")

        // --reverse needs the pause too; refused, it lists what legacy would lose.
        #expect(try cutover(["resume", "guarded"]).status == 0)
        let unpaused = try backfill(["--reverse"])
        #expect(unpaused.status == 1 && unpaused.stdout.contains("route guarded is in phase new and not paused")
                && unpaused.stdout.contains("these rows in schema guard_s of database hexabuilders on backend legacy would be lost:")
                && lists(unpaused, "items", 10), "\(unpaused.stdout)")
        #expect(try cutover(["pause", "guarded"]).status == 0)
        let back = try backfill(["--reverse"])
        #expect(back.status == 0 && back.stdout.contains("1 table, 15 rows and 1 sequence copied from schema public of database guard_new"),
                "\(back.stdout)")
        #expect(try legacySQL("SELECT count(*) || ',' || count(*) FILTER (WHERE v LIKE 'new %') FROM guard_s.items") == "15,5",
                "legacy holds what was written in new")
        #expect(try legacySQL("SELECT nextval('guard_s.items_id_seq')") == "16", "legacy's sequence continues where new's is")
        #expect(try cutover(["verify", "--config", path, "guarded", "--attempts", "1"]).status == 0)
        #expect(try cutover(["resume", "guarded"]).status == 0)

        // --overwrite-live skips the console and says what it replaces.
        let forced = try backfill(["--reverse", "--overwrite-live"], adminURL: "")
        #expect(forced.status == 0 && forced.stdout.contains("--overwrite-live: not asking a proxy; replacing these rows in schema guard_s")
                && lists(forced, "items", 15), "\(forced.stdout)")
    }
}

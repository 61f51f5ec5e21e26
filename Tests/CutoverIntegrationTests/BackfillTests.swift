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

        let first = try cli(["backfill", "--config", path, "shop"])
        #expect(first.status == 0, "\(first.stdout)\(first.stderr)")
        #expect(first.stdout.contains("2 tables, 5300 rows and 2 sequences copied"), "\(first.stdout)")
        let verify = try cli(["verify", "--config", path, "shop", "--attempts", "1"])
        #expect(verify.status == 0, "\(verify.stdout)")
        // Sequences continue where legacy's are (customers' is past its max id), identity included.
        #expect(try newSQL("SELECT nextval('customers_id_seq') || ',' || nextval('orders_id_seq')") == "303,5001")

        // A second run would mix rows: refused, nothing changes; --truncate replaces them.
        let again = try cli(["backfill", "--config", path, "shop"])
        #expect(again.status == 1 && again.stdout.contains("not empty on new") && again.stdout.contains("nothing copied"))
        #expect(try newSQL("SELECT count(*) FROM orders") == "5000")
        let replaced = try cli(["backfill", "--config", path, "shop", "--truncate"])
        #expect(replaced.status == 0, "\(replaced.stdout)")
        #expect(try newSQL("SELECT count(*) FROM orders") == "5000")

        // With --table, only the copied tables' sequences are set: customers' is in use on the new side.
        try newSQL("SELECT setval('customers_id_seq', 9000)")
        let one = try cli(["backfill", "--config", path, "shop", "--table", "orders", "--truncate"])
        #expect(one.status == 0 && one.stdout.contains("1 table, 5000 rows and 1 sequence copied"), "\(one.stdout)")
        #expect(try newSQL("SELECT nextval('customers_id_seq') || ',' || nextval('orders_id_seq')") == "9001,5001")

        // A column the new side lacks is found before anything is copied.
        try newSQL("ALTER TABLE orders DROP COLUMN note")
        let lacking = try cli(["backfill", "--config", path, "shop", "--truncate"])
        #expect(lacking.status == 1 && lacking.stdout.contains("orders: new lacks column(s) note"), "\(lacking.stdout)")
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
        let r = try f.cli(["backfill", "--config", path, "cycle"])
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
        let missing = try f.cli(["backfill", "--config", path, "schemed"])
        #expect(missing.status == 1 && missing.stdout.contains("items: missing in schema svc of database schema_new on backend new"), "\(missing.stdout)")
        let unverified = try f.cli(["verify", "--config", path, "schemed", "--attempts", "1"])
        #expect(unverified.status == 1 && unverified.stdout.contains("items: missing in schema svc of database schema_new on backend new"),
                "\(unverified.stdout)")

        try newSQL("CREATE TABLE svc.items (id serial PRIMARY KEY, v text)")
        let copied = try f.cli(["backfill", "--config", path, "schemed"])
        #expect(copied.status == 0 && copied.stdout.contains("1 table, 40 rows and 1 sequence copied"), "\(copied.stdout)")
        #expect(try newSQL("SELECT count(*) FROM svc.items") == "40" && newSQL("SELECT count(*) FROM public.items") == "0")
        #expect(try f.cli(["verify", "--config", path, "schemed", "--attempts", "1"]).status == 0)

        // Through the proxy (phase new: the new side leads), unqualified names resolve in new_schema.
        let (proxy, _) = try f.serveOffline(path, port: port)
        defer { stopBackgroundProcess(proxy) }
        let c = try PQConnection(f.conninfo(port, database: "schemed", user: "u", password: ""))
        #expect(try c.scalar("SELECT current_schema() || ':' || count(*) FROM items") == "svc:40")
    }
}

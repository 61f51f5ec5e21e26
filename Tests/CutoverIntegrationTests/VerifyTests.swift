// Integration: `cutover verify` against a route's two real sides — matches, each kind of difference, exit codes.
import Foundation
import Testing

@Suite(.serialized) struct VerifyTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    func legacySQL(_ sql: String) throws {
        try f.legacy.psql(sql, database: "hexabuilders", user: "hexabuilders", password: FixtureSecrets.legacyPassword)
    }
    func newSQL(_ sql: String) throws {
        try f.onboarding.psql(sql, database: "verify_new", user: "onboarding_user", password: FixtureSecrets.onboardingPassword)
    }

    @Test func verifyFindsEachKindOfDifferenceAndPassesWhenTheSidesAgree() throws {
        try f.onboarding.createDatabase(name: "verify_new", owner: "onboarding_user")
        // Same rows on both sides, inserted in opposite orders; c and d exist on one side only; e's types differ.
        try legacySQL("""
            CREATE SCHEMA verify_s;
            CREATE TABLE verify_s.a (id int PRIMARY KEY, v text); INSERT INTO verify_s.a SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
            CREATE TABLE verify_s.b (v text); INSERT INTO verify_s.b VALUES ('x'), ('x'), ('y');
            CREATE TABLE verify_s.c (id int);
            CREATE TABLE verify_s.e (id int, v text);
            """)
        try newSQL("""
            CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1000, 1, -1) g;
            CREATE TABLE b (v text); INSERT INTO b VALUES ('y'), ('x'), ('x');
            CREATE TABLE d (id int);
            CREATE TABLE e (id int, v varchar(10));
            """)
        let path = try f.offlineConfig("verify", legacySchema: "verify_s", newDatabase: "verify_new", extra: """
            [backends.nowhere]
            port = \(PostgresCluster.freePort())
            user = "x"
            [routes.broken]
            legacy = "nowhere"
            new = "new"
            """)
        func verify(_ args: [String]) throws -> ProcessResult { try f.cli(["verify", "--config", path] + args) }
        func verdicts(_ out: String) -> [String: String] {
            var v: [String: String] = [:]
            for line in out.split(separator: "\n") {
                let cols = line.split(separator: " ", omittingEmptySubsequences: true)
                if cols.count >= 4, ["a", "b", "c", "d", "e"].contains(String(cols[0])) { v[String(cols[0])] = cols[3...].joined(separator: " ") }
            }
            return v
        }

        let agreeing = try verify(["verify", "--table", "a", "--table", "b"])
        #expect(agreeing.status == 0, "\(agreeing.stdout)\(agreeing.stderr)")
        #expect(verdicts(agreeing.stdout) == ["a": "match", "b": "match"])
        #expect(agreeing.stdout.contains("route verify: 2 tables, 2 match, 0 differ (legacy: schema verify_s of database hexabuilders "
                                         + "on backend legacy; new: schema public of database verify_new on backend new)"), "\(agreeing.stdout)")
        // A --table that neither side has is an error, not an empty match.
        let nosuch = try verify(["verify", "--table", "a", "--table", "nosuch"])
        #expect(nosuch.status == 2 && nosuch.stdout.contains("no table nosuch in schema verify_s of database hexabuilders on backend legacy "
                                                             + "nor in schema public of database verify_new on backend new"), "\(nosuch.stdout)")
        // The route right after the subcommand is the route, the config the default config/cutover.toml.
        let directory = "\(f.directory)/verify-default"
        try FileManager.default.createDirectory(atPath: "\(directory)/config", withIntermediateDirectories: true)
        try? FileManager.default.removeItem(atPath: "\(directory)/config/cutover.toml")
        try FileManager.default.copyItem(atPath: path, toPath: "\(directory)/config/cutover.toml")
        let defaulted = try runProcess(ProxyFixture.cutoverBinary, ["verify", "verify", "--table", "a"], environment: ProxyFixture.proxyEnvironment,
                                       currentDirectory: directory)
        #expect(defaulted.status == 0 && verdicts(defaulted.stdout) == ["a": "match"], "\(defaulted.stdout)\(defaulted.stderr)")
        // A column only the new side has is not compared (a backfill leaves it to its default).
        try newSQL("ALTER TABLE a ADD COLUMN added_later int DEFAULT 7")
        #expect(verdicts(try verify(["verify", "--table", "a"]).stdout) == ["a": "match"])

        let all = try verify(["verify", "--attempts", "1"])
        #expect(all.status == 1)
        #expect(verdicts(all.stdout) == ["a": "match", "b": "match", "c": "missing on new", "d": "only on new (not compared)",
                                         "e": "columns differ"])
        #expect(all.stdout.contains("legacy: id integer, v text") && all.stdout.contains("new:    id integer, v character varying(10)"))

        // Same count, one value changed; then one row fewer; then duplicates shifted (x, x, y against x, y, y).
        try newSQL("UPDATE a SET v = 'changed' WHERE id = 500")
        try newSQL("DELETE FROM b WHERE v = 'y'; INSERT INTO b VALUES ('y'), ('y'); DELETE FROM b WHERE ctid = (SELECT min(ctid) FROM b WHERE v = 'x')")
        let differing = try verify(["verify", "--table", "a", "--table", "b", "--attempts", "2"])
        #expect(differing.status == 1)
        #expect(verdicts(differing.stdout) == ["a": "contents differ", "b": "contents differ"], "\(differing.stdout)")
        try newSQL("DELETE FROM a WHERE id = 7")
        #expect(verdicts(try verify(["verify", "--table", "a", "--attempts", "1"]).stdout) == ["a": "row counts differ"])

        let unreachable = try verify(["broken"])
        #expect(unreachable.status == 2 && unreachable.stdout.contains("cannot reach backend nowhere"))
        let unknown = try verify(["nope"])
        #expect(unknown.status == 2 && unknown.stdout.contains("no route nope"))
    }
}

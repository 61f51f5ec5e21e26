// Integration: real clients (libpq, psql, pgbench) through the proxy to real PostgreSQL, SCRAM on both sides.
import Foundation
import Testing

@Suite(.serialized) struct ProxyClientTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func routeUsesItsLegacySchemaAndErrorsDoNotEndTheSession() throws {
        let c = try f.connect()
        #expect(try c.scalar("SELECT current_schema()") == "onboarding")
        #expect(try c.scalar("SELECT count(*) FROM candidates") == "10")
        #expect(throws: PQError.self) { try c.query("SELECT * FROM no_such_table") }
        do { try c.query("SELECT 1/0") } catch let e as PQError { #expect(e.sqlState == "22012") }
        // The session goes on after errors, in both protocols.
        #expect(try c.scalar("SELECT 41 + 1") == "42")
        #expect(try c.query("SELECT $1::int + 1", ["41"]).first?.first == "42")
    }

    @Test func transparencyOfKeysAndParameters() throws {
        let c = try f.connect(extra: "application_name=onboarding-svc client_encoding=utf-8 options='-c geqo=off -c extra_float_digits=2'")
        // BackendKeyData carries the leader's real pid.
        #expect(try c.scalar("SELECT pg_backend_pid()") == "\(c.backendPID)")
        // ParameterStatus is the backend's, unaltered: UTF8 although the client wrote utf-8.
        #expect(c.parameterStatus("client_encoding") == "UTF8")
        #expect(c.parameterStatus("application_name") == "onboarding-svc")
        #expect(try c.scalar("SHOW geqo") == "off")
        #expect(try c.scalar("SHOW extra_float_digits") == "2")
        #expect(try c.scalar("SHOW application_name") == "onboarding-svc")
        let tz = try f.connect(extra: "options='-c TimeZone=Asia/Tokyo -c DateStyle=German'")
        #expect(try tz.scalar("SHOW TimeZone") == "Asia/Tokyo")
        #expect(tz.parameterStatus("DateStyle") == "German, DMY")
    }

    @Test func routeInPhaseNewGoesToTheNewInstance() throws {
        let c = try f.connect(database: "onboarding_new")
        #expect(try c.scalar("SELECT current_database()") == "onboarding")
        #expect(try c.scalar("SELECT current_user") == "onboarding_user")
    }

    @Test func wildcardRouteAndOtherAuthMethods() throws {
        let md5 = try PQConnection(f.conninfo(database: "hexabuilders", user: "md5_user"))
        #expect(try md5.scalar("SELECT current_database()") == "hexabuilders")
        let trust = try PQConnection(f.conninfo(database: "postgres", user: "trust_user", password: "anything"))
        #expect(try trust.scalar("SELECT current_database()") == "postgres")
    }

    @Test func copyOf100kRowsIsByteIdenticalBothWays() throws {
        let dir = f.directory
        try f.legacy.psql("DROP TABLE IF EXISTS onboarding.big; CREATE TABLE onboarding.big AS SELECT g AS id, md5(g::text) AS m, now()::date AS d FROM generate_series(1, 100000) g; GRANT ALL ON onboarding.big TO hexabuilders", database: "hexabuilders")
        let viaProxy = try f.psqlThroughProxy(["-c", "\\copy big TO '\(dir)/out-proxy.csv' CSV"])
        #expect(viaProxy.succeeded, "\(viaProxy.stderr)")
        let direct = try runProcess("psql", ["-X", "-h", "127.0.0.1", "-p", "\(f.legacy.port)", "-U", "postgres", "-d", "hexabuilders",
                                             "-c", "\\copy onboarding.big TO '\(dir)/out-direct.csv' CSV"], environment: ["PGPASSWORD": "postgres_pw"])
        #expect(direct.succeeded)
        let a = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out-proxy.csv"))
        let b = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/out-direct.csv"))
        #expect(a.count > 4_000_000 && a == b)
        let load = try f.psqlThroughProxy(["-v", "ON_ERROR_STOP=1", "-c", "CREATE TABLE big_in (LIKE big)", "-c", "\\copy big_in FROM '\(dir)/out-proxy.csv' CSV"])
        #expect(load.succeeded, "\(load.stderr)")
        #expect(try f.connect().scalar("SELECT count(*) FROM (SELECT * FROM big EXCEPT SELECT * FROM big_in) x") == "0")
        #expect(try f.connect().scalar("SELECT count(*) FROM big_in") == "100000")
        try f.connect().query("DROP TABLE big_in")
    }

    @Test func multiMegabyteRowsPassIntact() throws {
        let c = try f.connect()
        #expect(try c.scalar("SELECT md5(repeat('x', 8000000))") == (try c.scalar("SELECT md5(v) FROM (SELECT repeat('x', 8000000) AS v) s")))
        let echoed = try c.query("SELECT length($1), md5($1)", [String(repeating: "y", count: 5_000_000)])
        #expect(echoed.first?.first == "5000000")
    }

    @Test func listenNotifyBetweenTwoSessionsCarriesTheRealPid() throws {
        let listener = try f.connect()
        let notifier = try f.connect()
        try listener.query("LISTEN cutover_channel")
        try notifier.query("NOTIFY cutover_channel, 'hello'")
        let n = listener.waitForNotification(timeout: 5)
        #expect(n?.0 == "cutover_channel" && n?.1 == "hello")
        #expect(n?.2 == notifier.backendPID)
    }

    @Test func cancelOfALongSleepReturnsWithinASecond() throws {
        let c = try f.connect()
        let (state, elapsed) = c.cancelAfter(0.3, running: "SELECT pg_sleep(30)")
        #expect(state == "57014")
        #expect(elapsed < 1.0, "cancel took \(elapsed) s")
        #expect(try c.scalar("SELECT 'still usable'") == "still usable")
    }

    @Test func pgbenchInitSelectOnlyAndTPCBInEveryQueryMode() throws {
        let common = ["-h", "127.0.0.1", "-p", "\(f.proxyPort)", "-U", "onboarding_user"]
        let initResult = try runProcess("pgbench", ["-i", "-s", "1", "-q"] + common + ["onboarding"], environment: f.clientEnvironment, timeout: 300)
        #expect(initResult.succeeded, "\(initResult.stderr)")
        // pgbench's tables land in the route's schema on the legacy side.
        #expect(try f.legacy.psql("SELECT count(*) FROM onboarding.pgbench_accounts", database: "hexabuilders") == "100000")
        for mode in ["simple", "extended", "prepared"] {
            for script in [["-S"], []] {
                let r = try runProcess("pgbench", ["-n", "-c", "8", "-j", "2", "-t", "150", "-M", mode] + script + common + ["onboarding"],
                                       environment: f.clientEnvironment, timeout: 300)
                #expect(r.succeeded, "\(mode) \(script): \(r.stderr)")
                #expect(r.stdout.contains("number of failed transactions: 0 (0.000%)"), "\(mode) \(script): \(r.stdout)")
                #expect(r.stdout.contains("number of transactions actually processed: 1200/1200"), "\(mode) \(script): \(r.stdout)")
            }
        }
    }
}

// Integration: backend_pool_size keeps the backend connections of ended sessions for later ones that log in
// the same way, reset with DISCARD ALL, and never hands out one that is busy, dead or expired.
import CLibPQ
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct BackendPoolTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    func pooledProxy(_ name: String, size: Int = 2, idleTimeout: Double = 60) throws -> (Process, Int) {
        let (p, port, _) = try f.ownProxy(name, server: "backend_pool_size = \(size)\nbackend_idle_timeout = \(idleTimeout)", rest: ProxyFixture.adminTOML)
        return (p, port)
    }

    /// The backend pid of a session on `port` with application_name `app` that then ends (its backend parked, if
    /// the pool keeps it).
    func pidOfEndedSession(_ port: Int, _ app: String) throws -> String? {
        let found = try pid(try PQConnection(f.conninfo(port, extra: "application_name=\(app)")))
        usleep(100_000) // the ended session's backend is parked and reset
        return found
    }

    func pid(_ c: PQConnection) throws -> String? { try c.scalar("SELECT pg_backend_pid()") }

    /// Backends on the legacy cluster whose application_name is `app` (a direct look, not through the proxy).
    func backendsOnLegacy(_ app: String) throws -> Int {
        Int(try f.recruitmentLegacy().scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = '\(app)'") ?? "") ?? -1
    }

    @Test func anEndedSessionsBackendServesTheNextSessionResetLikeAFreshLogin() throws {
        let mport = PostgresCluster.freePort()
        let (p, port, _) = try f.ownProxy("pool-reuse", server: "backend_pool_size = 2\nmetrics_listen = \"127.0.0.1:\(mport)\"",
                                          rest: ProxyFixture.adminTOML)
        defer { stopBackgroundProcess(p) }
        let app = "pool_reuse_\(getpid())"
        var firstPID: String?
        do {
            let c = try PQConnection(f.conninfo(port, extra: "application_name=\(app)"))
            firstPID = try c.scalar("SELECT pg_backend_pid()")
            try c.query("SET work_mem = '77MB'")
            try c.query("CREATE TEMP TABLE pool_scratch (x int)")
            try c.query("PREPARE pool_stmt AS SELECT 1")
            try c.query("LISTEN pool_channel")
            try c.query("SELECT pg_advisory_lock(4242)")
            try c.query("SET application_name = 'renamed_by_client'")
        }
        usleep(200_000)
        #expect(try backendsOnLegacy("\(app)") == 1, "the backend stays, idle, reset to the login's application_name")
        let other = try f.recruitmentLegacy()
        #expect(try other.scalar("SELECT pg_try_advisory_lock(4242)") == "t", "reset as it was parked: an idle backend holds no lock")
        try other.query("SELECT pg_advisory_unlock(4242)")
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        #expect(try admin.query("SHOW BACKENDS").first { $0[0] == "legacy" }?[9] == "1", "SHOW BACKENDS counts it idle")
        let scrape = RawClient.httpGet(port: mport, path: "/metrics")
        #expect(scrape.contains("cutover_backend_idle_connections{backend=\"legacy\"} 1\n"), "and /metrics: \(scrape.suffix(400))")

        let next = try PQConnection(f.conninfo(port, extra: "application_name=\(app)"))
        #expect(try next.scalar("SELECT pg_backend_pid()") == firstPID, "the same backend, no new login")
        #expect("\(next.backendPID)" == firstPID, "BackendKeyData carries its pid")
        #expect(try next.scalar("SHOW work_mem") != "77MB", "settings reset")
        #expect(try next.scalar("SELECT to_regclass('pg_temp.pool_scratch') IS NULL") == "t", "temporary table gone")
        #expect(try next.scalar("SELECT count(*) FROM pg_prepared_statements") == "0", "prepared statements gone")
        #expect(try next.scalar("SELECT count(*) FROM pg_listening_channels()") == "0", "LISTEN gone")
        #expect(try next.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()") == "0", "advisory lock released")
        #expect(try next.scalar("SELECT current_setting('application_name')") == app)
        #expect(try next.scalar("SELECT current_schema()") == "onboarding", "the route's search_path, from the login")
        let (state, _) = next.cancelAfter(0.3, running: "SELECT pg_sleep(20)")
        #expect(state == "57014", "a cancel reaches the reused backend")
        #expect(try admin.query("SHOW BACKENDS").first { $0[0] == "legacy" }?[9] == "0")
    }

    @Test func onlyAnIdenticalLoginReusesAndABusyOrDeadBackendIsNeverHandedOut() throws {
        let (p, port) = try pooledProxy("pool-rules")
        defer { stopBackgroundProcess(p) }
        let app = "pool_rules_\(getpid())"
        let pooled = try pidOfEndedSession(port, app)
        let other = try PQConnection(f.conninfo(port, extra: "application_name=\(app)_other"))
        #expect(try pid(other) != pooled, "another startup parameter: a login of its own")

        // Messages after a Terminate are not run, and do not keep the backend out of the pool.
        var afterTerminate: String?
        do {
            let c = try PQConnection(f.conninfo(port, extra: "application_name=\(app)_after"))
            afterTerminate = try pid(c)
            c.start("SELECT 1") // then the raw socket gets a Terminate with a Query behind it, in one write
            _ = c.awaitResults()
            let fd = PQsocket(c.conn)
            let bytes: [UInt8] = [UInt8(ascii: "X"), 0, 0, 0, 4] + RawClient.query("SELECT pg_sleep(30)")
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            usleep(300_000)
        }
        #expect(try backendsOnLegacy("\(app)_after") == 1, "kept idle: the query behind the Terminate never ran")
        let reused = try PQConnection(f.conninfo(port, extra: "application_name=\(app)_after"))
        #expect(try pid(reused) == afterTerminate)

        // A client that leaves in the middle of a transaction: its backend is not kept.
        var midTransaction: String?
        do {
            let c = try PQConnection(f.conninfo(port, extra: "application_name=\(app)_tx"))
            midTransaction = try pid(c)
            try c.query("BEGIN")
            try c.query("SELECT 1")
        }
        usleep(200_000)
        #expect(try backendsOnLegacy("\(app)_tx") == 0, "its backend was ended, not pooled")
        let afterTx = try PQConnection(f.conninfo(port, extra: "application_name=\(app)_tx"))
        #expect(try pid(afterTx) != midTransaction)
        #expect(try afterTx.scalar("SELECT 1") == "1")

        // The pooled backend is terminated behind the proxy's back: the next session gets a fresh one, no error.
        let killer = try f.recruitmentLegacy()
        #expect(try killer.scalar("SELECT pg_terminate_backend(\(pooled ?? "0"))") == "t")
        usleep(200_000)
        let fresh = try PQConnection(f.conninfo(port, extra: "application_name=\(app)"))
        #expect(try pid(fresh) != pooled && (try fresh.scalar("SELECT 6 * 7")) == "42")
    }

    @Test func aParkedBackendThatTheServerEndsLeavesThePoolWithoutWaitingForASession() throws {
        let (p, port) = try pooledProxy("pool-closed")
        defer { stopBackgroundProcess(p) }
        let app = "pool_closed_\(getpid())"
        var pid: String?
        do { pid = try PQConnection(f.conninfo(port, extra: "application_name=\(app)")).scalar("SELECT pg_backend_pid()") }
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        func idle() throws -> String? { try admin.query("SHOW BACKENDS").first { $0[0] == "legacy" }?[9] ?? nil }
        usleep(200_000)
        #expect(try idle() == "1")
        #expect(try f.recruitmentLegacy().scalar("SELECT pg_terminate_backend(\(pid ?? "0"))") == "t")
        // The parked link reads the server's FATAL and EOF; the pool's sweep lets it go (no session asked for it).
        let deadline = Date().addingTimeInterval(3)
        while try idle() != "0" && Date() < deadline { usleep(100_000) }
        #expect(try idle() == "0", "no dead backend counted idle")
        #expect(try PQConnection(f.conninfo(port, extra: "application_name=\(app)")).scalar("SELECT pg_backend_pid()") != pid)
    }

    @Test func aBackendPastItsLifetimeIsEndedInsteadOfKept() throws {
        let (p, port, _) = try f.ownProxy("pool-lifetime", server: "backend_pool_size = 2\nbackend_lifetime = 1.5", rest: ProxyFixture.adminTOML)
        defer { stopBackgroundProcess(p) }
        let app = "pool_lifetime_\(getpid())"
        let first = try pidOfEndedSession(port, app)
        do {
            let again = try PQConnection(f.conninfo(port, extra: "application_name=\(app)"))
            #expect(try pid(again) == first, "young enough: reused")
            usleep(1_600_000) // the session outlives the backend's lifetime
        }
        usleep(200_000)
        #expect(try backendsOnLegacy(app) == 0, "logged in 1.7 s ago: ended at the session's end, not kept")
        // A parked one goes when its lifetime runs out, whatever backend_idle_timeout says.
        let second = try pidOfEndedSession(port, app)
        #expect(second != first)
        usleep(100_000)
        #expect(try backendsOnLegacy(app) == 1)
        let deadline = Date().addingTimeInterval(4)
        while try backendsOnLegacy(app) != 0 && Date() < deadline { usleep(100_000) }
        #expect(try backendsOnLegacy(app) == 0, "expired in the pool")
    }

    @Test func thePoolKeepsAtMostItsSizePerLoginAndLetsIdleBackendsGoAfterTheTimeout() throws {
        let (p, port) = try pooledProxy("pool-limits", size: 2, idleTimeout: 1)
        defer { stopBackgroundProcess(p) }
        let app = "pool_limits_\(getpid())"
        do {
            let clients = try (0..<4).map { _ in try PQConnection(f.conninfo(port, extra: "application_name=\(app)")) }
            for c in clients { #expect(try c.scalar("SELECT 1") == "1") }
            #expect(try backendsOnLegacy(app) == 4)
        }
        usleep(300_000)
        #expect(try backendsOnLegacy(app) == 2, "two kept, two ended")
        usleep(1_500_000)
        #expect(try backendsOnLegacy(app) == 0, "past backend_idle_timeout the kept ones are ended too")
    }

    @Test func aBackendThatMayStillBeBusyOrWasLoggedInUnderOldSettingsIsNotKept() throws {
        let (p, port, path) = try f.ownProxy("pool-unsafe", server: "backend_pool_size = 4\nbackend_pool_total = 3",
                                             rest: ProxyFixture.adminTOML + "\n[[users]]\nname = \"trust_user\"\nauth = \"trust\"\n")
        defer { stopBackgroundProcess(p) }
        let app = "pool_unsafe_\(getpid())"
        func login(_ name: String) throws -> RawClient {
            let c = try RawClient(port: port)
            c.send(RawClient.startup([("user", "trust_user"), ("database", "onboarding"), ("application_name", name)]))
            #expect(c.readUntilReady().ready)
            return c
        }
        // Extended-protocol messages with no Sync (an implicit transaction still open), then gone.
        do {
            let c = try login("\(app)_unsynced")
            let parse: [UInt8] = [UInt8(ascii: "P")] + [0, 0, 0, 16] + Array("\0SELECT 1\0".utf8) + [0, 0]
            let bind: [UInt8] = [UInt8(ascii: "B"), 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]
            let execute: [UInt8] = [UInt8(ascii: "E"), 0, 0, 0, 9, 0, 0, 0, 0, 0]
            c.send(parse + bind + execute + [UInt8(ascii: "H"), 0, 0, 0, 4])
            usleep(200_000)
            c.send([UInt8(ascii: "X"), 0, 0, 0, 4])
        }
        // A Terminate split across two reads (its first bytes reach the backend before the proxy sees it whole).
        do {
            let c = try login("\(app)_split")
            c.send([UInt8(ascii: "X"), 0, 0])
            usleep(200_000)
            c.send([0, 4])
            _ = c.readUntilClosed()
        }
        // A session whose statement was cancelled (a late cancel must not hit the next session).
        do {
            let c = try PQConnection(f.conninfo(port, extra: "application_name=\(app)_cancelled"))
            let (state, _) = c.cancelAfter(0.3, running: "SELECT pg_sleep(20)")
            #expect(state == "57014")
        }
        usleep(300_000)
        for kind in ["unsynced", "split", "cancelled"] {
            #expect(try backendsOnLegacy("\(app)_\(kind)") == 0, "\(kind): ended, not kept")
        }
        #expect(try PQConnection(f.conninfo(port)).isOK, "the proxy is still up")

        // At most backend_pool_total in all, whatever the logins.
        do {
            let clients = try (0..<4).map { i in try PQConnection(f.conninfo(port, extra: "application_name=\(app)_many\(i % 2)")) }
            for c in clients { #expect(try c.scalar("SELECT 1") == "1") }
        }
        usleep(300_000)
        let kept = try (0..<2).map { try backendsOnLegacy("\(app)_many\($0)") }.reduce(0, +)
        #expect(kept == 3, "four idle backends, three kept (\(kept))")

        // A reload that changes the backend: sessions logged in before it do not leave their backends behind.
        var before: PQConnection? = try PQConnection(f.conninfo(port, extra: "application_name=\(app)_reload"))
        #expect(try before?.scalar("SELECT 1") == "1")
        let config = try String(contentsOfFile: path, encoding: .utf8)
        try config.replacingOccurrences(of: "[backends.legacy]", with: "[backends.legacy]\ntls = \"disable\"")
            .write(toFile: path, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        usleep(500_000)
        #expect(try backendsOnLegacy("\(app)_many0") + backendsOnLegacy("\(app)_many1") == 0, "the reload ended the idle ones")
        before = nil // its session ends, idle
        usleep(300_000)
        #expect(try backendsOnLegacy("\(app)_reload") == 0, "logged in under the old settings: ended")
    }

    @Test func aFollowerStillRunningAStatementWhenItsClientLeftIsNeverPooled() throws {
        let rest = ProxyFixture.adminTOML + "\n" + f.dualLegacyRouteTOML("poolvanish")
        let (p, port, _) = try f.ownProxy("pool-vanish", server: "backend_pool_size = 2", rest: rest)
        defer { stopBackgroundProcess(p) }
        let app = "pool_vanish_\(getpid())"
        do {
            // The client leaves while both sides still run its statement: the units the leader never answered
            // are dropped, but the follower still owes its answer; parked, that answer would be taken for its
            // reset's and the next session would read every answer one late.
            let a = try PQConnection(f.conninfo(port, database: "poolvanish", extra: "application_name=\(app)"))
            #expect(try a.scalar("SELECT 1") == "1")
            a.sendAndVanish("SELECT pg_sleep(0.8), 1")
            usleep(100_000)
        }
        usleep(200_000)
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        // While the statement still runs, neither of the session's backends is kept (a parked one would wait
        // behind it for its reset, and be taken for reset when the statement's own answer came).
        let idle = try admin.query("SHOW BACKENDS").reduce(into: [String: String]()) { $0[$1[0] ?? ""] = $1[9] ?? "" }
        #expect(idle["legacy"] == "0" && idle["newside"] == "0", "\(idle)")
        usleep(1_000_000) // the statement has ended on both sides
        let c = try PQConnection(f.conninfo(port, database: "poolvanish", extra: "application_name=\(app)"))
        for k in 0..<5 { #expect(try c.scalar("SELECT \(k) + 40") == "\(k + 40)") }
        var stats: [String?] = []
        for _ in 0..<50 {
            stats = try admin.query("SHOW STATS").first { $0[0] == "poolvanish" } ?? []
            if stats.count > 5, stats[5] == "0" { break }
            usleep(100_000)
        }
        #expect(stats.count > 3 && stats[3] == "0", "the next session's follower answers its own statements: \(stats)")
        #expect(try admin.query("SHOW ROUTES").first { $0[0] == "poolvanish" }?[6] == "yes")
    }

    @Test func aDualPhaseSessionTakesItsLeaderAndItsFollowerFromThePoolAndNothingDiverges() throws {
        // The recruitment schema on legacy leads, the recruitment database on the new cluster follows.
        let rest = ProxyFixture.adminTOML + "\n" + f.dualLegacyRouteTOML("pooldual")
        let (p, port, _) = try f.ownProxy("pool-dual", server: "backend_pool_size = 2\ndivergence_log = \"pool-dual.jsonl\"", rest: rest)
        defer { stopBackgroundProcess(p) }
        let app = "pool_dual_\(getpid())"
        var leaderPID: String?, followerPIDs: Set<String> = []
        for round in 0..<3 {
            do {
                let c = try PQConnection(f.conninfo(port, database: "pooldual", extra: "application_name=\(app)"))
                let pid: String? = "\(c.backendPID)" // from BackendKeyData: pg_backend_pid() would differ on the follower
                if round == 0 { leaderPID = pid } else { #expect(pid == leaderPID, "round \(round): the pooled leader again") }
                #expect(try c.scalar("SELECT count(*) FROM pg_prepared_statements") == "0")
                try c.query("PREPARE s AS SELECT $1::int * 2") // the same name each time: a follower not reset would refuse it
                #expect(try c.scalar("EXECUTE s(21)") == "42")
                #expect(try c.query("SELECT g, md5(g::text) FROM generate_series(1, 50) g").count == 50)
                // The follower: the new cluster's backend with this application_name (polled: it may log in after the leader).
                let new = try f.recruitmentNew()
                for _ in 0..<50 {
                    if let p = try new.scalar("SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE application_name = '\(app)'") {
                        followerPIDs.insert(p)
                        break
                    }
                    usleep(20_000)
                }
            } // the client leaves
            usleep(300_000) // the session drains its follower, then parks it (reset with DISCARD ALL)
        }
        #expect(followerPIDs.count == 1 && !(followerPIDs.first?.contains(",") ?? true),
                "one follower backend served all three sessions: \(followerPIDs)")
        let admin = try PQConnection(f.conninfo(port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword))
        var stats: [String?] = []
        for _ in 0..<50 {
            stats = try admin.query("SHOW STATS").first { $0[0] == "pooldual" } ?? []
            if stats.count > 5, stats[5] == "0", stats[1] == stats[2] { break }
            usleep(100_000)
        }
        #expect(stats.count > 3 && stats[1] == stats[2] && stats[3] == "0",
                "every statement of the three sessions compared, none diverged: \(stats)")
        #expect(try admin.query("SHOW ROUTES").first { $0[0] == "pooldual" }?[6] == "yes")
    }
}

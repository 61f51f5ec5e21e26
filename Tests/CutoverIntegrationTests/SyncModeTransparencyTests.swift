// Integration: what a client sees in sync mode is what it sees in async mode and against PostgreSQL:
// cancels end the statement at once, notifications arrive, for simple and extended queries.
import Foundation
import Testing

@Suite(.serialized) struct SyncModeTransparencyTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test(arguments: ["sync", "async"]) func aCancelEndsTheStatementAtOnce(mirror: String) throws {
        try f.onBothRecruitmentSides("DROP TABLE IF EXISTS tr_cancel; CREATE TABLE tr_cancel (k int PRIMARY KEY, v text)")
        let p = try RouteProxy(f, "trcancel\(mirror)", route: "mirror = \"\(mirror)\"")
        defer { p.stop() }
        let c = try p.client()
        for extended in [false, true] {
            let (state, seconds) = c.cancelAfter(0.5, running: "SELECT pg_sleep(30)", extended: extended)
            #expect(state == "57014" && seconds < 1.5, "\(mirror), extended \(extended): \(state ?? "-") after \(seconds) s")
        }
        // A write cancelled on the leader is not on the follower either, and the route stays in sync.
        let (state, seconds) = c.cancelAfter(0.5, running: "INSERT INTO tr_cancel SELECT 1, pg_sleep(30)::text")
        #expect(state == "57014" && seconds < 1.5, "\(mirror) write: \(state ?? "-") after \(seconds) s")
        // In a transaction: both sides' transactions end aborted, and the client's ROLLBACK ends both.
        try c.query("BEGIN")
        try c.query("INSERT INTO tr_cancel VALUES (2, 'before the cancel')")
        let (inTx, txSeconds) = c.cancelAfter(0.5, running: "SELECT pg_sleep(30)")
        #expect(inTx == "57014" && txSeconds < 1.5, "\(mirror) in a transaction: \(inTx ?? "-") after \(txSeconds) s")
        #expect(throws: PQError.self) { try c.query("SELECT 1") } // 25P02: aborted, as on PostgreSQL
        try c.query("ROLLBACK")
        try c.query("INSERT INTO tr_cancel VALUES (3, 'after')")
        try waitUntil("the follower answered") { try p.admin().query("SHOW STATS").first { $0[0] == "trcancel\(mirror)" }?[5] == "0" }
        let q = "SELECT k, v FROM tr_cancel ORDER BY k"
        #expect(try f.recruitmentLegacy().query(q) == [["3", "after"]])
        #expect(try f.recruitmentNew().query(q) == [["3", "after"]])
        let route = try p.route()
        #expect(route["in_sync"] == "yes", "\(route)")
    }

    /// The admin console's CANCEL ends a statement as a client's cancel does; KILL ends only that session.
    @Test(arguments: ["sync", "async"]) func adminCancelAndKill(mirror: String) throws {
        let p = try RouteProxy(f, "tradmin\(mirror)", route: "mirror = \"\(mirror)\"")
        defer { p.stop() }
        let admin = try p.admin()
        func sessionID(_ app: String) throws -> String? { try admin.query("SHOW SESSIONS").first { $0[3] == app }?[0] ?? nil }
        let sleeper = try p.client("application_name=tr_sleeper"), other = try p.client("application_name=tr_other")
        let id = try #require(try sessionID("tr_sleeper"))
        sleeper.start("SELECT pg_sleep(30)")
        usleep(300_000)
        let start = Date()
        _ = try admin.query("CANCEL \(id)")
        #expect(sleeper.awaitResults() == "57014")
        #expect(Date().timeIntervalSince(start) < 1.5, "\(mirror): \(Date().timeIntervalSince(start)) s")
        #expect(try sleeper.scalar("SELECT 1") == "1", "the session goes on")
        sleeper.start("SELECT pg_sleep(30)")
        usleep(300_000)
        let killStart = Date()
        _ = try admin.query("KILL \(id)")
        _ = sleeper.awaitResults()
        #expect(Date().timeIntervalSince(killStart) < 1.5, "\(mirror) kill: \(Date().timeIntervalSince(killStart)) s")
        #expect(throws: PQError.self) { try sleeper.scalar("SELECT 1") }
        #expect(try other.scalar("SELECT 'untouched'") == "untouched")
    }

    @Test(arguments: ["sync", "async"]) func notificationsReachListeners(mirror: String) throws {
        let p = try RouteProxy(f, "trnotify\(mirror)", route: "mirror = \"\(mirror)\"")
        defer { p.stop() }
        let listener = try p.client(), sender = try p.client()
        try listener.query("LISTEN tr_channel")
        try sender.query("NOTIFY tr_channel, 'hello'")
        let n = listener.waitForNotification(timeout: 3)
        #expect(n?.0 == "tr_channel" && n?.1 == "hello", "\(mirror): \(String(describing: n))")
        // Exactly once: the follower's copy of the NOTIFY reaches the follower's listener, never the client.
        #expect(listener.waitForNotification(timeout: 0.5) == nil)
    }

    /// A pipeline (several Bind/Execute before one Sync) in which one statement fails ends as PostgreSQL ends
    /// it: that error, the rest skipped, the implicit transaction rolled back, on both sides.
    @Test(arguments: ["sync", "async"]) func aPipelineWithAnErrorMidwayEndsAsPostgreSQLEndsIt(mirror: String) throws {
        try f.onBothRecruitmentSides("DROP TABLE IF EXISTS tr_pipe; CREATE TABLE tr_pipe (k int PRIMARY KEY, at timestamptz DEFAULT now())")
        let p = try RouteProxy(f, "trpipe\(mirror)", route: "mirror = \"\(mirror)\"")
        defer { p.stop() }
        let c = try p.client()
        do {
            try c.batch("INSERT INTO tr_pipe (k) VALUES ($1)", [["1"], ["1"], ["2"]])
            Issue.record("the duplicate key was accepted")
        } catch let e as PQError {
            #expect(e.sqlState == "23505", "\(e)")
        }
        try c.batch("INSERT INTO tr_pipe (k) VALUES ($1)", [["3"], ["4"]])
        try waitUntil("the follower answered") { try p.admin().query("SHOW STATS").first { $0[0] == "trpipe\(mirror)" }?[5] == "0" }
        let q = "SELECT k, at::text FROM tr_pipe ORDER BY k"
        let legacy = try f.recruitmentLegacy().query(q)
        #expect(legacy.map { $0[0] } == ["3", "4"], "the failed pipeline left nothing: \(legacy)")
        #expect(try f.recruitmentNew().query(q) == legacy)
        let route = try p.route()
        #expect(route["in_sync"] == "yes", "\(route)")
    }
}

@Suite struct FilePermissionTests {
    /// The state file and its lock are the owner's only: they name routes, backends and who paused them.
    @Test func theStateFileIsCreatedOwnerOnly() throws {
        let f = try ProxyFixture.shared()
        let p = try RouteProxy(f, "permissions")
        defer { p.stop() }
        for path in ["\(f.directory)/permissions.state", "\(f.directory)/permissions.state.lock"] {
            let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue ?? -1
            #expect(mode & 0o077 == 0, "\(path): \(String(mode, radix: 8))")
        }
    }
}

@Suite struct LogForgingTests {
    /// A client-chosen value with a newline (here application_name, logged when the session starts) is written
    /// escaped: it cannot start a log line of its own.
    @Test func anApplicationNameWithANewlineCannotForgeALogLine() throws {
        let f = try ProxyFixture.shared()
        let p = try RouteProxy(f, "logforge")
        defer { p.stop() }
        let c = try p.client("application_name='x\nFORGED critical: the proxy was hacked'")
        _ = try c.scalar("SELECT 1")
        usleep(200_000)
        let log = try String(contentsOfFile: p.log, encoding: .utf8)
        #expect(log.contains("x\\u{a}FORGED"), "logged, escaped")
        #expect(!log.split(separator: "\n").contains { $0.hasPrefix("FORGED") }, "no line of its own")
    }
}

@Suite struct LoginBoundTests {
    /// Connections that never log in do not take the places of clients that do: max_clients counts logged-in
    /// clients, logins in progress have their own bound, per client address too.
    @Test func silentConnectionsDoNotLockClientsOut() throws {
        let f = try ProxyFixture.shared()
        let p = try RouteProxy(f, "loginbound", server: "max_clients = 5")
        defer { p.stop() }
        let silent = try (0..<6).map { _ in try RawClient(port: p.port) }
        usleep(200_000)
        let c = try p.client() // refused with 53300 while six silent sockets held every place
        #expect(try c.scalar("SELECT 'in'") == "in")
        // Past 32 logins in progress from one address, the next is refused, and says why.
        let more = try (0..<26).map { _ in try RawClient(port: p.port) }
        usleep(200_000)
        let over = try RawClient(port: p.port)
        over.send(RawClient.startup([("user", "onboarding_user"), ("database", "loginbound")]))
        let (answer, _) = over.readUntilClosed()
        #expect(RawClient.errorCode(in: answer) == "53300" && String(decoding: answer, as: UTF8.self).contains("logins in progress from 127.0.0.1"),
                "\(String(decoding: answer, as: UTF8.self))")
        _ = (silent, more)
    }
}

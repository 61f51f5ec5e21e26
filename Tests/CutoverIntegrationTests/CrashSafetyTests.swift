// Integration: state a migration team can trust across kill -9 — an unclean stop marks dual routes out of
// sync, a flip cut short is reported aborted, one proxy per state file, PAUSE holds every new transaction
// (also a new session's first one in a dual phase, and across a restart), MARK IN SYNC under a pause.
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct CrashSafetyTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func aKilledProxyComesBackOutOfSyncWhileACleanStopKeepsTheRouteInSync() throws {
        let s = try RouteProxy(f, "crashsync")
        defer { s.stop() }
        // A clean stop with nothing owed: still in sync after the restart.
        #expect(try s.client().query("INSERT INTO crashsync_items VALUES (1, 'before')").isEmpty)
        try waitUntil("the follower has the first row") { try s.rowsOnNew() == 1 }
        s.stop()
        try s.start()
        let clean = try s.route()
        #expect(clean["in_sync"] == "yes", "a clean stop is no reason to distrust the route: \(clean)")

        // The follower is held behind a lock on its table while 30 rows are written; then kill -9.
        let holder = try f.recruitmentNew()
        try holder.query("BEGIN")
        try holder.query("LOCK TABLE crashsync_items IN ACCESS EXCLUSIVE MODE")
        let c = try s.client()
        for i in 2...31 { try c.query("INSERT INTO crashsync_items VALUES (\(i), 'while the follower waits')") }
        #expect(try s.rowsOnLegacy() == 31)
        s.kill9()
        try holder.query("ROLLBACK")
        #expect(try s.rowsOnNew() < 31, "the follower missed writes (the point of this test)")

        try s.start()
        let after = try s.route()
        #expect(after["phase"] == "dual-legacy" && after["in_sync"] == "no", "\(after)")
        #expect(after["out_of_sync_reason"]?.contains("unclean shutdown") == true, "\(after)")
        #expect(s.sqlState("SET PHASE crashsync TO dual-new") == "55000", "a leader flip needs FORCE after an unclean stop")
        let log = (try? String(contentsOfFile: s.log, encoding: .utf8)) ?? ""
        #expect(log.contains("did not stop cleanly"), "the start says why")
    }

    @Test func aFlipCutShortByKillIsReportedAbortedAndTheRouteIsInExactlyOnePhase() throws {
        let s = try RouteProxy(f, "crashflip", server: "flip_timeout = 30")
        defer { s.stop() }
        // An open transaction keeps the leader flip waiting (it pauses until every session is idle).
        let busy = try s.client()
        try busy.query("BEGIN")
        try busy.query("INSERT INTO crashflip_items VALUES (1, 'open')")
        let flipper = try s.admin()
        flipper.start("SET PHASE crashflip TO dual-new")
        try waitUntil("the flip is under way") { try s.route()["paused"] == "flipping" }
        let saved = try String(contentsOfFile: "\(f.directory)/crashflip.state", encoding: .utf8)
        #expect(saved.contains("\"flip\""), "the flip is in the state file before anything moves: \(saved)")
        s.kill9()

        try s.start()
        let after = try s.route()
        #expect(after["phase"] == "dual-legacy", "the switch never happened: \(after)")
        #expect(after["last_flip"]?.contains("aborted") == true, "\(after)")
        #expect(after["paused"] == "no", "a flip's pause does not outlive the proxy")
        let state = try String(contentsOfFile: "\(f.directory)/crashflip.state", encoding: .utf8)
        #expect(!state.contains("\"flip\""), "the aborted flip is cleared once reported: \(state)")
        let log = (try? String(contentsOfFile: s.log, encoding: .utf8)) ?? ""
        #expect(log.contains("the flip from dual-legacy to dual-new was cut short by an unclean shutdown"), "\(log.suffix(2000))")
    }

    @Test func aSecondProxyOnTheSameStateFileRefusesToStart() throws {
        let s = try RouteProxy(f, "crashlock")
        defer { s.stop() }
        let port = PostgresCluster.freePort()
        let other = "\(f.directory)/crashlock-second.toml"
        let text = try String(contentsOfFile: s.path, encoding: .utf8).replacingOccurrences(of: "127.0.0.1:\(s.port)", with: "127.0.0.1:\(port)")
        try text.write(toFile: other, atomically: true, encoding: .utf8)
        let log = "\(f.directory)/crashlock-second.log"
        #expect(throws: (any Error).self) { _ = try ProxyFixture.startProxy(configPath: other, logPath: log, port: port) }
        let said = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(said.contains("another cutover process (pid \(s.process.processIdentifier))"), "\(said)")
        // The first one still serves.
        #expect(try s.client().scalar("SELECT 1") == "1")
    }

    @Test func pauseHoldsANewSessionsFirstTransactionInADualPhaseAndSurvivesARestart() throws {
        let s = try RouteProxy(f, "crashpause")
        defer { s.stop() }
        #expect(s.sqlState("PAUSE crashpause 5") == nil)
        #expect(try s.route()["paused"] == "yes")

        /// A new connection's INSERT is held until RESUME.
        func heldUntilResume(_ id: Int) throws {
            let c = try s.client()
            c.start("INSERT INTO crashpause_items VALUES (\(id), 'new session')")
            usleep(700_000)
            #expect(try s.rowsOnLegacy() == id - 1, "the route is paused: the new session's INSERT must wait")
            #expect(s.sqlState("RESUME crashpause") == nil)
            #expect(c.awaitResults() == nil)
            #expect(try s.rowsOnLegacy() == id)
        }
        try heldUntilResume(1)

        // Paused, stopped, started: still paused.
        #expect(s.sqlState("PAUSE crashpause 5") == nil)
        s.stop()
        try s.start()
        let row = try s.route()
        #expect(row["paused"] == "yes" && row["pause_settled"] == "yes", "\(row)")
        try heldUntilResume(2)
    }

    @Test func markInSyncNeedsTheSettledPauseItNames() throws {
        let s = try RouteProxy(f, "crashmark")
        defer { s.stop() }
        // Out of sync: the proxy killed with the route in dual-legacy.
        s.kill9()
        try s.start()
        #expect(try s.route()["in_sync"] == "no")
        #expect(s.sqlState("MARK IN SYNC crashmark 1") == "55000", "not paused")
        // A session whose mirroring stopped writes to one side only: no MARK IN SYNC while it runs.
        let app = "crashmark_\(getpid())"
        var lone: PQConnection? = try s.client("application_name=\(app)")
        #expect(try lone?.scalar("SELECT 1") == "1")
        try waitUntil("its follower is there") {
            try f.recruitmentNew().scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = '\(app)'") == "1"
        }
        try f.recruitmentNew().query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '\(app)'")
        usleep(300_000)
        _ = try? lone?.scalar("SELECT 2") // the session notices its follower is gone and goes on alone
        #expect(s.sqlState("PAUSE crashmark 5") == nil)
        let id = Int(try s.route()["pause_id"] ?? "") ?? 0
        #expect(id > 0)
        #expect(s.sqlState("MARK IN SYNC crashmark \(id + 1)") == "55000", "another pause's id")
        #expect(s.sqlState("MARK IN SYNC nosuch \(id)") == "42704")
        do { try s.admin().query("MARK IN SYNC crashmark \(id)"); Issue.record("marked with a follower-less session") } catch let e as PQError {
            #expect(e.sqlState == "55000" && e.message.contains("runs without a follower"), "\(e)")
        }
        lone = nil // the client leaves (it is idle, so the pause lets it go); its session ends
        usleep(300_000)
        let id2 = id
        let answer = try s.admin().query("MARK IN SYNC crashmark \(id2)")
        #expect(answer.first?[2]?.contains("unclean shutdown") == true, "says what it was: \(answer)")
        #expect(answer.first?[3]?.hasPrefix("ops from ") == true, "says who: \(answer)")
        let row = try s.route()
        #expect(row["in_sync"] == "yes" && row["out_of_sync_reason"] == nil, "\(row)")
        #expect(s.sqlState("RESUME crashmark") == nil)
        // Persisted: a clean restart keeps it.
        s.stop()
        try s.start()
        #expect(try s.route()["in_sync"] == "yes")
        let log = (try? String(contentsOfFile: s.log, encoding: .utf8)) ?? ""
        #expect(log.contains("route marked in sync"))
    }

    @Test func verifyMarksInSyncOnlyUnderASettledPauseAndOnlyWhenTheSidesMatch() throws {
        let s = try RouteProxy(f, "crashverify")
        defer { s.stop() }
        s.kill9()
        try s.start()
        #expect(try s.route()["in_sync"] == "no")
        let url = f.conninfo(s.port, database: "cutover", user: "ops", password: FixtureSecrets.adminPassword)
        func verify() throws -> ProcessResult {
            try runProcess(ProxyFixture.cutoverBinary, ["verify", "--config", s.path, "crashverify", "--table", "crashverify_items",
                                                        "--attempts", "1", "--mark-in-sync", "--admin-url", url],
                           environment: ProxyFixture.proxyEnvironment)
        }
        let unpaused = try verify()
        #expect(unpaused.status == 1 && unpaused.stdout.contains("needs route crashverify held by a settled pause"), "\(unpaused)")
        #expect(s.sqlState("PAUSE crashverify 5") == nil)
        // The sides differ: nothing is marked.
        try f.recruitmentNew().query("INSERT INTO crashverify_items VALUES (1, 'only on new')")
        let differing = try verify()
        #expect(differing.status == 1 && differing.stdout.contains("not marked in sync"), "\(differing)")
        #expect(try s.route()["in_sync"] == "no")
        // Repaired: both sides match, and the route is in sync again.
        try f.recruitmentNew().query("DELETE FROM crashverify_items")
        let clean = try verify()
        #expect(clean.status == 0 && clean.stdout.contains("marked_by"), "\(clean)")
        #expect(try s.route()["in_sync"] == "yes", "\(clean.stdout)")
        #expect(s.sqlState("RESUME crashverify") == nil)
    }

    @Test func adminPapercuts() throws {
        // A route whose legacy and new are one database and schema: serving it is allowed, mirroring it never.
        let s = try RouteProxy(f, "crashadmin", route: "[routes.selfie]\nlegacy = \"legacy\"\nlegacy_schema = \"public\"\nnew = \"legacy\"")
        defer { s.stop() }
        #expect(s.sqlState("SHOW DIVERGENCES nosuch") == "42704")
        do { try s.admin().query("SET PHASE selfie TO dual-legacy"); Issue.record("mirrored a route onto itself") } catch let e as PQError {
            #expect(e.sqlState == "55000" && e.message.contains("the same database"), "\(e)")
        }
        #expect(try s.admin().query("SHOW VERSION").first?.first??.hasPrefix("cutover ") == true)
        do { try s.admin().query("PAUSE crashadmin 0"); Issue.record("PAUSE 0 accepted") } catch let e as PQError {
            #expect(e.message.contains("greater than 0"), "\(e.message)")
        }
    }
}


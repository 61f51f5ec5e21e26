// Integration: a follower that stalls (sync mode) or a transaction that outlasts a leader flip: the client
// waits at most the configured timeout, and the operator is told why.
import Foundation
import Testing

@Suite(.serialized) struct FollowerTimeoutTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    /// Recruitment in dual-legacy with `mirror`, a fresh `table` (id 1 only) on both sides, and someone holding
    /// that row's lock on the new instance, behind the proxy's back: the returned connection, in its transaction.
    func blockedFollower(mirror: String, table: String, column: String) throws -> PQConnection {
        try f.dualLegacyRecruitment(mirror: mirror, creating: "DROP TABLE IF EXISTS \(table); CREATE TABLE \(table) (id int PRIMARY KEY, \(column)); INSERT INTO \(table) VALUES (1)")
        let blocker = try f.recruitmentNew()
        try blocker.query("BEGIN")
        try blocker.query("SELECT * FROM \(table) WHERE id = 1 FOR UPDATE")
        return blocker
    }

    @Test func aBlockedFollowerInSyncModeDegradesTheSessionAfterTheTimeout() throws {
        let before = f.divergenceLines().count
        let blocker = try blockedFollower(mirror: "sync", table: "slots", column: "taken bool NOT NULL DEFAULT false")
        let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        let started = Date()
        try c.query("UPDATE slots SET taken = true WHERE id = 1")
        let waited = Date().timeIntervalSince(started)
        print("sync follower blocked: client answered after \(String(format: "%.2f", waited)) s (follower_timeout = 3 s)")
        #expect(waited >= 2.5 && waited < 6, "waited \(waited) s")
        #expect(try c.scalar("SELECT taken FROM slots WHERE id = 1") == "t") // the session goes on, on the leader
        try blocker.query("ROLLBACK")
        #expect(f.divergenceLines().dropFirst(before).contains { ($0["kind"] as? String) == "follower_timeout" })
        #expect(try f.routeRow("recruitment")[6] == "no")
        try f.adminRun("SET MIRROR recruitment TO async")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func killingASessionThatWaitsForItsFollowerRecordsWhatWasNeverCompared() throws {
        let before = f.divergenceLines().count
        let blocker = try blockedFollower(mirror: "async", table: "kill_slots", column: "n int NOT NULL DEFAULT 0")
        let marker = "drain_kill_\(getpid())"
        var c: PQConnection? = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user", extra: "application_name=\(marker)"))
        try c?.query("UPDATE kill_slots SET n = n + 1 WHERE id = 1") // the leader answers; the follower waits for the lock
        c = nil // the client leaves: its session stays, draining, for the follower's answer
        let a = try f.admin()
        func row() throws -> [String?]? { try a.query("SHOW SESSIONS").first { $0[3] == marker } }
        usleep(200_000)
        let draining = try #require(try row())
        #expect(draining[5] == "draining", "\(draining)")
        try a.query("KILL \(draining[0] ?? "")")
        usleep(200_000)
        #expect(try row() == nil, "the session is gone at once, not at follower_timeout")
        let records = f.divergenceLines().dropFirst(before)
        let lost = records.first { ($0["kind"] as? String) == "follower_lost" }
        let detail = lost?["detail"] as? String ?? ""
        #expect(detail.contains("killed by an admin") && detail.contains("owed answers to 1 statements"), "\(records)")
        #expect(try f.routeRow("recruitment")[6] == "no", "the route is out of sync")
        try blocker.query("ROLLBACK")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func inSyncModeAWriteWhoseClientLeftIsKeptOnTheLeaderWhenKilledAndTheFollowersMissingOneRecorded() throws {
        let blocker = try blockedFollower(mirror: "sync", table: "sync_kill", column: "n int NOT NULL DEFAULT 0")
        let marker = "sync_kill_\(getpid())"
        var c: PQConnection? = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user", extra: "application_name=\(marker)"))
        // Runs on the leader (in the proxy's implicit transaction), its UPDATE 1 goes out; the follower waits.
        let before = f.divergenceLines().count
        c?.start("UPDATE sync_kill SET n = n + 1 WHERE id = 1")
        usleep(300_000)
        c = nil // the client leaves without its answer
        let a = try f.admin()
        let draining = try #require(try a.query("SHOW SESSIONS").first { $0[3] == marker })
        #expect(draining[5] == "draining", "\(draining)")
        try a.query("KILL \(draining[0] ?? "")")
        usleep(300_000)
        try blocker.query("ROLLBACK")
        #expect(try f.recruitmentLegacy().scalar("SELECT n FROM sync_kill WHERE id = 1") == "1",
                "the client was sent UPDATE 1, which PostgreSQL sends only once committed: the leader keeps the write")
        usleep(300_000)
        #expect(try f.recruitmentNew().scalar("SELECT n FROM sync_kill WHERE id = 1") == "0", "the follower never committed it")
        let lost = f.divergenceLines().dropFirst(before).first { ($0["kind"] as? String) == "follower_lost" }
        #expect((lost?["detail"] as? String)?.contains("killed by an admin") == true, "the missing write is recorded")
        #expect(try f.routeRow("recruitment")[6] == "no")
        try f.adminRun("SET MIRROR recruitment TO async")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func inSyncModeTheFollowersTimeIsNotTheClientsIdleTime() throws {
        // idle_transaction_timeout counts from when the client gets its answer, not from the leader's: here
        // the follower takes 1.5 s on a lock, longer than the 1 s timeout, and the client then goes straight on.
        let (p, port, _) = try f.ownProxy("sync-idle", server: "idle_transaction_timeout = 1",
                                          rest: f.dualLegacyRouteTOML("syncidle") + "\nmirror = \"sync\"\n"
                                              + "[[users]]\nname = \"recruitment_user\"\npassword = \"\(FixtureSecrets.recruitmentPassword)\"\n")
        defer { stopBackgroundProcess(p) }
        try f.onBothRecruitmentSides("DROP TABLE IF EXISTS sync_idle; CREATE TABLE sync_idle (id int PRIMARY KEY, n int); INSERT INTO sync_idle VALUES (1, 0)")
        let blocker = try f.recruitmentNew()
        try blocker.query("BEGIN")
        try blocker.query("SELECT * FROM sync_idle WHERE id = 1 FOR UPDATE")
        let c = try PQConnection(f.conninfo(port, database: "syncidle", user: "recruitment_user", password: FixtureSecrets.recruitmentPassword))
        try c.query("BEGIN")
        blocker.start("SELECT pg_sleep(1.5); ROLLBACK") // lets go of the row in 1.5 s
        try c.query("UPDATE sync_idle SET n = 1 WHERE id = 1") // answered once the follower has run it too
        usleep(300_000)
        #expect(try c.scalar("SELECT n FROM sync_idle WHERE id = 1") == "1", "not closed for idling while the follower worked")
        try c.query("COMMIT")
        _ = blocker.awaitResults()
    }

    @Test func aLeaderFlipHeldUpByALongTransactionAbortsAndNamesIt() throws {
        try f.walk("recruitment", to: "legacy")
        try f.onBothRecruitmentSides("DROP TABLE IF EXISTS slots; CREATE TABLE slots (id int PRIMARY KEY, taken bool NOT NULL DEFAULT false); INSERT INTO slots VALUES (1)")
        try f.adminRun("SET PHASE recruitment TO dual-legacy")
        let long = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user", extra: "application_name=long-report"))
        try long.query("BEGIN")
        try long.query("UPDATE slots SET taken = true WHERE id = 1")
        let started = Date()
        do {
            try f.adminRun("SET PHASE recruitment TO dual-new")
            Issue.record("the flip should have been aborted")
        } catch let e as PQError {
            #expect(e.sqlState == "57014")
            #expect(e.message.contains("long-report") && e.message.contains("in transaction"), "\(e.message)")
        }
        #expect(Date().timeIntervalSince(started) < 8)
        #expect(try f.routeRow("recruitment")[1] == "dual-legacy")
        // The transaction was never disturbed; once it ends the flip goes through.
        try long.query("COMMIT")
        #expect(try f.adminRun("SET PHASE recruitment TO dual-new").first?[2] == "dual-new")
        #expect(try long.scalar("SELECT taken FROM slots WHERE id = 1") == "t")
        try f.walk("recruitment", to: "legacy")
    }
}

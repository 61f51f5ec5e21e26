// Integration: the edge cases a review found — clients that vanish mid-statement, extended-protocol COPY,
// long statements and follower timeouts, a sync-mode client that leaves mid-unit.
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct EdgeCaseTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    func recruitmentSessions() throws -> [[String?]] {
        try f.adminRun("SHOW SESSIONS").filter { $0[1] == "recruitment" }
    }

    func waitUntil(_ timeout: TimeInterval, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if try condition() { return true }; usleep(100_000) }
        return try condition()
    }

    @Test func aQueryPipelinedBehindTheStartupMessageIsAnsweredAfterTheLogin() throws {
        // With trust there is nothing to wait for: a client may send its first Query in the same packet.
        let c = try RawClient(port: f.proxyPort)
        c.send(RawClient.startup([("user", "trust_user"), ("database", "onboarding")]) + RawClient.query("SELECT 6 * 7 AS answer"))
        let (login, ready) = c.readUntilReady()
        #expect(ready && login.first == UInt8(ascii: "R"), "logged in")
        // The answer may have come in the same read as the login's ReadyForQuery (under load it does).
        let loginText = String(decoding: login, as: UTF8.self)
        let (answer, answered) = loginText.contains("answer") ? (login, true) : c.readUntilReady()
        let text = String(decoding: answer, as: UTF8.self)
        #expect(answered && text.contains("answer") && text.contains("42"), "the pipelined query was run, not dropped: \(answer)")
    }

    @Test func aClientThatVanishesMidStatementDoesNotLeaveADrainingSession() throws {
        try f.walk("recruitment", to: "legacy")
        try f.adminRun("SET PHASE recruitment TO dual-legacy")
        do {
            let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
            c.sendAndVanish("SELECT pg_sleep(1)")
            usleep(300_000)
        } // deinit: PQfinish while the statement runs
        let gone = try waitUntil(5) { try recruitmentSessions().isEmpty }
        #expect(gone, "sessions left: \(String(describing: try? recruitmentSessions()))")
        #expect(try f.adminRun("SET PHASE recruitment TO dual-new").first?[2] == "dual-new")
        #expect(try f.routeRow("recruitment")[6] == "yes")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func extendedProtocolCopyInLeavesTheSessionIdleAndBothSidesEqual() throws {
        try f.walk("recruitment", to: "legacy")
        try f.onBothRecruitmentSides("DROP TABLE IF EXISTS imports; CREATE TABLE imports (id int, label text)")
        try f.adminRun("SET PHASE recruitment TO dual-legacy")
        let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        #expect(try c.copyInExtended("COPY imports FROM STDIN", rows: (1...500).map { "\($0)\tlabel \($0)" }) == "COPY 500")
        #expect(try c.scalar("SELECT count(*) FROM imports") == "500")
        // The session is idle again: a flip (which waits for every session to be idle) goes through.
        #expect(try f.adminRun("SET PHASE recruitment TO dual-new").first?[2] == "dual-new")
        try f.waitForMirrorDrain("recruitment")
        #expect(try f.recruitmentNew().scalar("SELECT count(*) FROM imports") == "500")
        #expect(try f.routeRow("recruitment")[6] == "yes")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func aLongStatementIsNotAFollowerTimeout() throws {
        try f.walk("recruitment", to: "legacy")
        try f.adminRun("SET PHASE recruitment TO dual-legacy")
        let before = f.divergenceLines().count
        let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        try c.query("SELECT pg_sleep(3.5)") // longer than follower_timeout = 3, on both sides alike
        try f.waitForMirrorDrain("recruitment")
        #expect(!f.divergenceLines().dropFirst(before).contains { ($0["kind"] as? String) == "follower_timeout" })
        #expect(try f.routeRow("recruitment")[6] == "yes")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func aSyncClientLeavingMidUnitLeavesBothSidesEqual() throws {
        try f.dualLegacyRecruitment(mirror: "sync", creating: "DROP TABLE IF EXISTS slots; CREATE TABLE slots (id int PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO slots VALUES (1)")
        let blocker = try f.recruitmentNew()
        try blocker.query("BEGIN")
        try blocker.query("SELECT * FROM slots WHERE id = 1 FOR UPDATE")
        do {
            let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
            c.sendAndVanish("UPDATE slots SET v = 42 WHERE id = 1")
            usleep(500_000)
        } // the client is gone while the follower is blocked
        usleep(300_000)
        try blocker.query("ROLLBACK")
        #expect(try waitUntil(5) { try recruitmentSessions().isEmpty })
        let q = "SELECT v FROM slots WHERE id = 1"
        #expect(try f.recruitmentLegacy().scalar(q) == f.recruitmentNew().scalar(q), "legacy and new must agree")
        try f.adminRun("SET MIRROR recruitment TO async")
        try f.walk("recruitment", to: "legacy")
    }
}

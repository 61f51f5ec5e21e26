// Integration: sync-mode and capture edge cases found in review: a cancel after a savepoint or inside a
// procedure that commits, COPY beside a captured write, a client paused when mirroring stops, and a pipeline
// without a Sync; each once diverged silently, killed the session, hung, or grew memory without bound.
import CLibPQ
import Foundation
import Glibc
import Testing

/// Runs `body` on a thread; false if it did not finish within `seconds`.
private func finishes(within seconds: Double, _ body: @escaping @Sendable () -> Void) -> Bool {
    let done = DispatchSemaphore(value: 0)
    Thread.detachNewThread { body(); done.signal() }
    return done.wait(timeout: .now() + seconds) == .success
}

private final class Box<T>: @unchecked Sendable { var value: T; init(_ v: T) { value = v } }

@Suite(.serialized) struct SyncModeEdgeCaseTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    func rssKiB(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return -1 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
        }
        return -1
    }

    /// pgjdbc autosave shape: SAVEPOINT in the same unit as the statement, same name each time.
    @Test func savepointInCancelledUnit() throws {
        let p = try RouteProxy(f, "rvsp", route: "mirror = \"sync\"")
        defer { p.stop() }
        let c = try p.client()
        try c.query("INSERT INTO rvsp_items VALUES (1, 'orig')")
        try c.query("BEGIN")
        try c.query("SAVEPOINT a; UPDATE rvsp_items SET note = 'changed' WHERE id = 1")
        let (state, _) = c.cancelAfter(0.5, running: "SAVEPOINT a; SELECT pg_sleep(30)")
        #expect(state == "57014")
        try c.query("ROLLBACK TO SAVEPOINT a")
        try c.query("COMMIT")
        sleep(1)
        let q = "SELECT note FROM rvsp_items WHERE id = 1"
        let l = try f.recruitmentLegacy().scalar(q), n = try f.recruitmentNew().scalar(q)
        let route = try p.route()
        #expect(l == n || route["in_sync"] == "no", "silent divergence: leader \(l ?? "nil"), follower \(n ?? "nil")")
    }

    /// A procedure that commits, then is cancelled.
    @Test func procedureCommitThenCancel() throws {
        let p = try RouteProxy(f, "rvproc", route: "mirror = \"sync\"")
        defer { p.stop() }
        for c in [try f.recruitmentLegacy(), try f.recruitmentNew()] {
            try c.query("CREATE OR REPLACE PROCEDURE rv_batch() LANGUAGE plpgsql AS $$ BEGIN INSERT INTO rvproc_items VALUES (10, 'batch 1'); COMMIT; PERFORM pg_sleep(30); END $$")
        }
        let c = try p.client()
        let (state, secs) = c.cancelAfter(0.5, running: "CALL rv_batch()")
        #expect(state == "57014")
        sleep(1)
        let route = try p.route()
        let l = try p.rowsOnLegacy(), n = try p.rowsOnNew()
        #expect(l == n || route["in_sync"] == "no", "silent divergence: leader \(l) rows, follower \(n)")
    }

    /// A unit that runs COPY and a rewritten statement: the emptying query reaches a backend in COPY mode.
    @Test(arguments: ["async", "sync", "async-insertfirst"]) func copyWithCapturedInsert(mirror: String) throws {
        let name = "rvcopy\(mirror.prefix(4))\(mirror.count)"
        let p = try RouteProxy(f, name, route: "mirror = \"\(mirror.prefix { $0 != "-" })\"")
        let insertFirst = mirror.hasSuffix("insertfirst")
        defer { p.stop() }
        let c = try p.client()
        try c.query("INSERT INTO \(name)_items VALUES (1, now()::text)") // warm the catalog
        sleep(1)
        try c.query("INSERT INTO \(name)_items VALUES (2, now()::text)")
        let connBox = Box<OpaquePointer>(c.conn)
        let outcome = Box<String>("")
        let ok = finishes(within: 10) {
            let conn = connBox.value
            PQsendQuery(conn, insertFirst ? "INSERT INTO \(name)_items VALUES (3, now()::text); COPY \(name)_items FROM STDIN" : "COPY \(name)_items FROM STDIN; INSERT INTO \(name)_items VALUES (3, now()::text)")
            var log: [String] = []
            while let res = PQgetResult(conn) {
                let st = PQresultStatus(res)
                if st == PGRES_COPY_IN {
                    log.append("COPY_IN")
                    let row = "100\tcopied\n"
                    PQputCopyData(conn, row, Int32(row.utf8.count))
                    PQputCopyEnd(conn, nil)
                } else if let e = PQresultErrorField(res, Int32(UInt8(ascii: "C"))) {
                    log.append("ERR \(String(cString: e)) \(String(cString: PQresultErrorMessage(res)))")
                } else { log.append(String(cString: PQcmdStatus(res))) }
                PQclear(res)
            }
            // The next statement on the session.
            let r = PQexec(conn, "SELECT 42")
            log.append("next: \(PQresultStatus(r) == PGRES_TUPLES_OK ? String(cString: PQgetvalue(r, 0, 0)) : String(cString: PQresultErrorMessage(r)))")
            PQclear(r)
            outcome.value = log.joined(separator: " | ")
        }
        #expect(ok, "\(mirror): session hung: \(outcome.value)")
        #expect(!outcome.value.contains("ERR"), "\(mirror): \(outcome.value)")
        if !ok { p.stop() }
    }

    /// The client paused behind a unit held on the follower, with a partial unit queued; the follower times out.
    @Test func pausedClientAfterFollowerTimeout() throws {
        let p = try RouteProxy(f, "rvpause", server: "write_high_water = 4096\nfollower_timeout = 1", route: "mirror = \"sync\"")
        defer { p.stop() }
        let c = try p.client()
        try c.query("INSERT INTO rvpause_items VALUES (1, 'x')")
        let blocker = try f.recruitmentNew()
        try blocker.query("BEGIN")
        try blocker.query("LOCK TABLE rvpause_items IN ACCESS EXCLUSIVE MODE")
        let connBox = Box<OpaquePointer>(c.conn)
        let outcome = Box<String>("")
        let ok = finishes(within: 15) {
            let conn = connBox.value
            PQenterPipelineMode(conn)
            PQsendQueryParams(conn, "SELECT count(*) FROM rvpause_items", 0, nil, nil, nil, nil, 0)
            PQpipelineSync(conn)
            PQflush(conn)
            usleep(300_000) // the UPDATE waits on the follower's lock
            let big = String(repeating: "z", count: 8000)
            big.withCString { s in
                var params: [UnsafePointer<CChar>?] = [s]
                _ = PQsendQueryParams(conn, "SELECT length($1)", 1, nil, &params, nil, nil, 0)
            }
            PQflush(conn) // a unit without its Sync yet, larger than write_high_water
            usleep(300_000)
            PQpipelineSync(conn)
            PQflush(conn)
            var log: [String] = []
            var syncs = 0
            while syncs < 2 {
                guard let res = PQgetResult(conn) else { continue }
                let st = PQresultStatus(res)
                if st == PGRES_PIPELINE_SYNC { syncs += 1; log.append("SYNC") }
                else if st == PGRES_TUPLES_OK { log.append("rows \(String(cString: PQgetvalue(res, 0, 0)))") }
                else { log.append(String(cString: PQresStatus(st))) }
                PQclear(res)
            }
            outcome.value = log.joined(separator: " ")
        }
        try? blocker.query("ROLLBACK")
        #expect(ok, "client left paused: \(outcome.value)")
        if !ok { p.stop() }
    }

    /// Many Executes without a Sync in lock-step (25 000 × 4 KB): lock-step holds a unit whole, so past a
    /// bound the session stops mirroring instead of queueing it all.
    @Test func manyExecutesWithoutSync() throws {
        // The bound is the larger of mirror_queue_bytes (16 MiB) and max_message_size (1 MiB here).
        let p = try RouteProxy(f, "rvmem", server: "max_message_size = 1048576", route: "mirror = \"sync\"")
        defer { p.stop() }
        let c = try p.client()
        try c.query("SELECT 1")
        let before = rssKiB(p.process.processIdentifier)
        let conn = c.conn
        PQenterPipelineMode(conn)
        let param = String(repeating: "p", count: 4000)
        for _ in 0..<25_000 {
            param.withCString { s in
                var params: [UnsafePointer<CChar>?] = [s]
                _ = PQsendQueryParams(conn, "SELECT length($1)", 1, nil, &params, nil, nil, 0)
            }
        }
        PQflush(conn)
        sleep(2)
        let during = rssKiB(p.process.processIdentifier)
        PQpipelineSync(conn)
        var syncs = 0
        while syncs < 1 { guard let res = PQgetResult(conn) else { continue }; if PQresultStatus(res) == PGRES_PIPELINE_SYNC { syncs += 1 }; PQclear(res) }
        PQexitPipelineMode(conn)
        #expect(during - before < 50_000, "proxy grew \(during - before) KiB")
        // Past the bound the session stopped mirroring (the route says why) and the leader ran it all.
        let route = try p.route()
        #expect(route["in_sync"] == "no" && route["out_of_sync_reason"]?.contains("without a Sync") == true, "\(route)")
    }

    /// A client that sends a large statement while its route is paused is not read past the high-water mark
    /// (200 MB sent during a pause grew the proxy by 200 MB); the statement runs whole once the pause ends.
    @Test func inputHeldByAPauseIsBounded() throws {
        let p = try RouteProxy(f, "rvparked", server: "write_high_water = 65536")
        defer { p.stop() }
        let raw = try RawClient(port: p.port)
        try raw.logIn(user: "onboarding_user", database: "rvparked", password: FixtureSecrets.clientPassword)
        let admin = try p.admin()
        try admin.query("PAUSE rvparked 30")
        let before = rssKiB(p.process.processIdentifier)
        let statement = RawClient.query("SELECT length('" + String(repeating: "q", count: 64_000_000) + "')")
        let rawBox = Box(raw)
        let sent = finishes(within: 3) { rawBox.value.send(statement) } // blocks while the proxy does not read
        let during = rssKiB(p.process.processIdentifier)
        #expect(!sent, "the proxy stopped reading: the client's send is still blocked")
        #expect(during - before < 32_000, "held while paused: \(during - before) KiB")
        try admin.query("RESUME rvparked")
        let (answer, ready) = raw.readUntilReady()
        #expect(ready && String(decoding: answer, as: UTF8.self).contains("64000000"), "the statement ran whole after the pause")
    }
}

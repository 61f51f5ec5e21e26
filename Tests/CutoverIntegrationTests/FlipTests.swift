// Integration: flips under load, rollback, a follower that dies mid-run, restarts mid-migration, the admin
// console and the CLI, session state carried to a follower that joins late, cross-schema statements.
import CLibPQ
import CutoverCore
import Foundation
import Glibc
import Testing

@Suite(.serialized) struct FlipTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    /// Fresh, identical pgbench tables on both sides of the recruitment route.
    func freshPgbenchTables() throws {
        try f.walk("recruitment", to: "legacy")
        for (port, db, user, pw, opts) in [(f.legacy.port, "hexabuilders", "hexabuilders", FixtureSecrets.legacyPassword, "-c search_path=recruitment"),
                                           (f.onboarding.port, "recruitment", "recruitment_user", FixtureSecrets.recruitmentPassword, "")] {
            let r = try runProcess("pgbench", ["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", "\(port)", "-U", user, db],
                                   environment: ["PGPASSWORD": pw, "PGOPTIONS": opts], timeout: 300)
            #expect(r.succeeded, "\(r.stderr)")
        }
    }

    /// Runs pgbench on the recruitment route for `seconds` while `flips` happen; returns the stall of each flip.
    func flipsUnderLoad(_ flips: [String], seconds: Int, name: String) throws -> [Int] {
        let bench = try startBackgroundProcess("pgbench", ["-n", "-c", "8", "-j", "2", "-T", "\(seconds)", "-M", "prepared",
                                                         "-h", "127.0.0.1", "-p", "\(f.proxyPort)", "-U", "recruitment_user", "recruitment"],
                                               environment: f.clientEnvironment, logPath: "\(f.directory)/\(name).log")
        var stalls: [Int] = []
        sleep(1)
        for phase in flips {
            let row = try f.adminRun("SET PHASE recruitment TO \(phase)").first ?? []
            #expect(row[2]?.hasPrefix(phase.split(separator: " ").first.map(String.init) ?? phase) == true, "\(row)")
            stalls.append(Int(row[4] ?? "") ?? -1)
            usleep(1_200_000)
        }
        bench.waitUntilExit()
        let log = (try? String(contentsOfFile: "\(f.directory)/\(name).log", encoding: .utf8)) ?? ""
        #expect(bench.terminationStatus == 0, "\(log)")
        #expect(log.contains("number of failed transactions: 0 (0.000%)"), "\(log)")
        return stalls
    }

    @Test func walkingTheLadderAndBackUnderLoadLosesNoTransaction() throws {
        try freshPgbenchTables()
        // legacy → dual-legacy while writes flow: no client notices (the new side misses what ran before it).
        var stalls = try flipsUnderLoad(["dual-legacy"], seconds: 3, name: "flip-mirror-on")
        // Fresh identical tables with mirroring already on, then the leader flip under load: every write
        // reaches both sides, so they end identical.
        try f.waitForMirrorDrain("recruitment")
        try f.walk("recruitment", to: "legacy")
        try freshPgbenchTables()
        try f.adminRun("SET PHASE recruitment TO dual-legacy")
        stalls += try flipsUnderLoad(["dual-new"], seconds: 4, name: "flip-leader")
        try f.waitForMirrorDrain("recruitment")
        let q = "SELECT sum(abalance) || ':' || (SELECT sum(bbalance) FROM pgbench_branches) || ':' || (SELECT count(*) FROM pgbench_history) FROM pgbench_accounts"
        #expect(try f.recruitmentLegacy().scalar(q) == f.recruitmentNew().scalar(q))
        #expect(try f.routeRow("recruitment")[6] == "yes")
        // On to new and back to dual-legacy, still under load. Legacy misses the writes made in `new`, so
        // the proxy marks the route out of sync and the leader flip back needs FORCE.
        stalls += try flipsUnderLoad(["new", "dual-new", "dual-legacy FORCE"], seconds: 6, name: "flip-back")
        print("flip under load: stall per flip (ms) \(stalls); longest \(stalls.max() ?? -1) ms")
        #expect(stalls.allSatisfy { $0 >= 0 && $0 < 1000 })
        let row = try f.routeRow("recruitment")
        #expect(row[1] == "dual-legacy" && row[6] == "no", "\(row)")
        #expect(f.divergenceLines().contains { ($0["kind"] as? String) == "unmirrored_writes" })
        try f.walk("recruitment", to: "legacy")
    }

    @Test func aFollowerKilledMidRunChangesNothingForClients() throws {
        try freshPgbenchTables()
        try f.adminRun("SET PHASE recruitment TO dual-legacy")
        let before = f.divergenceLines().count
        let bench = try startBackgroundProcess("pgbench", ["-n", "-c", "4", "-j", "2", "-T", "6", "-M", "extended",
                                                         "-h", "127.0.0.1", "-p", "\(f.proxyPort)", "-U", "recruitment_user", "recruitment"],
                                               environment: f.clientEnvironment, logPath: "\(f.directory)/kill-bench.log")
        sleep(2)
        f.onboarding.stop(mode: "immediate")
        bench.waitUntilExit()
        let log = (try? String(contentsOfFile: "\(f.directory)/kill-bench.log", encoding: .utf8)) ?? ""
        #expect(bench.terminationStatus == 0 && log.contains("number of failed transactions: 0 (0.000%)"), "\(log)")
        let kinds = Set(f.divergenceLines().dropFirst(before).compactMap { $0["kind"] as? String })
        #expect(kinds.contains("follower_lost"), "\(kinds)")
        let row = try f.routeRow("recruitment")
        #expect(row[6] == "no", "route must show out of sync: \(row)")
        // A leader flip of an out-of-sync route is refused without FORCE.
        #expect(throws: PQError.self) { try f.adminRun("SET PHASE recruitment TO dual-new") }
        // New sessions still work while the follower is down (and say so in the log).
        let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        #expect(try c.scalar("SELECT count(*) FROM pgbench_branches") == "1")
        try f.onboarding.restart()
        try f.walk("recruitment", to: "legacy")
        #expect(try f.routeRow("recruitment")[6] == nil) // no follower, no sync state to show
    }

    @Test func aRestartedProxyComesBackInThePhaseItHad() throws {
        try f.walk("recruitment", to: "dual-new")
        try f.adminRun("SET MIRROR recruitment TO sync")
        try f.restartProxy()
        let row = try f.routeRow("recruitment")
        #expect(row[1] == "dual-new" && row[2] == "sync", "\(row)")
        // And it routes as before: the leader is now the new instance.
        let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        #expect(try c.scalar("SELECT current_database()") == "recruitment")
        try f.adminRun("SET MIRROR recruitment TO async")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func aSessionThatPredatesTheFlipGetsItsStateReplayed() throws {
        try f.walk("recruitment", to: "legacy")
        try f.onBothRecruitmentSides("DROP TABLE IF EXISTS notes; CREATE TABLE notes (id int PRIMARY KEY, body text)")
        let before = f.divergenceLines().count
        let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        try c.query("SET statement_timeout = '42s'")
        try c.query("PREPARE add_note(int, text) AS INSERT INTO notes VALUES ($1, $2)")
        try c.query("LISTEN some_channel")
        try f.adminRun("SET PHASE recruitment TO dual-legacy")
        // The session picks up its follower at its next idle boundary: now. Its prepared statement works on both sides.
        try c.query("EXECUTE add_note(1, 'hello')")
        #expect(try c.scalar("SHOW statement_timeout") == "42s")
        try f.waitForMirrorDrain("recruitment")
        #expect(try f.recruitmentNew().scalar("SELECT body FROM notes WHERE id = 1") == "hello")
        let records = f.divergenceLines().dropFirst(before)
        #expect(records.contains { ($0["kind"] as? String) == "unreplayable_state" && (($0["detail"] as? String) ?? "").contains("LISTEN") })
        // Only the LISTEN is reported: SET and PREPARE were carried over, so nothing else diverged.
        #expect(!records.contains { ["command_tag", "error_mismatch"].contains($0["kind"] as? String ?? "") }, "\(records)")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func aFlipThatAddsAFollowerLogsEveryFollowerInBeforeItSwitches() throws {
        try f.walk("recruitment", to: "legacy")
        let before = f.divergenceLines().count
        let clients = try (0..<3).map { _ in try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user", extra: "application_name=warm_up_test")) }
        // Set before the flip: the adopted standby gets it replayed at the switch, not at its login.
        try clients[0].query("SET statement_timeout = '42s'")
        let row = try f.adminRun("SET PHASE recruitment TO dual-legacy").first ?? []
        // route, from, to, sessions, longest_stall_ms, duration_ms, warm_up_ms, followers_ready
        #expect(row[3] == "3" && row[7] == "3", "every session had a logged-in follower at the switch: \(row)")
        #expect(Int(row[6] ?? "") ?? -1 >= 0 && Int(row[5] ?? "") ?? -1 >= Int(row[6] ?? "") ?? 0, "\(row)")
        for c in clients { #expect(try c.scalar("SELECT current_setting('statement_timeout') || '/' || count(*) FROM pg_class WHERE relname = 'pg_class'") != nil) }
        try f.waitForMirrorDrain("recruitment")
        let records = f.divergenceLines().dropFirst(before)
        #expect(records.isEmpty, "the followers answered like the leader, so the SET reached them: \(records)")
        // Each follower is one backend on the new side: the standbys were adopted, not doubled.
        let onNew = try f.recruitmentNew().scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'warm_up_test'")
        #expect(onNew == "3", "\(onNew ?? "nil")")
        try f.walk("recruitment", to: "legacy")
    }

    @Test func aFlipWhoseFollowersCannotLogInStillSwitchesAndSaysTheRouteIsOutOfSync() throws {
        try f.walk("recruitment", to: "legacy")
        let before = f.divergenceLines().count
        let c = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        f.onboarding.stop(mode: "immediate")
        defer { try? f.onboarding.restart() }
        let row = try f.adminRun("SET PHASE recruitment TO dual-legacy").first ?? []
        #expect(row[2] == "dual-legacy" && row[7] == "0", "\(row)")
        // The client goes on against the leader; the session's follower failed, so the route is out of sync.
        #expect(try c.scalar("SELECT 6 * 7") == "42")
        #expect(f.divergenceLines().dropFirst(before).contains { ($0["kind"] as? String) == "follower_unreachable" })
        #expect(try f.routeRow("recruitment")[6] == "no")
        try f.onboarding.restart()
        try f.walk("recruitment", to: "legacy")
    }

    @Test func crossSchemaStatementsAreReported() throws {
        try f.legacy.psql("CREATE TABLE IF NOT EXISTS recruitment.job_titles (id int, title text); GRANT ALL ON recruitment.job_titles TO hexabuilders",
                          database: "hexabuilders")
        let before = f.divergenceLines().count
        let c = try f.connect() // the onboarding route, schema onboarding
        _ = try c.query("SELECT c.name, count(j.*) FROM candidates c LEFT JOIN recruitment.job_titles j ON j.id = c.id GROUP BY c.name LIMIT 1")
        _ = try c.query("SELECT count(*) FROM candidates WHERE name LIKE 'recruitment.%'") // a string literal, not a reference
        let records = f.divergenceLines().dropFirst(before).filter { ($0["kind"] as? String) == "cross_schema" }
        #expect(records.count == 1, "\(records)")
        #expect((records.first?["detail"] as? String)?.contains("recruitment") == true)
        #expect((records.first?["statement"] as? String)?.contains("recruitment.job_titles") == true)
    }

    @Test func adminConsoleAnswersAndRefusesWithReasons() throws {
        let a = try f.admin()
        let routes = try a.query("SHOW ROUTES")
        #expect(routes.contains { $0[0] == "onboarding" && $0[1] == "legacy" && $0[3] == "legacy/onboarding" })
        #expect(try a.query("SHOW SESSIONS").contains { $0[2] == "ops" && $0[5] == "admin" })
        #expect(try a.query("SHOW STATS").contains { $0[0] == "recruitment" })
        func sqlState(_ command: String) -> String? {
            do { try a.query(command); return nil } catch let e as PQError { return e.sqlState } catch { return "?" }
        }
        #expect(sqlState("SET PHASE recruitment TO dual-new") == "55000")           // a skip without FORCE
        #expect(sqlState("SET PHASE nowhere TO new") == "42704")                   // unknown route
        #expect(sqlState("SET PHASE recruitment TO sideways") == "22023")          // unknown phase
        #expect(sqlState("DROP TABLE x") == "42601")                               // unknown command
        #expect(sqlState("SET PHASE recruitment TO legacy") == "55000")            // already there
        let paused = try a.query("PAUSE recruitment 1")
        #expect(paused.first?[1] == "true")
        #expect(sqlState("SET PHASE recruitment TO dual-new FORCE") == "55006")   // paused: no leader change
        #expect(sqlState("SET PHASE recruitment TO dual-legacy") == nil)           // paused: PAUSE, backfill, flip, RESUME
        #expect(sqlState("SET PHASE recruitment TO legacy") == nil)
        #expect(try a.query("RESUME recruitment").first?[0] == "recruitment")

        // A PAUSE that timed out with a session still in its transaction is not settled: a flip must not land
        // in the middle of that transaction. Once the holdout commits (and is parked), it may.
        let holdout = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        try holdout.query("BEGIN")
        try holdout.query("SELECT 1")
        #expect(try a.query("PAUSE recruitment 0.3").first?[3] == "1", "timed out, one session busy")
        #expect(sqlState("SET PHASE recruitment TO dual-legacy") == "55006")
        holdout.start("COMMIT") // answered once the route is resumed (the session is parked at its boundary)
        usleep(300_000)
        #expect(sqlState("SET PHASE recruitment TO dual-legacy") == nil, "every session parked now")
        #expect(sqlState("SET PHASE recruitment TO legacy") == nil)
        #expect(try a.query("RESUME recruitment").first?[0] == "recruitment")
        #expect(holdout.awaitResults() == nil)
        // A RESUME while a PAUSE still waits for a busy session answers that PAUSE at once (it waited out its timeout).
        try holdout.query("BEGIN")
        let pausing = try f.admin()
        let asked = Date()
        pausing.start("PAUSE recruitment 5")
        usleep(200_000)
        #expect(try a.query("RESUME recruitment").first?[0] == "recruitment")
        // (Polled: a PAUSE never answered must fail the test, not hang it.)
        var answered = false
        while !answered && Date().timeIntervalSince(asked) < 3 {
            PQconsumeInput(pausing.conn)
            answered = PQisBusy(pausing.conn) == 0
            if !answered { usleep(50_000) }
        }
        #expect(answered && Date().timeIntervalSince(asked) < 2, "answered at the RESUME, not after 5 s, nor never")
        if answered { #expect(pausing.awaitResults() == nil) }
        try holdout.query("COMMIT")
        try a.query("RELOAD")
        // A non-admin user cannot log in to the console.
        #expect(throws: PQError.self) { try PQConnection(f.conninfo(database: "cutover")) }
    }

    @Test func pipelinedAdminCommandsRunAtOnceAndAreAnsweredInTheOrderSent() throws {
        // A PAUSE waits for a session in a transaction. The SHOW and the RESUME sent right behind it in the same
        // write run at once (the RESUME is what ends the PAUSE, which would otherwise wait 30 s), but their
        // answers come after the PAUSE's: a client matches answers to commands by order.
        let holdout = try PQConnection(f.conninfo(database: "recruitment", user: "recruitment_user"))
        try holdout.query("BEGIN")
        try holdout.query("SELECT 1")
        let c = try RawClient(port: f.proxyPort)
        try c.logIn(user: "ops", database: "cutover", password: FixtureSecrets.adminPassword)
        func answers(to commands: [String], expecting count: Int) -> ([String], TimeInterval) {
            let sent = Date()
            c.send(commands.flatMap(RawClient.query))
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while RawClient.answers(in: bytes).count < count && Date().timeIntervalSince(sent) < 10 {
                let n = recv(c.fd, &buf, buf.count, 0)
                if n <= 0 { break }
                bytes.append(contentsOf: buf[0..<n])
            }
            return (RawClient.answers(in: bytes), Date().timeIntervalSince(sent))
        }
        let (first, took) = answers(to: ["PAUSE recruitment 30", "SHOW ROUTES", "RESUME recruitment"], expecting: 3)
        #expect(first == ["PAUSE", "SHOW", "RESUME"])
        #expect(took < 5, "the RESUME ran at once and ended the PAUSE (\(took) s)")
        // An error in the middle keeps its place too.
        let (second, _) = answers(to: ["PAUSE recruitment 0.3", "SET PHASE nowhere TO new", "RESUME recruitment"], expecting: 3)
        #expect(second == ["PAUSE", "E:42704", "RESUME"])
        try holdout.query("COMMIT")
        #expect(try f.routeRow("recruitment")[8] == "no", "not left paused")
    }

    @Test func anAdminCancelsASessionsStatementAndKillsASessionHoldingATransaction() throws {
        let a = try f.admin()
        let marker = "kill_test_\(getpid())"
        func sessionID(_ app: String) throws -> String? {
            try a.query("SHOW SESSIONS").first { $0[3] == app }?[0] ?? nil
        }
        // CANCEL: a long statement is cancelled with the real key, the session carries on.
        let sleeper = try PQConnection(f.conninfo(extra: "application_name=\(marker)_sleeper"))
        let sleeperID = try #require(try sessionID("\(marker)_sleeper"))
        sleeper.start("SELECT pg_sleep(20)")
        usleep(300_000)
        let cancelled = try a.query("CANCEL \(sleeperID)")
        #expect(cancelled.first?[0] == sleeperID && cancelled.first?[3] == "running", "\(cancelled)")
        #expect(sleeper.awaitResults() == "57014", "the statement was cancelled")
        #expect(try sleeper.scalar("SELECT 1") == "1", "and the session goes on")

        // KILL: a session idle in a transaction (what blocks a flip until flip_timeout) is ended, its client
        // told why, its transaction rolled back on the backend, and others are untouched.
        // (A raw client, to read the FATAL as it arrives: libpq hands an error that comes while it is idle to
        // its notice processor.)
        let holdout = try RawClient(port: f.proxyPort)
        holdout.send(RawClient.startup([("user", "trust_user"), ("database", "onboarding"), ("application_name", "\(marker)_holdout")]))
        #expect(holdout.readUntilReady().ready)
        holdout.send(RawClient.query("BEGIN; SELECT count(*) FROM candidates"))
        #expect(holdout.readUntilReady().ready)
        let holdoutID = try #require(try sessionID("\(marker)_holdout"))
        let bystander = try PQConnection(f.conninfo(extra: "application_name=\(marker)_bystander"))
        let killed = try a.query("KILL \(holdoutID)")
        #expect(killed.first?[3] == "in transaction", "\(killed)")
        let (farewell, closed) = holdout.readUntilClosed()
        #expect(closed && RawClient.errorCode(in: farewell) == "57P01"
                && String(decoding: farewell, as: UTF8.self).contains("terminating connection due to administrator command"),
                "the client is told why, then the connection closes")
        usleep(200_000)
        #expect(try sessionID("\(marker)_holdout") == nil, "gone from SHOW SESSIONS")
        let onLegacy = try f.recruitmentLegacy().scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = '\(marker)_holdout'")
        #expect(onLegacy == "0", "its backend is gone, its transaction with it")
        #expect(try bystander.scalar("SELECT 1") == "1")

        // A running statement is cancelled by KILL too, so its backend stops now.
        let busy = try PQConnection(f.conninfo(extra: "application_name=\(marker)_busy"))
        let busyID = try #require(try sessionID("\(marker)_busy"))
        busy.start("SELECT pg_sleep(20)")
        usleep(300_000)
        let started = Date()
        try a.query("KILL \(busyID)")
        var gone = false
        while !gone && Date().timeIntervalSince(started) < 5 {
            gone = try f.recruitmentLegacy().scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = '\(marker)_busy'") == "0"
            if !gone { usleep(100_000) }
        }
        #expect(gone, "the backend's statement stopped at the KILL, not 20 s later")

        func sqlState(_ command: String) -> String? {
            do { try a.query(command); return nil } catch let e as PQError { return e.sqlState } catch { return "?" }
        }
        #expect(sqlState("KILL 999999") == "42704")
        #expect(sqlState("KILL me") == "42601")
        #expect(sqlState("CANCEL \(sleeperID)") == nil, "a cancel with nothing running is harmless")
        let own = try #require(try a.query("SHOW SESSIONS").first { $0[2] == "ops" && $0[5] == "admin" }?[0] ?? nil)
        #expect(sqlState("KILL \(own)") == "55000")
    }

    @Test func cliStatusAndPhaseTalkToTheRunningProxy() throws {
        let url = "host=127.0.0.1 port=\(f.proxyPort) dbname=cutover user=ops password=\(FixtureSecrets.adminPassword)"
        let status = try runProcess(ProxyFixture.cutoverBinary, ["status", "--admin-url", url])
        #expect(status.succeeded && status.stdout.contains("recruitment") && status.stdout.contains("phase"), "\(status.stdout)\(status.stderr)")
        let flip = try runProcess(ProxyFixture.cutoverBinary, ["phase", "recruitment", "dual-legacy"], environment: ["CUTOVER_ADMIN_URL": url])
        #expect(flip.succeeded && flip.stdout.contains("dual-legacy"), "\(flip.stdout)\(flip.stderr)")
        let refused = try runProcess(ProxyFixture.cutoverBinary, ["phase", "recruitment", "new", "--admin-url", url])
        #expect(refused.status == 1 && refused.stdout.contains("skips a step"), "\(refused.stdout)")
        let unreachable = try runProcess(ProxyFixture.cutoverBinary, ["status", "--admin-url", "host=127.0.0.1 port=1 dbname=cutover user=ops"])
        #expect(unreachable.status == 2)
        try f.walk("recruitment", to: "legacy")
    }

    @Test func cliPauseResumeAndDivergencesTalkToTheRunningProxy() throws {
        let url = "host=127.0.0.1 port=\(f.proxyPort) dbname=cutover user=ops password=\(FixtureSecrets.adminPassword)"
        func cli(_ args: [String]) throws -> ProcessResult { try runProcess(ProxyFixture.cutoverBinary, args, environment: ["CUTOVER_ADMIN_URL": url]) }
        func paused() throws -> String? { try f.admin().query("SHOW ROUTES").first { $0[0] == "recruitment" }?[8] ?? nil }
        let pause = try cli(["pause", "recruitment", "--timeout", "2"])
        #expect(pause.status == 0 && pause.stdout.contains("still_busy"), "\(pause.stdout)\(pause.stderr)")
        #expect(try paused() == "yes")
        let twice = try cli(["pause", "recruitment"])
        #expect(twice.status == 1 && twice.stdout.contains("already paused"), "\(twice.stdout)")
        let resume = try cli(["resume", "recruitment"])
        #expect(resume.status == 0 && resume.stdout.contains("longest_stall_ms"), "\(resume.stdout)\(resume.stderr)")
        #expect(try paused() == "no")
        let divergences = try cli(["divergences", "recruitment"])
        #expect(divergences.status == 0 && divergences.stdout.contains("kind") && divergences.stdout.contains("statement"), "\(divergences.stdout)")
        #expect(try cli(["divergences"]).status == 0)
        let unknown = try cli(["resume", "nosuch"])
        #expect(unknown.status == 1 && unknown.stdout.contains("no route named"), "\(unknown.stdout)")
        let version = try cli(["--version"])
        #expect(version.status == 0 && version.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == CutoverVersion.string)
    }
}

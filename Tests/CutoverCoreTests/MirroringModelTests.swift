// Pure tests of what mirroring decides on: statement classification, session tracking and replay,
// unit digests and their comparison, admin command parsing and encoding, the state file, phase transitions.
import Foundation
import Testing
import CutoverProtocol
@testable import CutoverCore

private func withBody<T>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) -> T) -> T { bytes.withUnsafeBytes(body) }

private func queryBody(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

@Suite struct SQLTextTests {
    @Test func classifiesTransactionControlAndSessionState() {
        #expect(SQLText.classify("  /* hi */ -- c\n commit") == .commit)
        #expect(SQLText.classify("END") == .commit)
        #expect(SQLText.classify("ROLLBACK TO SAVEPOINT a") == .other)
        #expect(SQLText.classify("rollback") == .rollback)
        #expect(SQLText.classify("SET search_path = x") == .setting)
        #expect(SQLText.classify("SET LOCAL work_mem = '1MB'") == .other)
        #expect(SQLText.classify("RESET ALL") == .discardAll)
        #expect(SQLText.classify("PREPARE TRANSACTION 'x'") == .other)
        #expect(SQLText.classify("prepare q AS SELECT 1") == .prepare)
        #expect(SQLText.classify("(SELECT 1)") == .other)
    }

    @Test func findsStateThatCannotBeReplayed() {
        #expect(SQLText.unreplayableState("CREATE TEMP TABLE t (x int)") == .temporaryTable)
        #expect(SQLText.unreplayableState("create local temporary table t (x int)") == .temporaryTable)
        #expect(SQLText.unreplayableState("LISTEN ch") == .listen)
        #expect(SQLText.unreplayableState("SELECT pg_advisory_lock(1)") == .advisoryLock)
        #expect(SQLText.unreplayableState("SELECT pg_advisory_xact_lock(1)") == [])
        #expect(SQLText.unreplayableState("DECLARE c CURSOR WITH HOLD FOR SELECT 1") == .holdCursor)
        #expect(SQLText.unreplayableState("CREATE TABLE t (x int)") == [])
    }
}

@Suite struct SessionTrackerTests {
    @Test func unitsEndAtQuerySyncAndFunctionCall() {
        var t = SessionTracker()
        t.recordUnits = true
        #expect(withBody(queryBody("SELECT 1")) { t.received(id: FrontendMessageID.query.rawValue, body: $0) }?.statements == ["SELECT 1"])
        // Extended protocol: Parse, Bind, Execute, Sync → one unit with the prepared text.
        var parse = ByteWriter(); parse.writeCString("s1"); parse.writeCString("UPDATE t SET v = $1"); parse.writeInt16(0)
        #expect(withBody(parse.bytes) { t.received(id: FrontendMessageID.parse.rawValue, body: $0) } == nil)
        var bind = ByteWriter(); bind.writeCString(""); bind.writeCString("s1"); bind.writeInt16(0); bind.writeInt16(0); bind.writeInt16(0)
        _ = withBody(bind.bytes) { t.received(id: FrontendMessageID.bind.rawValue, body: $0) }
        var exec = ByteWriter(); exec.writeCString(""); exec.writeInt32(0)
        _ = withBody(exec.bytes) { t.received(id: FrontendMessageID.execute.rawValue, body: $0) }
        let unit = t.received(id: FrontendMessageID.sync.rawValue, body: nil)
        #expect(unit?.statements == ["UPDATE t SET v = $1"] && unit?.parsed == ["UPDATE t SET v = $1"])
        #expect(withBody(queryBody("COMMIT")) { t.received(id: FrontendMessageID.query.rawValue, body: $0) }?.commits == true)
        #expect(unit?.writes == true, "the prepared UPDATE executed is a write")
    }

    @Test func unitsKnowWhetherTheyWriteFromTheKeywordAlreadyRead() {
        var t = SessionTracker()
        t.recordUnits = true
        func writes(_ sql: String) -> Bool? { withBody(queryBody(sql)) { t.received(id: FrontendMessageID.query.rawValue, body: $0) }?.writes }
        #expect(writes("SELECT * FROM t FOR UPDATE") == false)
        #expect(writes("/* c */ update t set v = 1") == true)
        #expect(writes("COPY t FROM STDIN") == true)
        #expect(writes("WITH moved AS (DELETE FROM a RETURNING *) SELECT * FROM moved") == true)
        #expect(writes("WITH t AS (SELECT 1) SELECT * FROM t") == false)
        #expect(writes("SELECT 1") == false, "a unit after a write starts clean")
    }

    @Test func replayCarriesSettingsAndPreparedStatements() throws {
        var t = SessionTracker()
        for q in ["SET statement_timeout = '5s'", "SET search_path = a", "SET search_path = b", "RESET statement_timeout",
                  "PREPARE p1 AS SELECT 1", "PREPARE p2 AS SELECT 2", "DEALLOCATE p2", "LISTEN x"] {
            t.run(q, answered: .idle)
        }
        var parse = ByteWriter(); parse.writeCString("named"); parse.writeCString("SELECT $1"); parse.writeInt16(0)
        _ = withBody(parse.bytes) { t.received(id: FrontendMessageID.parse.rawValue, body: $0) }
        let (bytes, answers) = t.replayMessages()
        #expect(answers == 3) // SET search_path, PREPARE p1, and one Sync after the Parse
        var f = MessageFramer(); f.append(bytes)
        var texts: [String] = []
        var ids: [UInt8] = []
        while let m = try f.next() {
            ids.append(m.id!)
            if m.id == FrontendMessageID.query.rawValue { texts.append(String(decoding: m.body.dropLast(), as: UTF8.self)) }
        }
        #expect(texts == ["SET search_path = b", "PREPARE p1 AS SELECT 1"])
        #expect(ids == [0x51, 0x51, 0x50, 0x53])
        #expect(t.unreplayable == .listen)
        // DISCARD ALL forgets everything.
        _ = withBody(queryBody("DISCARD ALL")) { t.received(id: FrontendMessageID.query.rawValue, body: $0) }
        #expect(t.replayMessages().readyForQueryCount == 0 && t.unreplayable.isEmpty)
    }
}

extension SessionTracker {
    /// Sends `sql` as one Query unit and, if `answered` is given, feeds the leader's ReadyForQuery for it.
    mutating func run(_ sql: String, answered: TransactionStatus?, previous: TransactionStatus = .idle) {
        _ = withBody(queryBody(sql)) { received(id: FrontendMessageID.query.rawValue, body: $0) }
        unitSent()
        if let answered { unitAnswered(status: answered, previous: previous, stillInFlight: 0) }
    }
}

@Suite struct TransactionalSettingsTests {
    func replayedTexts(_ t: SessionTracker) throws -> [String] {
        var f = MessageFramer(); f.append(t.replayMessages().bytes)
        var texts: [String] = []
        while let m = try f.next() {
            if m.id == FrontendMessageID.query.rawValue { texts.append(String(decoding: m.body.dropLast(), as: UTF8.self)) }
        }
        return texts
    }

    @Test func aSetInARolledBackTransactionIsNotReplayed() throws {
        var t = SessionTracker()
        t.run("SET search_path = kept", answered: .idle)
        t.run("BEGIN", answered: .inTransaction)
        t.run("SET search_path = other_schema", answered: .inTransaction, previous: .inTransaction)
        #expect(try replayedTexts(t) == ["SET search_path = kept"], "not before the transaction ends")
        t.run("ROLLBACK", answered: .idle, previous: .inTransaction)
        #expect(try replayedTexts(t) == ["SET search_path = kept"])
    }

    @Test func aSetInACommittedTransactionIsReplayedAndAFailedOneIsNot() throws {
        var t = SessionTracker()
        t.run("BEGIN", answered: .inTransaction)
        t.run("SET statement_timeout = '1s'", answered: .inTransaction, previous: .inTransaction)
        t.run("COMMIT", answered: .idle, previous: .inTransaction)
        #expect(try replayedTexts(t) == ["SET statement_timeout = '1s'"])
        t.run("BEGIN", answered: .inTransaction)
        t.run("SET work_mem = '64MB'", answered: .inTransaction, previous: .inTransaction)
        t.run("SELECT 1/0", answered: .failedTransaction, previous: .inTransaction)
        t.run("COMMIT", answered: .idle, previous: .failedTransaction) // answered ROLLBACK by the server
        #expect(try replayedTexts(t) == ["SET statement_timeout = '1s'"])
        t.run("BEGIN; SET work_mem = '8MB'; ROLLBACK", answered: .idle)
        t.run("RESET ALL", answered: .idle)
        #expect(try replayedTexts(t).isEmpty, "RESET ALL committed")
    }

    @Test func pipelinedUnitsResolveInOrder() throws {
        var t = SessionTracker()
        // Three units sent before any answer: SET (autocommit), BEGIN, SET inside the transaction.
        t.run("SET a_setting = 1", answered: nil)
        t.run("BEGIN", answered: nil)
        t.run("SET b_setting = 2", answered: nil)
        t.unitAnswered(status: .idle, previous: .idle, stillInFlight: 2)
        #expect(try replayedTexts(t) == ["SET a_setting = 1"])
        t.unitAnswered(status: .inTransaction, previous: .idle, stillInFlight: 1)
        t.unitAnswered(status: .inTransaction, previous: .inTransaction, stillInFlight: 0)
        t.run("ROLLBACK", answered: .idle, previous: .inTransaction)
        #expect(try replayedTexts(t) == ["SET a_setting = 1"])
    }
}

@Suite struct DigestTests {
    func digest(rows: [[UInt8]], _ messages: [BackendMessage]) -> UnitDigest? { digest(messages, rows: rows) }
    func digest(_ messages: [BackendMessage], rows: [[UInt8]] = []) -> UnitDigest? {
        var b = DigestBuilder()
        for r in rows { _ = withBody(r) { b.received(id: BackendMessageID.dataRow.rawValue, body: $0) } }
        var out: UnitDigest?
        for m in messages {
            var w = ByteWriter(); m.encode(into: &w)
            let body = Array(w.bytes[5...])
            if let d = withBody(body, { b.received(id: w.bytes[0], body: $0) }) { out = d }
        }
        return out
    }

    @Test func aBuilderRefillsItsDigestOnlyOnceNothingElseHoldsIt() {
        var b = DigestBuilder()
        func unit(_ tag: String, _ row: [UInt8]) -> UnitDigest? {
            _ = withBody(row) { b.received(id: BackendMessageID.dataRow.rawValue, body: $0) }
            var w = ByteWriter(); BackendMessage.commandComplete(tag: tag).encode(into: &w)
            _ = withBody(Array(w.bytes[5...])) { b.received(id: w.bytes[0], body: $0) }
            return withBody([UInt8(ascii: "I")]) { b.received(id: BackendMessageID.readyForQuery.rawValue, body: $0) }
        }
        // Held (by a pending unit, a boundary): the next unit gets a digest of its own, and this one keeps its values.
        let held = unit("SELECT 1", [1])!
        let next = unit("UPDATE 2", [2])!
        #expect(held !== next)
        #expect(held.first?.tag == "SELECT 1" && next.first?.tag == "UPDATE 2")
        // Let go: the builder refills the object for the unit after, instead of allocating another.
        let address = ObjectIdentifier(next)
        _ = consume next
        let third = unit("DELETE 3", [3])!
        #expect(ObjectIdentifier(third) == address)
        #expect(third.first?.tag == "DELETE 3" && third.first?.rows == 1)
        #expect(held.first?.tag == "SELECT 1")
    }

    @Test func rowHashIsOrderInsensitiveButCountsDuplicates() {
        let a = digest([.commandComplete(tag: "SELECT 3"), .readyForQuery(.idle)], rows: [[1], [2], [2]])!
        let b = digest([.commandComplete(tag: "SELECT 3"), .readyForQuery(.idle)], rows: [[2], [1], [2]])!
        let c = digest([.commandComplete(tag: "SELECT 3"), .readyForQuery(.idle)], rows: [[1], [1], [2]])!
        #expect(a == b)
        #expect(UnitDigest.differences(leader: a, follower: b).isEmpty)
        // XOR would make [1,2,2] and [1,1,2] both hash to h(1)^h(2)^h(2) vs h(1)^h(1)^h(2): a sum tells them apart.
        #expect(UnitDigest.differences(leader: a, follower: c).map(\.kind) == [.rowContent])
    }

    @Test func rowHashTellsApartEveryOneByteChangeLengthAndTrailingZero() {
        // Word-at-a-time hashing must still see each byte: rows of 0–40 bytes, each with every single byte
        // changed, and each with a zero byte appended, all hash differently.
        var seen: [UInt64: [UInt8]] = [:]
        func add(_ row: [UInt8]) {
            let h = withBody(row) { DigestBuilder.hash($0) }
            #expect(seen[h] == nil, "\(row) collides with \(seen[h] ?? [])")
            seen[h] = row
        }
        for n in 0...40 {
            let row = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            add(row)
            add(row + [0])
            for i in 0..<n { var changed = row; changed[i] ^= 0x01; add(changed); changed[i] ^= 0x03; add(changed) } // no byte becomes 0
        }
        let rows: Int = (0...40).map { 2 + 2 * $0 }.reduce(0, +)
        #expect(seen.count == rows, "every row was distinct, so every hash is")
    }

    @Test func tagsErrorsAndCountsAreCompared() {
        let ok = digest([.commandComplete(tag: "UPDATE 1"), .readyForQuery(.idle)])!
        let zero = digest([.commandComplete(tag: "UPDATE 0"), .readyForQuery(.idle)])!
        let err = digest([.errorResponse(ErrorFields(severity: "ERROR", code: "23505", message: "dup")), .readyForQuery(.idle)])!
        let two = digest([.commandComplete(tag: "UPDATE 1"), .commandComplete(tag: "UPDATE 1"), .readyForQuery(.idle)])!
        #expect(UnitDigest.differences(leader: ok, follower: zero).first?.kind == .commandTag)
        #expect(UnitDigest.differences(leader: ok, follower: err).first?.kind == .errorMismatch)
        #expect(UnitDigest.differences(leader: ok, follower: two).first?.kind == .statementCount)
        #expect(err.outcomes.first?.sqlState == "23505")

        // Failures are kept beside the outcomes: each statement gets its own back, in order.
        func error(_ code: String, _ message: String) -> BackendMessage { .errorResponse(ErrorFields(severity: "ERROR", code: code, message: message)) }
        let mixed = digest(rows: [[0, 1, 0, 0, 0, 1, 49]], [.commandComplete(tag: "SELECT 1"), error("22012", "division by zero"),
                            .commandComplete(tag: "UPDATE 2"), error("23505", "dup"), .readyForQuery(.failedTransaction)])!
        #expect(mixed.outcomes.map(\.summary) == ["SELECT 1", "ERROR 22012", "UPDATE 2", "ERROR 23505"])
        #expect(mixed[3].error == "dup" && mixed[1].error == "division by zero" && mixed[0].rows == 1)
        let otherSecond = digest(rows: [[0, 1, 0, 0, 0, 1, 49]], [.commandComplete(tag: "SELECT 1"), error("22012", "division by zero"),
                                  .commandComplete(tag: "UPDATE 2"), error("40001", "serialization"), .readyForQuery(.failedTransaction)])!
        let d = UnitDigest.differences(leader: mixed, follower: otherSecond)
        #expect(d.count == 1 && d.first?.kind == .errorMismatch && d.first?.index == 3 && d.first?.follower?.sqlState == "40001")
        let sameCodeOtherText = digest(rows: [[0, 1, 0, 0, 0, 1, 49]], [.commandComplete(tag: "SELECT 1"), error("22012", "division by zero"),
                                        .commandComplete(tag: "UPDATE 2"), error("23505", "dup of another key"), .readyForQuery(.failedTransaction)])!
        #expect(!mixed.sameOutcomes(as: sameCodeOtherText) && UnitDigest.differences(leader: mixed, follower: sameCodeOtherText).isEmpty,
                "a message differing alone is no divergence (as before)")
        #expect(mixed.sameOutcomes(as: digest(rows: [[0, 1, 0, 0, 0, 1, 49]], [.commandComplete(tag: "SELECT 1"), error("22012", "division by zero"),
                                               .commandComplete(tag: "UPDATE 2"), error("23505", "dup"), .readyForQuery(.idle)])!))
    }

    @Test func commandTagsKeepTheirTextAndTellLongTagsApart() throws {
        let short = digest([.commandComplete(tag: "INSERT 0 18446744073709551615"), .readyForQuery(.idle)])!
        #expect(short.first?.tag == "INSERT 0 18446744073709551615")
        #expect(CommandTag("CREATE TEXT SEARCH CONFIGURATION").description == "CREATE TEXT SEARCH CONFIGURATION") // 32 bytes
        #expect(CommandTag("").description == "")
        // Past 32 bytes: the first 24 bytes are shown, and a hash of the whole keeps different tags different.
        let a = CommandTag(String(repeating: "x", count: 40) + "a"), b = CommandTag(String(repeating: "x", count: 40) + "b")
        #expect(a != b && a == CommandTag(String(repeating: "x", count: 40) + "a"))
        #expect(a.description == String(repeating: "x", count: 24) + "…")
        // Three statements: the first inline, the rest in the array, in order.
        let three = digest([.commandComplete(tag: "BEGIN"), .commandComplete(tag: "UPDATE 2"), .commandComplete(tag: "COMMIT"), .readyForQuery(.idle)])!
        #expect(three.outcomes.map { $0.tag ?? "" } == ["BEGIN", "UPDATE 2", "COMMIT"] && three.count == 3)
        // Divergence records carry outcomes as JSON with the same keys as before.
        let failed = StatementOutcome(sqlState: "23505", error: "dup")
        let json = String(decoding: try JSONEncoder().encode(failed), as: UTF8.self)
        #expect(json.contains("\"sqlstate\":\"23505\"") && json.contains("\"error\":\"dup\"") && !json.contains("\"tag\""))
        #expect(try JSONDecoder().decode(StatementOutcome.self, from: Data(json.utf8)) == failed)
        #expect(try JSONDecoder().decode(StatementOutcome.self, from: try JSONEncoder().encode(three.first!)) == three.first!)
    }
}

@Suite struct AdminCommandTests {
    @Test func parsesEveryCommand() throws {
        #expect(try AdminCommand.parse("show routes;") == .showRoutes)
        #expect(try AdminCommand.parse("show backends") == .showBackends)
        #expect(try AdminCommand.parse("SHOW DIVERGENCES onboarding") == .showDivergences(route: "onboarding"))
        #expect(try AdminCommand.parse("SET PHASE onboarding TO dual-legacy") == .setPhase(route: "onboarding", phase: .dualLegacy, force: false))
        #expect(try AdminCommand.parse("set phase onboarding to new force") == .setPhase(route: "onboarding", phase: .new, force: true))
        #expect(try AdminCommand.parse("SET MIRROR r TO sync") == .setMirror(route: "r", mode: .sync))
        #expect(try AdminCommand.parse("PAUSE r 2.5") == .pause(route: "r", timeout: 2.5))
        #expect(try AdminCommand.parse("RESUME r") == .resume(route: "r"))
        #expect(try AdminCommand.parse("RELOAD") == .reload)
        #expect(try AdminCommand.parse("kill 42;") == .kill(session: 42))
        #expect(try AdminCommand.parse("CANCEL 7") == .cancel(session: 7))
        #expect(try AdminCommand.parse("mark in sync onboarding 3;") == .markInSync(route: "onboarding", pauseID: 3))
        #expect(try AdminCommand.parse("show version") == .showVersion)
    }

    @Test func refusesWithSQLStates() {
        for (text, state) in [("DROP TABLE x", "42601"), ("SET PHASE r TO sideways", "22023"), ("SET MIRROR r TO maybe", "22023"),
                              ("PAUSE r -1", "42601"), ("PAUSE r inf", "42601"), ("PAUSE r 1e300", "42601"), ("PAUSE r nan", "42601"), ("", "42601"),
                              ("KILL", "42601"), ("KILL x", "42601"), ("KILL 0", "42601"), ("CANCEL -3", "42601"),
                              ("MARK IN SYNC r", "42601"), ("MARK IN SYNC r x", "42601"), ("MARK IN SYNC r 0", "42601"), ("MARK SYNC r 1", "42601")] {
            do { _ = try AdminCommand.parse(text); Issue.record("accepted \(text)") } catch { #expect(error.sqlState == state, "\(text)") }
        }
    }

    @Test func resultEncodesAsRowDescriptionDataRowsAndTag() throws {
        var w = ByteWriter()
        AdminResult(columns: ["a", "b"], rows: [["x", nil]], tag: "SHOW").encode(into: &w)
        var f = MessageFramer(); f.append(w.bytes)
        var ids: [UInt8] = []
        while let m = try f.next() { ids.append(m.id!) }
        #expect(ids == [0x54, 0x44, 0x43])
    }
}

@Suite struct StateFileTests {
    @Test func roundTripsAtomicallyAndRejectsCorruption() throws {
        let path = NSTemporaryDirectory() + "cutover-state-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try PersistedState.load(path: path) == PersistedState())
        let s = PersistedState(routes: ["onboarding": .init(phase: .dualNew, mirror: .sync)])
        try s.save(path: path)
        #expect(try PersistedState.load(path: path) == s)
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
        try "{not json".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { try PersistedState.load(path: path) }
        // The sync state round-trips; a file from before it was kept still loads, with it unknown.
        let full = PersistedState(routes: ["r": .init(phase: .new, mirror: .async, inSync: false, outOfSyncReason: "follower lost", legacyMissedWrites: true)])
        try full.save(path: path)
        #expect(try PersistedState.load(path: path) == full)
        #expect(try String(contentsOfFile: path, encoding: .utf8).contains("\"legacy_missed_writes\" : true"))
        try #"{"routes":{"r":{"phase":"new","mirror":"async"}}}"#.write(toFile: path, atomically: true, encoding: .utf8)
        let old = try PersistedState.load(path: path).routes["r"]
        #expect(old?.phase == .new && old?.inSync == nil && old?.legacyMissedWrites == nil)
    }

    @Test func writeErrorsNameThePathAndTheSystemsWords() throws {
        let path = "/nonexistent-cutover-dir/state.json"
        do { try PersistedState().save(path: path); Issue.record("saved into a missing directory") } catch {
            #expect(error.description == "cannot create \(path).tmp: No such file or directory", "\(error)")
        }
    }

    /// The restart rules, as transcripts: saved route + how the last proxy ended → what the route resumes as.
    @Test func anUncleanStopMarksDualRoutesOutOfSyncAndAbortsAFlipCutShort() {
        let killed = PersistedState.Running(pid: 4242, since: 0)
        let dual = PersistedState.Route(phase: .dualLegacy, mirror: .async, inSync: true)
        let (afterKill, notes) = dual.restored(previousRun: killed)
        #expect(afterKill.inSync == false && afterKill.outOfSyncReason?.hasPrefix("unclean shutdown: the proxy (pid 4242)") == true)
        #expect(afterKill.outOfSyncReason?.contains("the new side may have missed writes") == true)
        #expect(notes.count == 1)
        #expect(dual.restored(previousRun: nil).route == dual, "a clean stop changes nothing")
        // Dual-new: legacy is the side that may lack writes.
        #expect(PersistedState.Route(phase: .dualNew, mirror: .sync).restored(previousRun: killed).route.outOfSyncReason?.contains("the legacy side") == true)
        // A single-side phase has no follower to have missed anything.
        for phase in [Phase.legacy, .new] {
            #expect(PersistedState.Route(phase: phase, mirror: .async).restored(previousRun: killed).route.inSync == nil)
        }
        // Already out of sync: the first reason stays.
        let marked = PersistedState.Route(phase: .dualLegacy, mirror: .async, inSync: false, outOfSyncReason: "queue_overflow")
        #expect(marked.restored(previousRun: killed).route.outOfSyncReason == "queue_overflow")
        // A flip saved as under way: the route is in the saved phase, the flip is reported and cleared.
        var flipping = dual
        flipping.flip = .init(from: .dualLegacy, to: .dualNew, startedAt: 1)
        let (afterFlip, flipNotes) = flipping.restored(previousRun: killed)
        #expect(afterFlip.phase == .dualLegacy && afterFlip.flip == nil)
        #expect(flipNotes.first == "the flip from dual-legacy to dual-new was cut short by an unclean shutdown; aborted: the route stays in dual-legacy")
        #expect(flipping.restored(previousRun: nil).notes.first?.contains("cut short by a restart") == true)
        // A pause is kept, and said.
        var paused = dual
        paused.paused = true
        #expect(paused.restored(previousRun: nil).route.paused == true)
        #expect(paused.restored(previousRun: nil).notes == ["restored paused: new transactions wait until RESUME"])
    }

    @Test func theRunningMarkPauseAndFlipRoundTrip() throws {
        let path = NSTemporaryDirectory() + "cutover-state-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let s = PersistedState(routes: ["r": .init(phase: .dualLegacy, mirror: .async, paused: true,
                                                   flip: .init(from: .dualLegacy, to: .dualNew, startedAt: 12.5))],
                               running: .init(pid: 77, since: 1.5))
        try s.save(path: path)
        #expect(try PersistedState.load(path: path) == s)
        #expect(try String(contentsOfFile: path, encoding: .utf8).contains("\"started_at\" : 12.5"))
    }

    @Test func oneProcessHoldsTheStateFileLock() throws {
        let path = NSTemporaryDirectory() + "cutover-lock-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path + ".lock") }
        #expect(StateFileLock.holder(stateFile: path) == nil)
        let first = try StateFileLock(stateFile: path)
        #expect(StateFileLock.holder(stateFile: path) == getpid())
        // flock conflicts between two open file descriptions, even in one process.
        do { _ = try StateFileLock(stateFile: path); Issue.record("locked twice") } catch {
            #expect(error.message.hasPrefix("another cutover process (pid \(getpid()))"), "\(error)")
        }
        first.release()
        #expect(StateFileLock.holder(stateFile: path) == nil)
        _ = try StateFileLock(stateFile: path)
    }

    @Test func transitionsGoOneStepUnlessForced() {
        #expect(throws: Phase.TransitionError.skip(from: .legacy, to: .dualNew)) { try Phase.legacy.transition(to: .dualNew, force: false) }
        #expect(throws: Never.self) { try Phase.legacy.transition(to: .dualNew, force: true) }
        #expect(throws: Phase.TransitionError.same(.new)) { try Phase.new.transition(to: .new, force: true) }
        #expect(throws: Never.self) { try Phase.new.transition(to: .dualNew, force: false) }
    }
}

@Suite struct QueryAnalyzerTests {
    @Test func fingerprintsNormalizesAndFindsSchemas() {
        let a = QueryAnalyzer()
        let x = a.analyze("SELECT * FROM onboarding.candidates c JOIN recruitment.job_titles j ON j.id = c.id WHERE c.name = 'bob'")
        #expect(x.schemas == ["onboarding", "recruitment"])
        #expect(x.normalized?.contains("$1") == true && x.normalized?.contains("bob") == false)
        let y = a.analyze("SELECT * FROM onboarding.candidates c JOIN recruitment.job_titles j ON j.id = c.id WHERE c.name = 'alice'")
        #expect(x.fingerprint == y.fingerprint && x.fingerprint != nil)
        _ = a.analyze("SELECT * FROM onboarding.candidates c JOIN recruitment.job_titles j ON j.id = c.id WHERE c.name = 'bob'")
        #expect(a.parses == 2) // the repeat came from the cache
        #expect(a.analyze("SELEC garbage").parseError != nil)
    }

    @Test func crossSchemaDetectorIgnoresOwnSchemaAndLiterals() {
        let a = QueryAnalyzer()
        let d = CrossSchemaDetector(knownSchemas: ["onboarding", "recruitment", "public"])
        #expect(d.foreignSchemas(in: "SELECT * FROM recruitment.job_titles", own: "onboarding", analyzer: a) == ["recruitment"])
        #expect(d.foreignSchemas(in: "SELECT * FROM onboarding.candidates", own: "onboarding", analyzer: a).isEmpty)
        #expect(d.foreignSchemas(in: "SELECT 'recruitment.x'", own: "onboarding", analyzer: a).isEmpty)
        #expect(d.foreignSchemas(in: "SELECT * FROM candidates", own: "onboarding", analyzer: a).isEmpty)
        // Only texts that mention another schema followed by a dot reach the parser (here: two of four).
        #expect(a.parses == 2)
    }
}

@Suite struct SQLBytesTests {
    @Test func everyKeywordIsRecognizedWhateverItsCase() {
        for (word, keyword) in SQLBytes.keywords {
            for spelling in [String(decoding: word, as: UTF8.self), String(decoding: word, as: UTF8.self).lowercased()] {
                let text = "  /* c */ -- x\n (\(spelling) rest"
                #expect(withBody(Array(text.utf8)) { SQLBytes.leadingKeyword($0) } == keyword, "\(spelling)")
            }
        }
        #expect(withBody(Array("SELECT 1".utf8)) { SQLBytes.leadingKeyword($0) } == .select)
        #expect(withBody(Array("SETTING".utf8)) { SQLBytes.leadingKeyword($0) } == .other)
        #expect(withBody(Array("".utf8)) { SQLBytes.leadingKeyword($0) } == .other)
    }

    @Test func advisoryLocksAndBytesAreFound() {
        #expect(withBody(Array("select PG_Advisory_Lock(1)".utf8)) { SQLBytes.mayTakeAdvisoryLock($0) })
        #expect(!withBody(Array("select * from pgbench_accounts where aid = 1".utf8)) { SQLBytes.mayTakeAdvisoryLock($0) })
        #expect(withBody(Array("a.b".utf8)) { SQLBytes.containsByte($0, 0x2E) })
        #expect(withBody(Array("x FROM Recruitment.t".utf8)) { SQLBytes.contains($0, lowercased: Array("recruitment.".utf8)) })
    }
}

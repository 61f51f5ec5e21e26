// LockStep transcripts: sync mirroring as events in, actions out, with injected time and no sockets.
import Testing
import CutoverProtocol
@testable import CutoverCore

private func q(_ text: String) -> [UInt8] { var w = ByteWriter(); FrontendMessage.query(text).encode(into: &w); return w.bytes }

/// Client bytes holding one simple Query, as the session reports it.
private func send(_ m: inout LockStep, _ text: String, status: TransactionStatus = .idle, now: UInt64 = 0) -> [LockStep.Action] {
    let bytes = q(text)
    var unit = WorkUnit(statements: [text])
    unit.commits = SQLText.classify(text) == .commit
    return m.clientSent(bytes, units: [(bytes.count, unit)], flushAt: nil, status: status, now: now)
}

@Suite struct LockStepTests {
    @Test func aStatementRunsOnTheLeaderThenTheFollowerBeforeTheClientHearsBack() {
        var m = LockStep()
        let select = q("SELECT 1")
        #expect(send(&m, "SELECT 1") == [.unitStarted(WorkUnit(statements: ["SELECT 1"]), followerSent: false), .toLeader(select)])
        #expect(m.leaderReady(status: .idle, now: 5) == [.holdClient, .followerStarted, .toFollower(select)])
        #expect(m.stage == .followerAfterLeader && m.stageStartedAt == 5)
        #expect(m.followerReady(status: .idle, now: 7) == [.releaseClient(asIdle: false, commitError: nil)])
        #expect(m.isQuiet)
    }

    @Test func aUnitArrivingInPiecesKeepsTheClientReadUntilItIsWhole() {
        var m = LockStep()
        let big = q("SELECT '" + String(repeating: "x", count: 1000) + "'")
        // The first read ends mid-message: nothing can run, and only more of the client's bytes can help.
        #expect(m.clientSent(Array(big[..<300]), units: [], flushAt: nil, status: .idle, now: 0) == [])
        #expect(m.awaitsRestOfUnit && m.queuedBytes == 300)
        let unit = WorkUnit(statements: ["SELECT 'x…'"])
        #expect(m.clientSent(Array(big[300...]), units: [(big.count - 300, unit)], flushAt: nil, status: .idle, now: 1)
                == [.unitStarted(unit, followerSent: false), .toLeader(big)])
        #expect(!m.awaitsRestOfUnit)
        // The next one arrives in part while this one is in flight: the unit in flight will move things on.
        #expect(m.clientSent(Array(big[..<10]), units: [], flushAt: nil, status: .idle, now: 2) == [])
        #expect(!m.awaitsRestOfUnit)
        #expect(m.leaderReady(status: .idle, now: 3) == [.holdClient, .followerStarted, .toFollower(big)])
        #expect(m.followerReady(status: .idle, now: 4) == [.releaseClient(asIdle: false, commitError: nil)])
        #expect(m.awaitsRestOfUnit, "now only its rest is awaited")
    }

    @Test func aUnitCancelledOnTheLeaderIsNotRunOnTheFollower() {
        var m = LockStep()
        let sleep = q("SELECT pg_sleep(30)")
        _ = send(&m, "SELECT pg_sleep(30)", status: .inTransaction)
        // The follower gets a statement failing as a cancel does: its transaction ends up aborted like the
        // leader's, at once, instead of sleeping what the client cancelled.
        #expect(m.leaderReady(status: .failedTransaction, cancelled: 0, now: 1) == [.holdClient, .followerStarted, .toFollower(LockStep.cancelledOnLeader)])
        #expect(m.followerReady(status: .failedTransaction, now: 2) == [.releaseClient(asIdle: false, commitError: nil)])
        // An autocommit write cancelled on the leader: the follower runs the failing stand-in, then rolls back.
        _ = send(&m, "UPDATE t SET v = pg_sleep(30)::text")
        #expect(m.leaderReady(status: .failedTransaction, cancelled: 0, now: 3)
                == [.holdClient, .followerStarted, .toFollowerInternal(LockStep.begin), .toFollower(LockStep.cancelledOnLeader)])
        #expect(m.followerReady(status: .failedTransaction, now: 4) == [.toFollowerInternal(LockStep.rollback)])
        // A unit of several statements (a savepoint, then the cancelled one) or an extended unit: what ran
        // before the cancel must run on the follower too, so it gets the unit itself.
        _ = m.followerInternalReady(commitOutcome: nil, now: 5)
        _ = m.leaderInternalReady(commitOutcome: nil, status: .idle, now: 5)
        let two = q("SAVEPOINT a; SELECT pg_sleep(30)")
        _ = send(&m, "SAVEPOINT a; SELECT pg_sleep(30)", status: .inTransaction)
        #expect(m.leaderReady(status: .failedTransaction, cancelled: 0, now: 5) == [.holdClient, .followerStarted, .toFollower(two)])
        _ = m.followerReady(status: .failedTransaction, now: 5)
        #expect(LockStep.followerCopy(of: q("CALL p()"), unit: WorkUnit(statements: ["CALL p()"]), cancelled: 0, partSentAhead: false) == q("CALL p()"),
                "a procedure may commit inside itself")
        // An extended pipeline: the statements before the cancelled one run on the follower, the cancelled
        // one's Execute is replaced by the proxy's own statement (the client's unnamed one stays).
        var w = ByteWriter()
        for text in ["INSERT INTO t VALUES (1)", "SELECT pg_sleep(30)"] {
            w.beginMessage(UInt8(ascii: "P")); w.writeCString(""); w.writeCString(text); w.writeBytes([0, 0]); w.endMessage()
            w.beginMessage(UInt8(ascii: "B")); w.writeCString(""); w.writeCString(""); w.writeBytes([0, 0, 0, 0, 0, 0]); w.endMessage()
            w.beginMessage(UInt8(ascii: "E")); w.writeCString(""); w.writeBytes([0, 0, 0, 0]); w.endMessage()
        }
        let pipeline = w.bytes + [UInt8(ascii: "S"), 0, 0, 0, 4]
        let pipelineUnit = WorkUnit(statements: ["INSERT INTO t VALUES (1)", "SELECT pg_sleep(30)"])
        let copy = LockStep.followerCopy(of: pipeline, unit: pipelineUnit, cancelled: 1, partSentAhead: false)
        let text = String(decoding: copy, as: UTF8.self)
        #expect(text.contains("INSERT INTO t VALUES (1)") && text.contains("SELECT pg_sleep(30)") && text.contains("cutover_cancelled"))
        #expect(copy.count == pipeline.count - 10 + LockStep.cancelledExecute.count, "only the second Execute is replaced")
        // Part of it already went to the follower (a Flush): sent as it is.
        #expect(LockStep.followerCopy(of: pipeline, unit: pipelineUnit, cancelled: 1, partSentAhead: true) == pipeline)
        // Not cancelled: the unit itself, as always.
        _ = send(&m, "SELECT pg_sleep(30)", status: .inTransaction)
        #expect(m.leaderReady(status: .inTransaction, now: 7) == [.holdClient, .followerStarted, .toFollower(sleep)])
    }

    @Test func commitGoesToTheFollowerFirst() {
        var m = LockStep()
        let commit = q("COMMIT")
        #expect(send(&m, "COMMIT", status: .inTransaction) == [.unitStarted(WorkUnit(statements: ["COMMIT"], commits: true), followerSent: false),
                                                               .followerStarted, .toFollower(commit)])
        #expect(m.followerReady(status: .inTransaction, now: 1) == [.leaderStarted, .toLeader(commit)])
        #expect(m.leaderReady(status: .idle, now: 2) == [])
        #expect(m.isQuiet)
    }

    @Test func anAutocommitWriteIsWrappedInAnImplicitTransaction() {
        var m = LockStep()
        let update = q("UPDATE t SET v = v * 2 WHERE id = 1")
        var wrapped = WorkUnit(statements: ["UPDATE t SET v = v * 2 WHERE id = 1"])
        wrapped.wrappedInTransaction = true // its answers end inside the proxy's transaction (KeptWriteCheck)
        #expect(send(&m, "UPDATE t SET v = v * 2 WHERE id = 1") == [
            .unitStarted(wrapped, followerSent: false),
            .toLeaderInternal(LockStep.begin), .toLeader(update)])
        #expect(m.leaderReady(status: .inTransaction, now: 1) == [.holdClient, .followerStarted, .toFollowerInternal(LockStep.begin), .toFollower(update)])
        #expect(m.followerReady(status: .inTransaction, now: 2) == [.toFollowerInternal(LockStep.commit)])
        #expect(m.followerInternalReady(commitOutcome: StatementOutcome(tag: "COMMIT"), now: 3) == [.toLeaderInternal(LockStep.commit)])
        #expect(m.leaderInternalReady(commitOutcome: StatementOutcome(tag: "COMMIT"), status: .idle, now: 4)
                == [.wrappedWriteEnded(leaderKept: true, followerKept: true, followerCommitError: nil), .releaseClient(asIdle: true, commitError: nil)])
        #expect(m.isQuiet)
    }

    @Test func aWrappedWriteWhoseCommitFailsOnTheFollowerOnlyIsKeptOnTheLeaderOnly() {
        // A deferred constraint only the new side has: the statement succeeds there, its COMMIT does not.
        var m = LockStep()
        _ = send(&m, "INSERT INTO t VALUES (1)")
        _ = m.leaderReady(status: .inTransaction, now: 1)
        _ = m.followerReady(status: .inTransaction, now: 2)
        let refused = StatementOutcome(sqlState: "23503", error: "violates foreign key constraint")
        #expect(m.followerInternalReady(commitOutcome: refused, now: 3) == [.toLeaderInternal(LockStep.commit)])
        #expect(m.leaderInternalReady(commitOutcome: StatementOutcome(tag: "COMMIT"), status: .idle, now: 4)
                == [.wrappedWriteEnded(leaderKept: true, followerKept: false, followerCommitError: refused), .releaseClient(asIdle: true, commitError: nil)])
    }

    @Test func aFailedWriteRollsBackOnBothSides() {
        var m = LockStep()
        _ = send(&m, "INSERT INTO t VALUES (1)")
        _ = m.leaderReady(status: .failedTransaction, now: 1)
        #expect(m.followerReady(status: .failedTransaction, now: 2) == [.toFollowerInternal(LockStep.rollback)])
        #expect(m.followerInternalReady(commitOutcome: StatementOutcome(tag: "ROLLBACK"), now: 3) == [.toLeaderInternal(LockStep.rollback)])
        let failed = StatementOutcome(sqlState: "40001", error: "could not serialize")
        #expect(m.leaderInternalReady(commitOutcome: failed, status: .idle, now: 4)
                == [.wrappedWriteEnded(leaderKept: false, followerKept: false, followerCommitError: nil), .releaseClient(asIdle: true, commitError: failed)])
    }

    @Test func insideATransactionWritesAreNotWrapped() {
        var m = LockStep()
        let update = q("UPDATE t SET v = 1")
        #expect(send(&m, "UPDATE t SET v = 1", status: .inTransaction).last == .toLeader(update))
        #expect(m.stage == .leaderFirst(update))
    }

    @Test func unitsQueueBehindTheOneInFlight() {
        var m = LockStep()
        _ = send(&m, "SELECT 1")
        #expect(send(&m, "SELECT 2") == []) // pipelined: waits its turn
        _ = m.leaderReady(status: .idle, now: 1)
        let next = m.followerReady(status: .idle, now: 2)
        #expect(next == [.releaseClient(asIdle: false, commitError: nil),
                         .unitStarted(WorkUnit(statements: ["SELECT 2"]), followerSent: false), .toLeader(q("SELECT 2"))])
    }

    @Test func losingTheFollowerMidUnitReleasesTheClientAndFlushesTheQueue() {
        var m = LockStep()
        _ = send(&m, "SELECT 1")
        _ = send(&m, "SELECT 2")
        _ = m.leaderReady(status: .idle, now: 1)
        #expect(m.followerGone(status: .idle, now: 2) == [.releaseClient(asIdle: false, commitError: nil), .toLeader(q("SELECT 2"))])
        #expect(m.isQuiet && !m.hasFollower)
    }

    @Test func losingTheFollowerDuringAnImplicitTransactionCommitsOnTheLeader() {
        var m = LockStep()
        _ = send(&m, "DELETE FROM t")
        _ = m.leaderReady(status: .inTransaction, now: 1)
        #expect(m.followerGone(status: .inTransaction, now: 2) == [.toLeaderInternal(LockStep.commit)])
        #expect(m.leaderInternalReady(commitOutcome: StatementOutcome(tag: "COMMIT"), status: .idle, now: 3)
                == [.releaseClient(asIdle: true, commitError: nil)])
    }

    @Test func copyFromStdinStreamsToBothSides() {
        var m = LockStep()
        let copy = "COPY t FROM STDIN"
        #expect(send(&m, copy).suffix(2) == [.toLeader(q(copy)), .toFollower(q(copy))])
        let data: [UInt8] = [0x64, 0, 0, 0, 6, 0x31, 0x0A]
        #expect(m.clientSent(data, units: [], flushAt: nil, status: .idle, now: 1) == [.toLeader(data), .toFollower(data)])
        #expect(m.leaderReady(status: .idle, now: 2) == [])
        #expect(m.isQuiet)
    }
}

@Suite struct LockStepReviewTests {
    @Test func losingTheFollowerWhileTheLeaderRunsDoesNotHoldTheClient() {
        var m = LockStep()
        _ = send(&m, "SELECT pg_sleep(2)")
        #expect(m.followerGone(status: .idle, now: 1) == [])
        #expect(m.leaderReady(status: .idle, now: 2) == []) // no .holdClient: nobody would release it
        #expect(m.isQuiet)
    }

    @Test func aFlushQueuedBehindARunningUnitGoesOutWhenItIsDone() {
        var m = LockStep()
        _ = send(&m, "SELECT pg_sleep(0.3)")
        var parse = ByteWriter()
        parse.beginMessage(FrontendMessageID.parse.rawValue); parse.writeCString(""); parse.writeCString("SELECT 1"); parse.writeInt16(0); parse.endMessage()
        parse.beginMessage(FrontendMessageID.flush.rawValue); parse.endMessage()
        let partial = parse.bytes
        #expect(m.clientSent(partial, units: [], flushAt: partial.count, status: .idle, now: 1) == [])
        _ = m.leaderReady(status: .idle, now: 2)
        #expect(m.followerReady(status: .idle, now: 3) == [.releaseClient(asIdle: false, commitError: nil), .toLeader(partial), .toFollower(partial)])
        #expect(m.isQuiet)
    }
}

// Pure tests of which divergences leave the sides' data apart (KeptWriteCheck): units fed in order, no sockets.
import Testing
import CutoverProtocol
@testable import CutoverCore

/// A unit as the tracker records it: `writes` for DML/COPY, `ddl` for a statement that is neither that nor a read.
private func unit(_ statements: String..., writes: Bool = false, ddl: Bool = false, wrapped: Bool = false) -> WorkUnit {
    var u = WorkUnit(statements: statements)
    u.writes = writes
    u.mayChangeData = writes || ddl
    u.wrappedInTransaction = wrapped
    return u
}

private func ok(_ tag: String, rows: Int = 0, hash: UInt64 = 0) -> StatementOutcome { StatementOutcome(tag: tag, rows: rows, rowHash: hash) }
private func failed(_ state: String) -> StatementOutcome { StatementOutcome(sqlState: state, error: "failed") }

/// Feeds one unit to `check` the way the session does (differences computed from the two digests).
private func feed(_ check: inout KeptWriteCheck, _ u: WorkUnit, leader: [StatementOutcome], _ ls: TransactionStatus,
                  follower: [StatementOutcome], _ fs: TransactionStatus) -> String? {
    let l = UnitDigest(outcomes: leader, status: ls), f = UnitDigest(outcomes: follower, status: fs)
    return check.compared(u, leader: l, follower: f, differences: UnitDigest.differences(leader: l, follower: f))
}

@Suite struct KeptWriteCheckTests {
    @Test func autocommitWriteCancelledOnTheLeaderOnlyIsKeptByTheFollower() {
        var c = KeptWriteCheck()
        let reason = feed(&c, unit("UPDATE t SET x = 1", writes: true), leader: [failed("57014")], .idle, follower: [ok("UPDATE 5")], .idle)
        #expect(reason == "a transaction that wrote was kept on the follower only (error_mismatch on statement 1 of a unit)")
        #expect(c.isQuiet)
    }

    @Test func writeFailingOnBothSidesKeepsNothing() {
        var c = KeptWriteCheck()
        #expect(feed(&c, unit("INSERT INTO t VALUES (1)", writes: true), leader: [failed("23505")], .idle, follower: [failed("23503")], .idle) == nil)
    }

    @Test func differentRowCountsCommittedOnBothSidesAreKept() {
        var c = KeptWriteCheck()
        #expect(feed(&c, unit("BEGIN"), leader: [ok("BEGIN")], .inTransaction, follower: [ok("BEGIN")], .inTransaction) == nil)
        #expect(feed(&c, unit("UPDATE t SET x = 2 WHERE y < 5", writes: true), leader: [ok("UPDATE 3")], .inTransaction,
                     follower: [ok("UPDATE 2")], .inTransaction) == nil) // not kept yet: the transaction is open
        #expect(!c.isQuiet)
        #expect(feed(&c, unit("COMMIT"), leader: [ok("COMMIT")], .idle, follower: [ok("COMMIT")], .idle)
                == "a write answered differently was kept (command_tag on statement 1 of a unit)")
    }

    @Test func differenceRolledBackOnBothSidesIsNotKept() {
        var c = KeptWriteCheck()
        _ = feed(&c, unit("BEGIN"), leader: [ok("BEGIN")], .inTransaction, follower: [ok("BEGIN")], .inTransaction)
        _ = feed(&c, unit("INSERT INTO t VALUES (1)", writes: true), leader: [failed("23505")], .failedTransaction,
                 follower: [ok("INSERT 0 1")], .inTransaction)
        #expect(feed(&c, unit("ROLLBACK"), leader: [ok("ROLLBACK")], .idle, follower: [ok("ROLLBACK")], .idle) == nil)
        #expect(c.isQuiet)
    }

    @Test func commitOfAFailedTransactionKeepsNothingButTheOtherSideCommits() {
        var c = KeptWriteCheck()
        _ = feed(&c, unit("INSERT INTO t VALUES (1)", writes: true), leader: [failed("23505")], .failedTransaction,
                 follower: [ok("INSERT 0 1")], .inTransaction)
        // PostgreSQL answers COMMIT in a failed transaction with the tag ROLLBACK.
        let reason = feed(&c, unit("COMMIT"), leader: [ok("ROLLBACK")], .idle, follower: [ok("COMMIT")], .idle)
        #expect(reason?.hasPrefix("a transaction that wrote was kept on the follower only") == true)
    }

    @Test func commitFailingOnOneSideOfAWritingTransaction() {
        var c = KeptWriteCheck()
        _ = feed(&c, unit("INSERT INTO t VALUES (1)", writes: true), leader: [ok("INSERT 0 1")], .inTransaction,
                 follower: [ok("INSERT 0 1")], .inTransaction)
        #expect(feed(&c, unit("COMMIT"), leader: [ok("COMMIT")], .idle, follower: [failed("40001")], .idle)
                == "a transaction that wrote was kept on the leader only")
    }

    @Test func aTransactionThatOnlyTruncatedCommittedOnOneSideOnly() {
        var c = KeptWriteCheck()
        _ = feed(&c, unit("BEGIN"), leader: [ok("BEGIN")], .inTransaction, follower: [ok("BEGIN")], .inTransaction)
        _ = feed(&c, unit("TRUNCATE t", ddl: true), leader: [ok("TRUNCATE TABLE")], .inTransaction, follower: [ok("TRUNCATE TABLE")], .inTransaction)
        #expect(feed(&c, unit("COMMIT"), leader: [ok("COMMIT")], .idle, follower: [failed("40001")], .idle)
                == "a transaction that wrote was kept on the leader only")
    }

    @Test func readOnlyTransactionsAndReadDifferencesAreNotKept() {
        var c = KeptWriteCheck()
        // A read answering differently (now(), a sequence) changes no data.
        #expect(feed(&c, unit("SELECT now()"), leader: [ok("SELECT 1", rows: 1, hash: 1)], .idle,
                     follower: [ok("SELECT 1", rows: 1, hash: 2)], .idle) == nil)
        // A COMMIT that differs in a transaction that only read.
        _ = feed(&c, unit("SELECT 1/0"), leader: [failed("22012")], .failedTransaction, follower: [ok("SELECT 1", rows: 1)], .inTransaction)
        #expect(feed(&c, unit("COMMIT"), leader: [ok("ROLLBACK")], .idle, follower: [ok("COMMIT")], .idle) == nil)
        #expect(c.isQuiet)
    }

    @Test func ddlAnsweredDifferentlyIsKept() {
        var c = KeptWriteCheck()
        // DDL is not among the tracker's writes, but a CREATE that ran on one side only changed that side.
        #expect(feed(&c, unit("CREATE TABLE t (x int)"), leader: [failed("42P07")], .idle, follower: [ok("CREATE TABLE")], .idle)
                == "a transaction that wrote was kept on the follower only (error_mismatch on statement 1 of a unit)")
        // Both succeeded, answering differently (a CREATE TABLE AS counting different rows): kept on both.
        #expect(feed(&c, unit("CREATE TABLE u AS SELECT * FROM t"), leader: [ok("SELECT 3")], .idle, follower: [ok("SELECT 2")], .idle)
                == "a write answered differently was kept (command_tag on statement 1 of a unit)")
    }

    @Test func syncModesWrappedWriteEndsWithTheProxysCommit() {
        var c = KeptWriteCheck()
        // The leader failed: the proxy rolls the follower back too, whatever it answered.
        #expect(feed(&c, unit("UPDATE t SET x = 1", writes: true, wrapped: true), leader: [failed("57014")], .failedTransaction,
                     follower: [ok("UPDATE 5")], .inTransaction) == nil)
        #expect(c.isQuiet)
        // The follower failed: the leader's write is committed alone.
        #expect(feed(&c, unit("UPDATE t SET x = 1", writes: true, wrapped: true), leader: [ok("UPDATE 5")], .inTransaction,
                     follower: [failed("23505")], .failedTransaction)?.hasPrefix("a transaction that wrote was kept on the leader only") == true)
        // Both succeeded alike: nothing to report, and nothing carried into the next transaction.
        #expect(feed(&c, unit("UPDATE t SET x = 1", writes: true, wrapped: true), leader: [ok("UPDATE 5")], .inTransaction,
                     follower: [ok("UPDATE 5")], .inTransaction) == nil)
        #expect(c.isQuiet)
    }

    @Test func multiStatementQueryRolledBackByItsLastStatement() {
        var c = KeptWriteCheck()
        // An implicit transaction: the failing last statement rolls the whole query back on the leader.
        let u = unit("INSERT INTO t VALUES (1); SELECT 1/x FROM t", writes: true) // one Query: one text
        let reason = feed(&c, u, leader: [ok("INSERT 0 1"), failed("22012")], .idle,
                          follower: [ok("INSERT 0 1"), ok("SELECT 1", rows: 1)], .idle)
        #expect(reason?.hasPrefix("a transaction that wrote was kept on the follower only") == true)
    }

    @Test func aReadDifferingLaterInAMultiStatementQueryIsNotAWrite() {
        var c = KeptWriteCheck()
        let u = unit("INSERT INTO t VALUES (1); SELECT now()", writes: true)
        #expect(feed(&c, u, leader: [ok("INSERT 0 1"), ok("SELECT 1", rows: 1, hash: 1)], .idle,
                     follower: [ok("INSERT 0 1"), ok("SELECT 1", rows: 1, hash: 2)], .idle) == nil)
    }

    @Test func aWholeTransactionInOneQueryCancelledOnTheLeaderOnly() {
        var c = KeptWriteCheck()
        // The tracker's first-keyword look sees BEGIN: not a write. The split text shows the INSERT.
        let u = unit("BEGIN; INSERT INTO t VALUES (1); COMMIT")
        let reason = feed(&c, u, leader: [ok("BEGIN"), failed("57014")], .idle,
                          follower: [ok("BEGIN"), ok("INSERT 0 1"), ok("COMMIT")], .idle)
        #expect(reason?.hasPrefix("a transaction that wrote was kept on the follower only") == true, "\(reason ?? "nil")")
    }

    @Test func rollingBackToASavepointSetBeforeTheDifferenceUndoesIt() {
        var c = KeptWriteCheck()
        _ = feed(&c, unit("BEGIN"), leader: [ok("BEGIN")], .inTransaction, follower: [ok("BEGIN")], .inTransaction)
        _ = feed(&c, unit("SAVEPOINT before_insert"), leader: [ok("SAVEPOINT")], .inTransaction, follower: [ok("SAVEPOINT")], .inTransaction)
        _ = feed(&c, unit("INSERT INTO t VALUES (1)", writes: true), leader: [failed("23505")], .failedTransaction,
                 follower: [ok("INSERT 0 1")], .inTransaction)
        _ = feed(&c, unit("ROLLBACK TO SAVEPOINT before_insert"), leader: [ok("ROLLBACK")], .inTransaction,
                 follower: [ok("ROLLBACK")], .inTransaction)
        #expect(feed(&c, unit("COMMIT"), leader: [ok("COMMIT")], .idle, follower: [ok("COMMIT")], .idle) == nil)
    }

    @Test func rollingBackToASavepointSetAfterTheDifferenceKeepsIt() {
        var c = KeptWriteCheck()
        _ = feed(&c, unit("BEGIN"), leader: [ok("BEGIN")], .inTransaction, follower: [ok("BEGIN")], .inTransaction)
        _ = feed(&c, unit("UPDATE t SET x = 1", writes: true), leader: [ok("UPDATE 3")], .inTransaction, follower: [ok("UPDATE 2")], .inTransaction)
        _ = feed(&c, unit("SAVEPOINT \"Later\""), leader: [ok("SAVEPOINT")], .inTransaction, follower: [ok("SAVEPOINT")], .inTransaction)
        _ = feed(&c, unit("ROLLBACK TO \"Later\""), leader: [ok("ROLLBACK")], .inTransaction, follower: [ok("ROLLBACK")], .inTransaction)
        #expect(feed(&c, unit("COMMIT"), leader: [ok("COMMIT")], .idle, follower: [ok("COMMIT")], .idle)?
                    .hasPrefix("a write answered differently was kept") == true)
    }

    @Test func pgjdbcAutosaveSendsItsSavepointInTheSameUnitAsTheStatement() {
        var c = KeptWriteCheck()
        _ = feed(&c, unit("BEGIN"), leader: [ok("BEGIN")], .inTransaction, follower: [ok("BEGIN")], .inTransaction)
        // The savepoint before the differing UPDATE predates the difference.
        _ = feed(&c, unit("SAVEPOINT PGJDBC_AUTOSAVE", "UPDATE t SET x = 1", writes: true),
                 leader: [ok("SAVEPOINT"), ok("UPDATE 3")], .inTransaction, follower: [ok("SAVEPOINT"), ok("UPDATE 2")], .inTransaction)
        // The next statement's savepoint comes after it: rolling back to it keeps the UPDATE's difference.
        _ = feed(&c, unit("SAVEPOINT PGJDBC_AUTOSAVE", "INSERT INTO t VALUES (1)", writes: true),
                 leader: [ok("SAVEPOINT"), failed("23505")], .failedTransaction, follower: [ok("SAVEPOINT"), failed("23505")], .failedTransaction)
        _ = feed(&c, unit("ROLLBACK TO SAVEPOINT PGJDBC_AUTOSAVE"), leader: [ok("ROLLBACK")], .inTransaction,
                 follower: [ok("ROLLBACK")], .inTransaction)
        #expect(feed(&c, unit("COMMIT"), leader: [ok("COMMIT")], .idle, follower: [ok("COMMIT")], .idle)?
                    .hasPrefix("a write answered differently was kept (command_tag on statement 2") == true)
    }

    @Test func readsSavepointCommands() {
        #expect(SQLText.savepointCommand("SAVEPOINT a") ?? (.release, "") == (.savepoint, "a"))
        #expect(SQLText.savepointCommand("savepoint A;") ?? (.release, "") == (.savepoint, "a"))
        #expect(SQLText.savepointCommand("SAVEPOINT \"A b\"") ?? (.release, "") == (.savepoint, "A b"))
        #expect(SQLText.savepointCommand("RELEASE SAVEPOINT x") ?? (.savepoint, "") == (.release, "x"))
        #expect(SQLText.savepointCommand("release x") ?? (.savepoint, "") == (.release, "x"))
        #expect(SQLText.savepointCommand("ROLLBACK WORK TO SAVEPOINT y") ?? (.savepoint, "") == (.rollbackTo, "y"))
        #expect(SQLText.savepointCommand("rollback to y") ?? (.savepoint, "") == (.rollbackTo, "y"))
        #expect(SQLText.savepointCommand("ROLLBACK") == nil)
        #expect(SQLText.savepointCommand("ROLLBACK PREPARED 'x'") == nil)
        #expect(SQLText.savepointCommand("SELECT 1") == nil)
    }

    @Test func classifiesStatementsThatCannotChangeData() {
        #expect(SQLText.cannotChangeData("COPY t TO STDOUT"))
        #expect(SQLText.cannotChangeData("copy (select 1) to stdout with csv"))
        #expect(!SQLText.cannotChangeData("COPY t FROM '/x/stdout.csv'"))
        #expect(SQLText.cannotChangeData("EXPLAIN SELECT 1"))
        #expect(SQLText.cannotChangeData("EXPLAIN ANALYZE SELECT 1"))
        #expect(!SQLText.cannotChangeData("EXPLAIN ANALYZE UPDATE t SET x = 1"))
        #expect(!SQLText.cannotChangeData("SELECT * INTO copy_of_t FROM t"))
        #expect(SQLText.cannotChangeData("  /* c */ select 1"))
        #expect(SQLText.cannotChangeData("(SELECT 1) UNION (SELECT 2)"))
        #expect(SQLText.cannotChangeData("WITH a AS (SELECT 1) SELECT * FROM a"))
        #expect(SQLText.cannotChangeData("COMMIT"))
        #expect(SQLText.cannotChangeData("SHOW search_path"))
        #expect(SQLText.cannotChangeData(""))
        #expect(!SQLText.cannotChangeData("WITH a AS (DELETE FROM t RETURNING *) SELECT * FROM a"))
        #expect(!SQLText.cannotChangeData("insert into t values (1)"))
        #expect(!SQLText.cannotChangeData("-- x\nTRUNCATE t"))
        #expect(!SQLText.cannotChangeData("CALL p()"))
        #expect(!SQLText.cannotChangeData("ALTER TABLE t ADD COLUMN y int"))
        #expect(!SQLText.cannotChangeData("COPY t FROM STDIN"))
    }
}

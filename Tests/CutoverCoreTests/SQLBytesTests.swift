// Leading-keyword edge cases: identifiers that start with a keyword, comments, the longest keyword.
import Testing
@testable import CutoverCore

@Suite struct SQLBytesIdentifierTests {
    @Test func aKeywordFollowedByAnIdentifierCharacterIsNotAKeyword() {
        #expect(SQLBytes.leadingKeyword("SET_x = 1") == .other)
        #expect(SQLBytes.leadingKeyword("commit2") == .other)
        #expect(SQLBytes.leadingKeyword("set search_path = a") == .set)
        #expect(SQLBytes.leadingKeyword("Deallocate all") == .deallocate)
        #expect(SQLBytes.leadingKeyword("DEALLOCATEX") == .other)
        #expect(SQLBytes.leadingKeyword("  /* c */ (UPDATE t") == .update)
        #expect(SQLBytes.leadingKeyword("/* unterminated") == .other)
    }

    @Test func selectIsRecognizedAndAdvisoryLocksNeedACall() {
        #expect(SQLBytes.leadingKeyword("select 1") == .select)
        #expect(SQLBytes.leadingKeyword("SELECT") == .select)
        #expect(SQLBytes.leadingKeyword("(SELECT\n1)") == .select)
        #expect(SQLBytes.leadingKeyword("SELECTX") == .other)
        #expect(SQLBytes.leadingKeyword("select_1") == .other)
        #expect(!LeadingKeyword.select.mayBeDDLOrCall && LeadingKeyword.other.mayBeDDLOrCall && !LeadingKeyword.commit.mayBeDDLOrCall)
        #expect(SQLBytes.leadingKeyword("SET x = 1") == .set)
        func advisory(_ s: String) -> Bool { var t = s; return t.withUTF8 { SQLBytes.mayTakeAdvisoryLock(UnsafeRawBufferPointer($0)) } }
        #expect(advisory("SELECT pg_advisory_lock(42)"))
        #expect(advisory("select PG_TRY_ADVISORY_LOCK (1, 2)"))
        #expect(!advisory("SELECT advisory FROM notes"))
        #expect(!advisory("SELECT count(*) FROM advisories_v"))
    }

    @Test func aWithThatModifiesDataIsAWriteAndOneThatReadsIsNot() {
        #expect(SQLBytes.leadingKeyword("WITH x AS (SELECT 1) SELECT * FROM x") == .with)
        #expect(SQLBytes.modifiesData("WITH moved AS (DELETE FROM a RETURNING *) INSERT INTO b SELECT * FROM moved"))
        #expect(SQLBytes.modifiesData("with t as (select 1) update accounts set n = n + 1"))
        #expect(!SQLBytes.modifiesData("WITH t AS (SELECT updated_at, deleted FROM a) SELECT * FROM t"))
        #expect(SQLBytes.modifiesData("UPDATE a SET n = 1"))
        #expect(!SQLBytes.modifiesData("SELECT 1"))
        var unit = WorkUnit()
        unit.statements = ["WITH t AS (SELECT 1) UPDATE a SET n = 2"]
        #expect(LockStep.isAutocommitWrite(unit), "sync mirroring wraps it, so COMMIT reaches the follower first")
        unit.statements = ["WITH t AS (SELECT 1) SELECT * FROM t"]
        #expect(!LockStep.isAutocommitWrite(unit))
    }
}

@Suite struct SeveralStatementsTests {
    func check(_ text: String) -> Bool {
        var t = text
        return t.withUTF8 { SQLBytes.mayHoldSeveralStatements(UnsafeRawBufferPointer($0)) }
    }

    @Test func aTrailingSemicolonIsOneStatement() {
        #expect(!check("SELECT abalance FROM pgbench_accounts WHERE aid = 1;"))
        #expect(!check("SELECT 1 ;; \n"))
        #expect(!check("SELECT 1"))
        #expect(check("SELECT 1; INSERT INTO t VALUES (1)"))
        #expect(check("SELECT ';' FROM t"), "a literal errs towards looking")
    }
}

// The verdicts of `cutover verify`: which difference is which, and which are worth a second look.
import Testing
@testable import CutoverCore

@Suite struct VerificationTests {
    let base = TableFingerprint(columns: "id integer, v text", rows: 3, hash: "1:2")

    @Test func verdictsNameTheFirstDifference() {
        var other = base
        #expect(Verification.verdict(legacy: base, new: base) == .match)
        #expect(Verification.verdict(legacy: base, new: nil) == .missingOnNew)
        #expect(Verification.verdict(legacy: nil, new: base) == .onlyOnNew)
        #expect(!TableVerdict.onlyOnNew.isDifference && TableVerdict.missingOnNew.isDifference && !TableVerdict.match.isDifference)
        other.hash = "1:3"
        #expect(Verification.verdict(legacy: base, new: other) == .contentsDiffer)
        other.rows = 4
        #expect(Verification.verdict(legacy: base, new: other) == .rowsDiffer)
        other.columns = "id integer, v character varying(10)"
        #expect(Verification.verdict(legacy: base, new: other) == .columnsDiffer)
        #expect(TableVerdict.rowsDiffer.mayBeTransient && TableVerdict.contentsDiffer.mayBeTransient)
        #expect(!TableVerdict.columnsDiffer.mayBeTransient && !TableVerdict.missingOnNew.mayBeTransient)
    }

    @Test func everyTableOfEitherSideIsListedOnceInOrder() {
        let rows = Verification.compare(legacy: ["b": base, "a": base], new: ["a": base, "c": base])
        #expect(rows.map(\.table) == ["a", "b", "c"])
        #expect(rows.map(\.verdict) == [.match, .missingOnNew, .onlyOnNew])
    }

    @Test func identifiersAreQuotedAndRowsHashedOverTheGivenColumnsInUTF8() {
        let q = Verification.fingerprintQuery(schema: "my schema", table: "we\"ird", columns: ["id", "Name"])
        #expect(q.contains("FROM \"my schema\".\"we\"\"ird\" t"))
        #expect(q.contains("md5(convert_to(ROW(t.\"id\", t.\"Name\")::text, 'UTF8'))"))
        #expect(Verification.describeColumns(["id", "v"], types: ["id": "integer"]) == "id integer, v (missing)")
    }

    @Test func withTableOnlyTheCopiedTablesSequencesAreSet() {
        let seqs: [(name: String, owner: String?)] = [("a_id_seq", "a"), ("b_id_seq", "b"), ("free_seq", nil)]
        #expect(BackfillPlan.sequencesToSet(seqs, copied: ["a", "b"], wholeSchema: true) == ["a_id_seq", "b_id_seq", "free_seq"])
        #expect(BackfillPlan.sequencesToSet(seqs, copied: ["a"], wholeSchema: false) == ["a_id_seq"])
    }
}

@Suite struct BackfillPlanTests {
    @Test func referencedTablesLoadFirstAndCyclesKeepTheirOrderAtTheEnd() {
        let refs: [(from: String, to: String)] = [("orders", "customers"), ("lines", "orders"), ("lines", "products"),
                                                   ("customers", "customers"), ("a", "b"), ("b", "a"), ("x", "elsewhere")]
        let order = BackfillPlan.loadOrder(["lines", "orders", "customers", "products", "a", "b", "x"], references: refs)
        #expect(order == ["customers", "products", "x", "orders", "lines", "a", "b"])
        #expect(BackfillPlan.loadOrder(["t"], references: []) == ["t"])
    }
}

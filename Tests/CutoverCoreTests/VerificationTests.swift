// The verdicts of `cutover verify`: which difference is which, and which are worth a second look.
import Testing
@testable import CutoverCore

@Suite struct VerificationTests {
    let base = TableFingerprint(columns: "id integer, v text", rows: 3, hash: "1:2")

    @Test func verdictsNameTheFirstDifference() {
        var other = base
        #expect(Verification.verdict(legacy: base, new: base) == .match)
        #expect(Verification.verdict(legacy: base, new: nil) == .missingOnNew)
        #expect(Verification.verdict(legacy: nil, new: base) == .missingOnLegacy)
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
        #expect(rows.map(\.verdict) == [.match, .missingOnNew, .missingOnLegacy])
    }

    @Test func identifiersAreQuoted() {
        let q = Verification.fingerprintQuery(schema: "my schema", table: "we\"ird")
        #expect(q.contains("FROM \"my schema\".\"we\"\"ird\" t"))
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

// The divergence-log bound: a burst per statement, then counted, the count carried by the next record.
import Foundation
import Testing
@testable import CutoverCore

@Suite struct DivergenceLimiterTests {
    @Test func aBurstIsWrittenTheRestCountedAndTheNextRecordCarriesTheCount() {
        var l = DivergenceLimiter(perSecond: 3)
        let burst = (0..<10).map { _ in l.admit("r\0row_count\0fp1", nowMs: 1_000) }
        #expect(burst.compactMap { $0 } == [0, 0, 0], "three written")
        #expect(burst.filter { $0 == nil }.count == 7, "seven left out")
        #expect(l.admit("r\0row_count\0fp2", nowMs: 1_000) == 0, "another statement has its own budget")
        #expect(l.admit("r\0row_count\0fp1", nowMs: 1_200) == nil, "0.6 of a record refilled: still out")
        #expect(l.admit("r\0row_count\0fp1", nowMs: 1_400) == 8, "one refilled; it carries the eight left out")
        #expect(l.admit("r\0row_count\0fp1", nowMs: 1_400) == nil)
    }

    @Test func zeroMeansEveryRecordAndIdleKeysAreForgotten() {
        var all = DivergenceLimiter(perSecond: 0)
        #expect((0..<100).allSatisfy { _ in all.admit("k", nowMs: 5) == 0 })
        var l = DivergenceLimiter(perSecond: 1)
        for i in 0..<DivergenceLimiter.maxKeys { _ = l.admit("old\(i)", nowMs: 0) }
        #expect(l.trackedKeys == DivergenceLimiter.maxKeys)
        _ = l.admit("new", nowMs: 20_000)
        #expect(l.trackedKeys == 1, "keys quiet for 10 s are dropped when the table is full")
    }

    @Test func aRecordSaysHowManyWereLeftOutOnlyWhenSomeWere() {
        var d = Divergence(route: "r", phase: .dualLegacy, mirror: .async, session: 1, applicationName: "", user: "u", kind: .rowCount)
        #expect(!d.jsonLine().contains("suppressed"))
        d.suppressed = 42
        #expect(d.jsonLine().contains("\"suppressed\":42"))
    }
}

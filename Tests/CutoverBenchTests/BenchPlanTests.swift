// Pure tests of `cutover bench`'s plan and report: parsing, $1 substitution, ABBA order, schedule, ratios, summary.
import CutoverBench
import CutoverNative
import Testing

struct BenchPlanTests {
    func plan(_ targets: [String] = ["direct=host=a", "cutover=host=b"], clients: Int = 4, rounds: Int = 4,
              rate: Double? = nil) throws -> BenchPlan {
        try BenchPlan(targets: targets.map { try BenchTarget(parsing: $0) }, clients: clients, duration: 1, rounds: rounds,
                      mode: .simple, statement: try BenchStatement(sql: "SELECT 1", range: nil), rate: rate)
    }

    @Test func targetsParseNameAndConninfoAndRejectBadNames() throws {
        let t = try BenchTarget(parsing: "via_proxy=host=127.0.0.1 port=6432 options='-c a=b'")
        #expect(t.name == "via_proxy" && t.conninfo == "host=127.0.0.1 port=6432 options='-c a=b'")
        #expect(try BenchTarget(parsing: "uri=postgresql://u@h/db?x=1").conninfo == "postgresql://u@h/db?x=1")
        #expect(throws: BenchPlanError.self) { try BenchTarget(parsing: "no equals sign") }
        #expect(throws: BenchPlanError.self) { try BenchTarget(parsing: "=host=a") }
        #expect(throws: BenchPlanError.self) { try BenchTarget(parsing: "bad-name=host=a") }
        #expect(throws: BenchPlanError.self) { try BenchTarget(parsing: "empty=") }
        #expect(throws: BenchPlanError("--target direct is given twice")) { try plan(["direct=host=a", "direct=host=b"]) }
        #expect(throws: BenchPlanError.self) { try plan([]) }
        #expect(throws: BenchPlanError.self) { try plan(clients: 0) }
        #expect(throws: BenchPlanError.self) { try plan(rounds: 0) }
        #expect(throws: BenchPlanError.self) { try plan(rate: 0) }
    }

    @Test func theParameterIsWrittenIntoTheTextOnlyForTheSimpleProtocol() throws {
        let s = try BenchStatement(sql: "SELECT $1::int + $1, '$$' || $tag$x$tag$", range: 1...9)
        #expect(s.parameterCount == 1)
        #expect(s.text(for: .simple, value: 42) == "SELECT 42::int + 42, '$$' || $tag$x$tag$")
        #expect(try BenchStatement(sql: "SELECT 1-$1", range: -5...5).text(for: .simple, value: -5) == "SELECT 1-(-5)", "not the comment 1--5")
        #expect(s.text(for: .extended, value: 42) == s.sql)
        #expect(s.text(for: .prepared, value: 42) == s.sql)
        let plain = try BenchStatement(sql: "SELECT 1", range: nil)
        #expect(plain.parameterCount == 0 && plain.text(for: .simple, value: nil) == "SELECT 1")
        #expect(throws: BenchPlanError("--query uses $12: only one parameter, $1, is supported")) {
            try BenchStatement(sql: "SELECT $12", range: 1...2)
        }
        #expect(throws: BenchPlanError.self) { try BenchStatement(sql: "SELECT $1", range: nil) }
        #expect(throws: BenchPlanError.self) { try BenchStatement(sql: "SELECT 1", range: 1...2) }
        #expect(try BenchStatement.parseRange("-5:10") == -5...10)
        #expect(throws: BenchPlanError.self) { try BenchStatement.parseRange("10:5") }
        #expect(throws: BenchPlanError.self) { try BenchStatement.parseRange("10") }
        #expect(throws: BenchPlanError.self) { try BenchStatement.parseRange("a:b") }
    }

    @Test func roundsAlternateTheTargetsOrder() throws {
        let p = try plan(["a=x", "b=y", "c=z"])
        #expect((0..<4).map { p.order(ofRound: $0) } == [[0, 1, 2], [2, 1, 0], [0, 1, 2], [2, 1, 0]])
    }

    @Test func aFixedRateSpreadsTheClientsOverOneInterval() throws {
        #expect(try plan().scheduledStart(client: 0, k: 0) == nil)
        // 4 clients at 400/s: each 100/s, 10 ms apart, client i offset by i × 2.5 ms.
        let p = try plan(rate: 400)
        #expect(p.scheduledStart(client: 0, k: 0) == 0)
        #expect(p.scheduledStart(client: 1, k: 0) == 2_500_000)
        #expect(p.scheduledStart(client: 3, k: 2) == 27_500_000)
        let all = (0..<4).flatMap { c in (0..<200).compactMap { p.scheduledStart(client: c, k: UInt64($0)) } }
        #expect(all.count == 400 && all.allSatisfy { $0 < 1_000_000_000 }, "the schedule ends with the run")
        #expect((0..<4).map { p.scheduledCount(client: $0) } == [100, 100, 100, 100])
        #expect(p.scheduledStart(client: 3, k: 99) == 997_500_000 && p.scheduledStart(client: 3, k: 100) == nil)
        // A rate so low that one interval outlasts the run: client 0 gets one statement, the others none, no overflow.
        let slow = try plan(rate: 1e-12)
        #expect(slow.scheduledStart(client: 0, k: 0) == 0 && slow.scheduledStart(client: 0, k: 1) == nil)
        #expect(slow.scheduledStart(client: 1, k: 0) == nil && slow.scheduledCount(client: 1) == 0 && slow.scheduledCount(client: 0) == 1)
    }

    @Test func theReportPairsEachRoundWithTheBaselinesAndTakesMedians() throws {
        let p = try plan(rounds: 3)
        func run(_ target: Int, _ round: Int, queries: UInt64, latencyUs: UInt64, errors: UInt64 = 0) -> RunResult {
            var r = RunResult(target: target, round: round)
            r.queries = queries
            r.errors = errors
            r.firstError = errors > 0 ? "division by zero" : nil
            r.elapsedNs = 1_000_000_000
            for _ in 0..<queries { _ = r.latency.record(latencyUs * 1000) }
            return r
        }
        let results = [run(0, 0, queries: 1000, latencyUs: 100), run(1, 0, queries: 900, latencyUs: 120),
                       run(1, 1, queries: 800, latencyUs: 130), run(0, 1, queries: 1000, latencyUs: 100),
                       run(0, 2, queries: 500, latencyUs: 200), run(1, 2, queries: 600, latencyUs: 210, errors: 3)]
        let report = BenchReport(plan: p, results: results)
        let direct = report.targets[0], cutover = report.targets[1]
        #expect(direct.tps == Spread([1000, 1000, 500]) && direct.tps?.median == 1000)
        #expect(direct.tpsRatio == nil && direct.addedP50Us == nil)
        // Per round: 0.9, 0.8, 1.2 → median 0.9; added p50: 20, 30, 10 → median 20.
        #expect(cutover.tpsRatio?.median == 0.9 && cutover.tpsRatio?.min == 0.8 && cutover.tpsRatio?.max == 1.2)
        #expect(cutover.addedP50Us == Spread([20, 30, 10]))
        #expect(cutover.queries == 2300 && cutover.errors == 3 && cutover.firstError == "division by zero")
        // Pooled percentiles: 900 at 120, 800 at 130, 600 at 210 of 2300 → p50 in the 130 µs bucket.
        #expect(cutover.latencyUs["p50"] == 130 && cutover.latencyUs["p99"] == 210)
        #expect(report.summaryLine == "summary: tps_direct=1000 tps_cutover=800 tps_vs_direct_cutover=0.90 added_p50_us_cutover=20.0 "
                + "p99_us_direct=200.0 p99_us_cutover=210.0 errors=3")
        #expect(report.table.rows[1][0...3] == ["cutover", "800 [600–900]", "0.90 [0.80–1.20]", "20.0 [10.0–30.0]"])
        #expect(report.table.rows[0][2] == "-")
    }

    @Test func roundsWithoutAnAnswerAreLeftOutOfTheRatios() throws {
        let p = try plan(rounds: 2)
        var lost = RunResult(target: 1, round: 1)
        lost.errors = 4
        var a0 = RunResult(target: 0, round: 0), a1 = RunResult(target: 0, round: 1), b0 = RunResult(target: 1, round: 0)
        a0.queries = 10; a0.elapsedNs = 1_000_000_000; _ = a0.latency.record(1_000_000)
        a1.queries = 10; a1.elapsedNs = 1_000_000_000; _ = a1.latency.record(1_000_000)
        b0.queries = 5; b0.elapsedNs = 1_000_000_000; _ = b0.latency.record(3_000_000)
        let report = BenchReport(plan: p, results: [a0, b0, lost, a1])
        #expect(report.targets[1].tpsRatio == Spread([0.5]))
        #expect(report.targets[1].tps == Spread([5, 0]))
        #expect(report.summaryLine.hasSuffix("errors=4"))
    }
}

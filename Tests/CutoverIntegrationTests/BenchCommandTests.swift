// Integration: `cutover bench` against real PostgreSQL, directly and through the proxy — results, errors, exit codes.
import Foundation
import Testing

@Suite(.serialized) struct BenchCommandTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    var direct: String {
        "direct=host=127.0.0.1 port=\(f.legacy.port) dbname=hexabuilders user=hexabuilders password=\(FixtureSecrets.legacyPassword)"
    }
    var throughProxy: String { "cutover=" + f.conninfo() }

    func bench(_ args: [String]) throws -> ProcessResult { try f.cli(["bench"] + args) }

    /// The summary line's pairs.
    func summary(_ r: ProcessResult) -> [String: Double] {
        guard let line = r.stdout.split(separator: "\n").last, line.hasPrefix("summary: ") else { return [:] }
        var pairs: [String: Double] = [:]
        for pair in line.dropFirst(9).split(separator: " ") {
            let kv = pair.split(separator: "=")
            if kv.count == 2, let v = Double(kv[1]) { pairs[String(kv[0])] = v }
        }
        return pairs
    }

    @Test func comparesTwoTargetsInAlternatingRoundsAndWritesJSON() throws {
        let json = "\(f.directory)/bench.json"
        let r = try bench(["--target", direct, "--target", throughProxy, "--clients", "2", "--duration", "0.3", "--rounds", "2",
                           "--protocol", "prepared", "--query", "SELECT $1::int", "--param-range", "1:1000", "--json", json])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("round 1/2:  direct ") && r.stdout.contains("round 2/2:  cutover "), "\(r.stdout)")
        let s = summary(r)
        #expect((s["tps_direct"] ?? 0) > 0 && (s["tps_cutover"] ?? 0) > 0, "\(r.stdout)")
        #expect((s["tps_vs_direct_cutover"] ?? 0) > 0 && s["added_p50_us_cutover"] != nil && (s["p99_us_cutover"] ?? 0) > 0)
        #expect(s["errors"] == 0)
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any]
        let targets = doc?["targets"] as? [[String: Any]]
        #expect(targets?.map { $0["name"] as? String } == ["direct", "cutover"])
        #expect((targets?[1]["tps_per_round"] as? [Double])?.count == 2 && doc?["protocol_name"] as? String == "prepared")
    }

    @Test func theSimpleProtocolGetsTheParameterInItsTextAndFailuresAreCounted() throws {
        // 1/($1 - 5) fails for 5 only: so every statement fails when the range is 5:5 and none for 6:9.
        let failing = try bench(["--target", throughProxy, "--clients", "2", "--duration", "0.3", "--rounds", "1",
                                 "--query", "SELECT 1/($1::int - 5)", "--param-range", "5:5"])
        #expect(failing.status == 1, "\(failing.stdout)\(failing.stderr)")
        #expect(failing.stdout.contains("first error: division by zero"), "\(failing.stdout)")
        #expect((summary(failing)["errors"] ?? 0) > 10 && summary(failing)["tps_cutover"] == 0)
        let passing = try bench(["--target", throughProxy, "--clients", "2", "--duration", "0.3", "--rounds", "1",
                                 "--query", "SELECT 1/($1::int - 5)", "--param-range", "6:9"])
        #expect(passing.status == 0 && summary(passing)["errors"] == 0, "\(passing.stdout)")
        #expect((summary(passing)["tps_cutover"] ?? 0) > 0)
    }

    @Test func aFixedRateHoldsTheRate() throws {
        // As fast as answered this is thousands per second on loopback; 100/s must stay near 100.
        let r = try bench(["--target", throughProxy, "--clients", "2", "--duration", "1", "--rounds", "1", "--rate", "100",
                           "--protocol", "extended"])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        let tps = summary(r)["tps_cutover"] ?? 0
        #expect(tps > 20 && tps <= 110, "\(r.stdout)")
        #expect(summary(r)["skipped"] == 0)

        // A target that cannot keep up (100 ms a statement, 50 a second asked of one client): the run still ends
        // with its duration, and what its schedule held beyond what it managed is counted, not waited out.
        let started = Date()
        let behind = try bench(["--target", throughProxy, "--clients", "1", "--duration", "1", "--rounds", "1", "--rate", "50",
                                "--query", "SELECT pg_sleep(0.1)"])
        let took = Date().timeIntervalSince(started)
        #expect(behind.status == 0, "\(behind.stdout)\(behind.stderr)")
        let done = summary(behind)["tps_cutover"] ?? 0, skipped = summary(behind)["skipped"] ?? 0
        #expect(done >= 5 && done <= 11 && skipped >= 35 && done + skipped >= 49 && done + skipped <= 51, "\(behind.stdout)")
        #expect(took < 4, "the backlog was not worked through: \(took) s")
        #expect(behind.stdout.contains("cutover: fell behind the rate:"))
    }

    @Test func aTargetThatRefusesTheLoginOrDropsTheConnectionGetsAClearMessage() throws {
        let wrong = try bench(["--target", "cutover=" + f.conninfo(password: "wrong"), "--duration", "0.2", "--rounds", "1"])
        #expect(wrong.status == 2)
        #expect(wrong.stdout.contains("cannot reach target cutover:") && wrong.stdout.contains("password authentication failed"),
                "\(wrong.stdout)")
        // Each client's first statement ends its own backend: every client is lost, the run still reports.
        let dropped = try bench(["--target", throughProxy, "--clients", "2", "--duration", "0.5", "--rounds", "1",
                                 "--query", "SELECT pg_terminate_backend(pg_backend_pid())"])
        #expect(dropped.status == 1, "\(dropped.stdout)\(dropped.stderr)")
        #expect(dropped.stdout.contains("2 statements failed, 2 clients lost the connection"), "\(dropped.stdout)")
        let invalid = try bench(["--target", direct, "--query", "SELECT $1"])
        #expect(invalid.status != 0 && invalid.stderr.contains("give its values with --param-range"), "\(invalid.stderr)")
    }
}

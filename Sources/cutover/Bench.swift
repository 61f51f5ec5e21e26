// `cutover bench`: what a proxy costs where it runs — one statement against several targets, interleaved rounds.
import ArgumentParser
import CutoverBench
import CutoverNative
import Foundation

extension BenchProtocol: ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure what a proxy costs: the same statement against several targets, side by side.",
        discussion: """
            Each target is a libpq connection string: PostgreSQL itself, Cutover, PgBouncer. Every round runs
            each target in turn (forward in odd rounds, backward in even ones, so a machine that gets busier does
            not favour one), with --clients connections opened before the clock starts, each on its own thread,
            repeating --query for --duration seconds. Latency is kept per statement in an HDR histogram
            (3 significant digits); with --rate it is measured from each statement's scheduled start, so a
            target that falls behind shows its queueing. Ratios compare each target with the first, round by
            round; the table shows their median [min–max]. The last line is a key=value summary for scripts.

            The statement runs as given: use a read-only one against production (the default is SELECT 1).
            pgbench's select-only workload, after `pgbench -i`:
              --query 'SELECT abalance FROM pgbench_accounts WHERE aid = $1' --param-range 1:100000

            Exit status: 0 done, 1 some statements failed (the first error is printed), 2 a target could not be
            reached, the statement could not be prepared, or the JSON file could not be written.
            """)

    @Option(name: .customLong("target"), help: "NAME=CONNINFO, repeatable; the first is the baseline the others are compared with.")
    var targets: [String] = []
    @Option(help: "Connections per target, each on its own thread (at most 1000).") var clients = 8
    @Option(help: "Seconds per target per round.") var duration: Double = 10
    @Option(help: "Rounds (each runs every target once).") var rounds = 3
    @Option(name: .customLong("protocol"), help: "simple (Query), extended (Parse/Bind/Execute each time) or prepared (prepared once per connection).")
    var mode: BenchProtocol = .simple
    @Option(help: "The statement every client repeats.") var query = "SELECT 1"
    @Option(name: .customLong("param-range"), help: "LO:HI: each execution binds a uniformly random integer from it to $1.")
    var paramRange: String?
    @Option(help: "Statements per second over all clients (a fixed rate, as pgbench -R; what is not sent by the end is counted as skipped); default: as fast as answered.")
    var rate: Double?
    @Option(help: "Also write the results as JSON to this file: per target, tps per round, ratios, percentiles, errors.") var json: String?

    func makePlan() throws -> BenchPlan {
        do {
            let range = try paramRange.map { v throws(BenchPlanError) in try BenchStatement.parseRange(v) }
            return try BenchPlan(targets: targets.map { a throws(BenchPlanError) in try BenchTarget(parsing: a) }, clients: clients,
                                 duration: duration, rounds: rounds, mode: mode,
                                 statement: try BenchStatement(sql: query, range: range), rate: rate)
        } catch {
            throw ValidationError(error.description)
        }
    }

    func validate() throws { _ = try makePlan() }

    func run() throws {
        let plan = try makePlan()
        let pace = plan.rate.map { "at \(Int($0)) statements/s" } ?? "as fast as answered"
        print("cutover bench: \(counted(plan.targets.count, "target")) (\(plan.targets.map(\.name).joined(separator: ", "))), "
              + "\(counted(plan.clients, "client")), \(counted(plan.rounds, "round")) of \(duration) s, \(plan.mode.rawValue) protocol, \(pace)")
        print("  \(plan.statement.sql)")
        var results: [RunResult] = []
        do {
            for round in 0..<plan.rounds {
                var line = "round \(round + 1)/\(plan.rounds):"
                for t in plan.order(ofRound: round) {
                    let r = try BenchRunner.run(plan, target: t, round: round)
                    results.append(r)
                    line += "  \(plan.targets[t].name) \(Int(r.tps.rounded())) tps" + (r.errors > 0 ? " (\(r.errors) errors)" : "")
                }
                print(line)
                fflush(nil)
            }
        } catch let e as BenchConnection.Failure {
            print("cutover bench: \(e)")
            throw ExitCode(2)
        }
        let report = BenchReport(plan: plan, results: results)
        print("")
        let table = report.table
        printTable(table.columns, table.rows)
        for t in report.targets {
            if t.skipped > 0 {
                print("\(t.name): fell behind the rate: \(counted(Int(t.skipped), "scheduled statement")) not sent by the end of the runs (latency counts the queueing of those that were)")
            }
            if let e = t.firstError {
                print("\(t.name): \(counted(Int(t.errors), "statement")) failed\(t.lostClients > 0 ? ", \(counted(t.lostClients, "client")) lost the connection" : ""); first error: \(e)")
            }
        }
        if let json { try writeJSON(report, plan: plan, to: json) }
        print(report.summaryLine)
        if report.errors > 0 { throw ExitCode(1) }
    }

    private func writeJSON(_ report: BenchReport, plan: BenchPlan, to path: String) throws {
        struct Document: Encodable {
            let clients: Int, durationSeconds: Double, rounds: Int, protocolName: String, query: String
            let paramRange: String?, rate: Double?
            let targets: [TargetSummary]
            let summary: String
        }
        let doc = Document(clients: plan.clients, durationSeconds: duration, rounds: plan.rounds, protocolName: plan.mode.rawValue,
                           query: plan.statement.sql, paramRange: paramRange, rate: plan.rate, targets: report.targets,
                           summary: report.summaryLine)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        do { try encoder.encode(doc).write(to: URL(fileURLWithPath: path)) } catch {
            print("cutover bench: cannot write \(path): \(error.localizedDescription)")
            throw ExitCode(2)
        }
    }
}

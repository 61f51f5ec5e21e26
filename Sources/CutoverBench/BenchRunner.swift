// Runs one target for one round: a thread per client, each with its own libpq connection and latency histogram.
import CutoverNative
import Dispatch
import Foundation
import Histogram

/// What one target did in one round.
public struct RunResult: Sendable {
    public let target: Int
    public let round: Int
    /// Statements that succeeded (only these are in `latency`).
    public var queries: UInt64 = 0
    public var errors: UInt64 = 0
    public var firstError: String?
    /// Clients whose connection the server or the network closed during the run.
    public var lostClients = 0
    /// At a fixed rate: statements scheduled within the run that were not sent by its end (the target fell
    /// behind the rate; pgbench `-R -T` leaves them out likewise).
    public var skipped: UInt64 = 0
    /// From the common start to the last client's last answer.
    public var elapsedNs: UInt64 = 0
    /// Per-statement latency in ns (from the scheduled start at a fixed rate).
    public var latency = BenchRunner.emptyHistogram()

    public init(target: Int, round: Int) {
        self.target = target
        self.round = round
    }

    public var tps: Double { elapsedNs == 0 ? 0 : Double(queries) * 1e9 / Double(elapsedNs) }
}

public enum BenchRunner {
    /// 0.1 µs resolution, 3 significant digits; grows past 60 s if a statement ever takes that long.
    public static func emptyHistogram() -> Histogram<UInt64> {
        var h = Histogram<UInt64>(lowestDiscernibleValue: 100, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        h.autoResize = true
        return h
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    static func sleep(until deadline: UInt64) {
        let t = now()
        guard deadline > t else { return }
        var ts = timespec(tv_sec: Int((deadline - t) / 1_000_000_000), tv_nsec: Int((deadline - t) % 1_000_000_000))
        var left = timespec()
        while nanosleep(&ts, &left) == -1 && errno == EINTR { ts = left }
    }

    /// Connects every client to `plan.targets[target]` (before the clock starts), runs them together for the
    /// plan's duration, and merges what they measured. Throws when a client cannot connect or prepare.
    public static func run(_ plan: BenchPlan, target: Int, round: Int) throws -> RunResult {
        let t = plan.targets[target]
        var workers: [Worker] = []
        defer { for w in workers { w.connection.close() } }
        for client in 0..<plan.clients {
            let c = try BenchConnection(t.conninfo, reaching: "target \(t.name)", sql: plan.statement.sql,
                                        parameters: plan.statement.parameterCount, mode: plan.mode)
            workers.append(Worker(client: client, connection: c))
        }
        // Every thread reports ready before the clock is set, so a slow thread start costs no measured time.
        let ready = DispatchGroup(), done = DispatchGroup(), go = DispatchSemaphore(value: 0)
        let clock = RunClock()
        for w in workers {
            ready.enter()
            done.enter()
            let thread = Thread {
                ready.leave()
                go.wait()
                w.run(plan, start: clock.start, end: clock.end)
                done.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        ready.wait()
        clock.start = now() + 2_000_000
        clock.end = clock.start + plan.durationNs
        for _ in workers { go.signal() } // (the semaphore orders the clock's writes before the threads' reads)
        done.wait()
        let start = clock.start
        var result = RunResult(target: target, round: round)
        for w in workers {
            result.queries += w.queries
            result.errors += w.errors
            result.firstError = result.firstError ?? w.firstError
            result.lostClients += w.lost ? 1 : 0
            result.skipped += w.skipped
            result.elapsedNs = max(result.elapsedNs, w.finishedAt > start ? w.finishedAt - start : 0)
            result.latency.add(w.latency)
        }
        // At a fixed rate the run is its schedule's window (its last statement may be answered well before the end).
        if plan.rate != nil { result.elapsedNs = max(result.elapsedNs, plan.durationNs) }
        return result
    }
}

/// The run's start and end, set once every thread is ready (before the semaphore lets them read it).
private final class RunClock: @unchecked Sendable {
    var start: UInt64 = 0
    var end: UInt64 = 0
}

/// One client: its connection and what it measured. Only its own thread writes to it, and the runner reads it
/// only after that thread has left the group.
private final class Worker: @unchecked Sendable {
    let client: Int
    let connection: BenchConnection
    var latency = BenchRunner.emptyHistogram()
    var queries: UInt64 = 0, errors: UInt64 = 0, skipped: UInt64 = 0
    var firstError: String?
    var lost = false
    var finishedAt: UInt64 = 0

    init(client: Int, connection: BenchConnection) {
        self.client = client
        self.connection = connection
    }

    func run(_ plan: BenchPlan, start: UInt64, end: UInt64) {
        var random = SplitMix64(seed: UInt64(client) &* 0x9E37_79B9_7F4A_7C15 &+ start)
        BenchRunner.sleep(until: start)
        var k: UInt64 = 0
        while true {
            let scheduled: UInt64
            if plan.rate != nil {
                guard let offset = plan.scheduledStart(client: client, k: k) else { break }
                scheduled = start + offset
                if BenchRunner.now() >= end {
                    // Behind the schedule at the end: what is left of it within the run was not sent.
                    skipped = plan.scheduledCount(client: client) &- k
                    break
                }
                BenchRunner.sleep(until: scheduled)
            } else {
                scheduled = BenchRunner.now()
                guard scheduled < end else { break }
            }
            let value = plan.statement.range.map { Int.random(in: $0, using: &random) }
            let failure = connection.execute(plan.statement.text(for: plan.mode, value: value), parameter: value.map(String.init))
            let done = BenchRunner.now()
            if let failure {
                errors += 1
                if firstError == nil { firstError = failure }
                if !connection.isAlive { lost = true; break }
            } else {
                queries += 1
                _ = latency.record(done - scheduled)
            }
            k += 1
        }
        finishedAt = BenchRunner.now()
    }
}

/// A small fast generator for the parameter values (the system one is a syscall per value on Linux).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

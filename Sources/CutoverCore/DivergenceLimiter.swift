// How many divergence records one statement may write: a route out of sync must not flood the log.

/// At most `perSecond` records a second (bursts up to as many) for each (route, kind, statement fingerprint);
/// the rest are left out of the log and the memory list, counted, and the next record written for that key
/// carries the count (`suppressed`). The route's counters count every divergence either way.
public struct DivergenceLimiter: Sendable {
    public let perSecond: Int
    private struct Bucket: Sendable {
        var tokens: Double
        var lastMs: UInt64
        var suppressed: Int
    }
    private var buckets: [String: Bucket] = [:]
    /// Keys kept before idle ones are forgotten (a workload with many distinct failing statements).
    static let maxKeys = 4096

    /// `perSecond` 0 admits everything.
    public init(perSecond: Int) { self.perSecond = perSecond }

    /// Nil: leave this record out (it has been counted). Otherwise the record is written, carrying how many
    /// were left out for the same key before it.
    public mutating func admit(_ key: String, nowMs: UInt64) -> Int? {
        guard perSecond > 0 else { return 0 }
        let limit = Double(perSecond)
        var b = buckets[key] ?? Bucket(tokens: limit, lastMs: nowMs, suppressed: 0)
        b.tokens = min(limit, b.tokens + Double(nowMs &- b.lastMs) / 1000 * limit)
        b.lastMs = nowMs
        if b.tokens < 1 {
            b.suppressed += 1
            buckets[key] = b
            return nil
        }
        b.tokens -= 1
        let left = b.suppressed
        b.suppressed = 0
        if buckets[key] == nil && buckets.count >= Self.maxKeys { forgetIdle(nowMs: nowMs) }
        buckets[key] = b
        return left
    }

    /// Drops keys quiet for 10 s (their bucket is full again; a pending count is lost, the counters keep it).
    private mutating func forgetIdle(nowMs: UInt64) {
        buckets = buckets.filter { nowMs &- $0.value.lastMs < 10_000 }
        if buckets.count >= Self.maxKeys { buckets.removeAll() }
    }

    public var trackedKeys: Int { buckets.count }
}

// A divergence record: one JSON line in the divergence log, and a row of SHOW DIVERGENCES.
import Foundation

public struct Divergence: Codable, Sendable, Equatable {
    public var time: String
    public var route: String
    public var phase: String
    public var mirror: String
    public var session: Int
    public var applicationName: String
    public var user: String
    public var kind: DivergenceKind
    public var fingerprint: String?
    /// Normalized text (literals as `$n`), or the raw text when `log_literals` is on.
    public var statement: String?
    public var leader: StatementOutcome?
    public var follower: StatementOutcome?
    public var leaderMs: Double?
    public var followerMs: Double?
    public var detail: String?
    /// Records of the same route, kind and statement left out of the log just before this one (the
    /// divergence_log_limit); nil when none were.
    public var suppressed: Int?

    enum CodingKeys: String, CodingKey {
        case time, route, phase, mirror, session, applicationName = "application_name", user, kind, fingerprint, statement
        case leader, follower, leaderMs = "leader_ms", followerMs = "follower_ms", detail, suppressed
    }

    public init(time: Date = Date(), route: String, phase: Phase, mirror: MirrorMode, session: Int, applicationName: String,
                user: String, kind: DivergenceKind, fingerprint: String? = nil, statement: String? = nil,
                leader: StatementOutcome? = nil, follower: StatementOutcome? = nil, leaderMs: Double? = nil,
                followerMs: Double? = nil, detail: String? = nil) {
        self.time = Self.formatter.string(from: time)
        self.route = route; self.phase = phase.rawValue; self.mirror = mirror.rawValue; self.session = session
        self.applicationName = applicationName; self.user = user; self.kind = kind; self.fingerprint = fingerprint
        self.statement = statement; self.leader = leader; self.follower = follower; self.leaderMs = leaderMs
        self.followerMs = followerMs; self.detail = detail
    }

    nonisolated(unsafe) static let formatter: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()

    /// One line of JSON, keys sorted so lines diff well.
    public func jsonLine() -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? String(decoding: e.encode(self), as: UTF8.self)) ?? "{}"
    }
}

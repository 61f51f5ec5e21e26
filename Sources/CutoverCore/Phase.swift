// The migration ladder of a route and which side leads in each phase.

/// Where a route is in its migration. Forward and back one step at a time (skips need FORCE).
public enum Phase: String, CaseIterable, Sendable, Codable {
    case legacy
    case dualLegacy = "dual-legacy"
    case dualNew = "dual-new"
    case new

    /// The side that answers the client.
    public var leader: Side { self == .legacy || self == .dualLegacy ? .legacy : .new }
    /// The side that receives mirrored writes, if any.
    public var follower: Side? {
        switch self {
        case .legacy, .new: return nil
        case .dualLegacy: return .new
        case .dualNew: return .legacy
        }
    }
    var step: Int { Phase.allCases.firstIndex(of: self)! }
    /// True if going from `self` to `target` moves one rung (or none) on the ladder.
    public func isAdjacent(to target: Phase) -> Bool { abs(step - target.step) <= 1 }
}

/// The two ends of a route.
public enum Side: String, Sendable { case legacy, new }

/// How writes reach the follower.
public enum MirrorMode: String, Sendable, Codable { case async, sync }

// Resolves the database a client asked for to the backend that answers it and the parameters it gets there.

/// Where one session's statements go, decided at startup from the database name and the route's phase.
public struct RouteTarget: Sendable, Equatable {
    /// The route name (the virtual database), or nil for the wildcard route.
    public var route: String?
    public var phase: Phase
    public var leader: BackendConfig
    /// The real database name on the leader.
    public var database: String
    /// Set so unqualified names resolve in the route's schema on that side (`RouteConfig.searchPath(on:)`).
    public var searchPath: String?
    public var follower: BackendConfig?
    public var followerDatabase: String?
    public var followerSearchPath: String?
}

public enum RouteResolution: Sendable, Equatable {
    case route(RouteTarget)
    case admin
    case unknownDatabase
}

extension CutoverConfig {
    /// `phase` overrides the config's initial phase (the persisted, run-time phase of the route).
    public func resolve(database: String, phase overridePhase: Phase? = nil) -> RouteResolution {
        if database == server.adminDatabase { return .admin }
        if let r = routes[database], let legacy = backends[r.legacy], let new = backends[r.new] {
            let phase = overridePhase ?? r.phase
            func side(_ s: Side) -> (BackendConfig, String?) { (s == .legacy ? legacy : new, r.searchPath(on: s)) }
            let (leader, leaderPath) = side(phase.leader)
            let follower = phase.follower.map(side)
            return .route(RouteTarget(route: r.name, phase: phase, leader: leader, database: leader.database,
                                      searchPath: leaderPath, follower: follower?.0, followerDatabase: follower?.0.database,
                                      followerSearchPath: follower?.1))
        }
        if let w = wildcardBackend, let b = backends[w] {
            return .route(RouteTarget(route: nil, phase: .legacy, leader: b, database: database, searchPath: nil))
        }
        return .unknownDatabase
    }
}

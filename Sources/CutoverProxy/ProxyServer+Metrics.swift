// What /metrics exposes: the proxy's sessions and, per route, phase, sync state, traffic, divergences, flips.
import CutoverCore

extension ProxyServer {
    /// The Prometheus exposition, built from the same counters as SHOW ROUTES and SHOW STATS.
    func metricsText() -> String {
        var m = PrometheusText()
        m.family("cutover_up", .gauge, "1 while the proxy serves")
        m.sample("cutover_up", 1)
        m.family("cutover_uptime_seconds", .gauge, "Seconds since the proxy started")
        m.sample("cutover_uptime_seconds", Double(loop.now - startedAt) / 1000)
        m.family("cutover_client_connections", .gauge, "Client connections, including those logging in and the admin console")
        m.sample("cutover_client_connections", sessions.count)
        m.family("cutover_client_connections_max", .gauge, "server.max_clients")
        m.sample("cutover_client_connections_max", config.server.maxClients)
        m.family("cutover_client_login_refusals_total", .counter, "Client logins the proxy refused, by SQLSTATE (28P01 wrong password, 3D000 unknown database, 08P01 malformed, ...)")
        for (state, n) in clientLoginRefusals.sorted(by: { $0.key < $1.key }) { m.sample("cutover_client_login_refusals_total", ["sqlstate": state], n) }
        m.family("cutover_sessions_active", .gauge, "Sessions connected to a backend and forwarding")
        m.sample("cutover_sessions_active", activeSessions)
        m.family("cutover_backend_idle_connections", .gauge, "Logged-in backend connections kept idle for later sessions (backend_pool_size)")
        let idle = idleBackends?.countsByBackend() ?? [:]
        for name in config.backends.keys.sorted() { m.sample("cutover_backend_idle_connections", ["backend": name], idle[name] ?? 0) }
        let (leaders, followers) = backendConnectionCounts()
        m.family("cutover_backend_connections", .gauge, "Backend connections sessions hold, by role (leader answers the client, follower is mirrored to)")
        for name in config.backends.keys.sorted() {
            m.sample("cutover_backend_connections", ["backend": name, "role": "leader"], leaders[name] ?? 0)
            m.sample("cutover_backend_connections", ["backend": name, "role": "follower"], followers[name] ?? 0)
        }
        m.family("cutover_backend_logins_total", .counter, "Logins to the backend that succeeded (a pooled connection's reuse is not one)")
        for name in config.backends.keys.sorted() { m.sample("cutover_backend_logins_total", ["backend": name], backendLogins[name]?.succeeded ?? 0) }
        m.family("cutover_backend_login_failures_total", .counter, "Logins to the backend that failed: refused (wrong password, too many connections) or unreachable")
        for name in config.backends.keys.sorted() { m.sample("cutover_backend_login_failures_total", ["backend": name], backendLogins[name]?.failed ?? 0) }

        let all = routes.values.sorted { $0.name < $1.name }
        m.family("cutover_route_phase", .gauge, "1 for the route's current phase, 0 for the others")
        for r in all {
            for p in Phase.allCases { m.sample("cutover_route_phase", ["route": r.name, "phase": p.rawValue], r.phase == p ? 1 : 0) }
        }
        m.family("cutover_route_mirror_sync", .gauge, "1 when the route mirrors in lock-step (sync), 0 for async")
        for r in all { m.sample("cutover_route_mirror_sync", ["route": r.name], r.mirror == .sync ? 1 : 0) }
        m.family("cutover_route_in_sync", .gauge, "0 once the sides may differ (a follower lost, overflowed, timed out, or writes went unmirrored)")
        for r in all { m.sample("cutover_route_in_sync", ["route": r.name], r.inSync ? 1 : 0) }
        // Why, for an alert's text: one series per route that is out of sync (so at most one per route).
        m.family("cutover_route_out_of_sync_info", .gauge, "1 for a route out of sync, with the reason (first 200 characters)")
        for r in all where !r.inSync {
            m.sample("cutover_route_out_of_sync_info", ["route": r.name, "reason": String((r.outOfSyncReason ?? "unknown").prefix(200))], 1)
        }
        m.family("cutover_route_paused", .gauge, "1 while the route holds new transactions back (PAUSE or a flip)")
        for r in all { m.sample("cutover_route_paused", ["route": r.name], r.pause == nil ? 0 : 1) }
        m.family("cutover_route_sessions", .gauge, "Sessions on the route")
        for r in all { m.sample("cutover_route_sessions", ["route": r.name], r.sessions.count) }
        m.family("cutover_route_mirror_queue_statements", .gauge, "Statements sent to followers and not yet compared")
        for r in all { m.sample("cutover_route_mirror_queue_statements", ["route": r.name], r.sessions.values.reduce(0) { $0 + $1.pendingUnitCount }) }
        m.family("cutover_route_unmirrored_statements", .gauge, "Statements run since the route last had a follower (the other side missed them)")
        for r in all { m.sample("cutover_route_unmirrored_statements", ["route": r.name], r.unmirroredStatements) }
        m.family("cutover_route_statements_total", .counter, "Units of work (Query, or up to Sync) clients sent on the route")
        for r in all { m.sample("cutover_route_statements_total", ["route": r.name], r.stats.statements) }
        m.family("cutover_route_mirrored_total", .counter, "Units answered by both sides and compared")
        for r in all { m.sample("cutover_route_mirrored_total", ["route": r.name], r.stats.mirrored) }
        m.family("cutover_route_divergences_total", .counter, "Divergences recorded, by kind")
        for r in all {
            for k in DivergenceKind.allCases { m.sample("cutover_route_divergences_total", ["route": r.name, "kind": k.rawValue], r.stats.divergences[k] ?? 0) }
        }
        for (side, sum, count) in [("leader", \RouteStats.leaderMsTotal, \RouteStats.leaderCount), ("follower", \RouteStats.followerMsTotal, \RouteStats.followerCount)] {
            let name = "cutover_route_\(side)_latency_seconds"
            m.family(name, .summary, "Time from sending a compared unit to the \(side)'s ReadyForQuery")
            for r in all {
                m.sample(name + "_sum", ["route": r.name], r.stats[keyPath: sum] / 1000)
                m.sample(name + "_count", ["route": r.name], r.stats[keyPath: count])
            }
        }
        m.family("cutover_route_flips_total", .counter, "Phase changes of the route")
        for r in all { m.sample("cutover_route_flips_total", ["route": r.name], r.stats.flips) }
        m.family("cutover_route_flip_stall_seconds_max", .gauge, "Longest time a client waited during a flip of the route")
        for r in all { m.sample("cutover_route_flip_stall_seconds_max", ["route": r.name], r.stats.maxFlipStallMs / 1000) }
        return m.text
    }
}

// The admin console: the virtual database `cutover`, reached with any PostgreSQL client (simple queries only).
import CutoverCore
import CutoverProtocol
import Foundation

/// Executes admin commands and renders their results as protocol bytes (ReadyForQuery is the session's).
final class AdminConsole {
    unowned let server: ProxyServer

    init(server: ProxyServer) { self.server = server }

    func execute(_ text: String, from session: ClientSession, reply: @escaping ([UInt8]) -> Void) {
        func send(_ result: Result<AdminResult, ProxyServer.AdminError>) {
            var w = ByteWriter()
            switch result {
            case .success(let r): r.encode(into: &w)
            case .failure(let e): ErrorFields(severity: "ERROR", code: e.code, message: e.message, detail: e.detail).encode(into: &w)
            }
            reply(w.bytes)
        }
        let command: AdminCommand
        do { command = try AdminCommand.parse(text) } catch {
            return send(.failure(ProxyServer.AdminError(code: error.sqlState, message: error.message)))
        }
        server.logger.info("admin command", metadata: ["user": "\(session.user)", "command": "\(text)"])
        do {
            switch command {
            case .showRoutes: send(.success(routes()))
            case .showSessions: send(.success(sessions()))
            case .showDivergences(let route):
                if let route, server.routes[route] == nil { throw ProxyServer.AdminError(code: "42704", message: "no route named \"\(route)\"") }
                send(.success(divergences(route)))
            case .showStats: send(.success(stats()))
            case .showBackends: send(.success(backends()))
            case .showConfig: send(.success(configSettings()))
            case .show: send(.success(AdminResult(columns: ["usage"], rows: [[AdminCommand.usage]], tag: "SHOW")))
            case .showVersion: send(.success(AdminResult(columns: ["version"], rows: [["cutover " + CutoverVersion.string]], tag: "SHOW")))
            case .setPhase(let route, let phase, let force): server.setPhase(route, to: phase, force: force, reply: send)
            case .setMirror(let route, let mode): send(.success(try server.setMirror(route, to: mode)))
            case .pause(let route, let timeout): pause(route, timeout: timeout, reply: send)
            case .resume(let route):
                guard let r = server.routes[route] else { throw ProxyServer.AdminError(code: "42704", message: "no route named \"\(route)\"") }
                guard let p = r.pause, !p.isFlip else { throw ProxyServer.AdminError(code: "55000", message: "route \(route) is not paused") }
                let stall = server.endPause(r)
                send(.success(AdminResult(columns: ["route", "longest_stall_ms"], rows: [[route, "\(Int(stall))"]], tag: "RESUME")))
            case .markInSync(let route, let pauseID):
                send(.success(try server.markInSync(route, pauseID: pauseID, by: "\(session.user) from \(session.client.peerDescription)")))
            case .cancel(let id), .kill(let id):
                guard let target = server.session(withID: id) else { throw ProxyServer.AdminError(code: "42704", message: "no session \(id)") }
                let row: [String?] = ["\(id)", target.route?.name, target.user, target.describeActivity]
                if case .kill = command {
                    guard target !== session else {
                        throw ProxyServer.AdminError(code: "55000", message: "session \(id) is this admin session: disconnect instead")
                    }
                    server.kill(target)
                    send(.success(AdminResult(columns: ["session", "route", "user", "activity"], rows: [row], tag: "KILL")))
                } else {
                    guard target.state == .forwarding, server.cancelStatement(of: target) else {
                        throw ProxyServer.AdminError(code: "55000", message: "session \(id) has no backend statement to cancel")
                    }
                    send(.success(AdminResult(columns: ["session", "route", "user", "activity"], rows: [row], tag: "CANCEL")))
                }
            case .reload:
                guard let reloader = server.reloader else { throw ProxyServer.AdminError(code: "55000", message: "this proxy has no config file to reload") }
                do { try server.reload(try reloader()) } catch {
                    throw ProxyServer.AdminError(code: "F0000", message: "reload failed, the running configuration is unchanged: \(error)")
                }
                send(.success(AdminResult(columns: [], rows: [], tag: "RELOAD")))
            }
        } catch let e as ProxyServer.AdminError {
            send(.failure(e))
        } catch {
            send(.failure(ProxyServer.AdminError(code: "XX000", message: "\(error)")))
        }
    }

    private func pause(_ name: String, timeout: Double?, reply: @escaping (Result<AdminResult, ProxyServer.AdminError>) -> Void) {
        guard let r = server.routes[name] else { return reply(.failure(.init(code: "42704", message: "no route named \"\(name)\""))) }
        guard r.pause == nil else { return reply(.failure(.init(code: "55006", message: "route \(name) is already paused or flipping"))) }
        server.startPause(r, reason: .manual, timeout: timeout ?? server.config.server.flipTimeout) { settled, _ in
            let busy = r.sessions.values.filter { !$0.isDrainedAtBoundary }.count
            reply(.success(AdminResult(columns: ["route", "paused", "sessions", "still_busy"],
                                       rows: [[name, "true", "\(r.sessions.count)", "\(settled ? 0 : busy)"]], tag: "PAUSE")))
        }
    }

    private func routes() -> AdminResult {
        let rows: [[String?]] = server.routes.values.sorted { $0.name < $1.name }.map { r in
            let legacy = r.config.legacy + (r.config.legacySchema.map { "/\($0)" } ?? "")
            let new = r.config.new + (r.config.newSchema == "public" ? "" : "/\(r.config.newSchema)")
            let leader = r.phase.leader == .legacy ? legacy : new
            let follower = r.phase.follower.map { $0 == .legacy ? legacy : new }
            return [r.name, r.phase.rawValue, r.mirror.rawValue, leader, follower, "\(r.sessions.count)",
                    r.phase.follower == nil ? nil : (r.inSync ? "yes" : "no"), "\(r.stats.divergenceTotal)",
                    r.pause == nil ? (r.warmUp == nil ? "no" : "warming up") : (r.pause!.isFlip ? "flipping" : "yes"),
                    r.inSync || r.phase.follower == nil ? nil : r.outOfSyncReason ?? "unknown",
                    r.pause.map { "\($0.id)" }, r.pause.map { $0.settled ? "yes" : "no" }, r.lastFlip]
        }
        return AdminResult(columns: ["route", "phase", "mirror", "leader", "follower", "sessions", "in_sync", "divergences", "paused",
                                     "out_of_sync_reason", "pause_id", "pause_settled", "last_flip"],
                           rows: rows, tag: "SHOW")
    }

    private func sessions() -> AdminResult {
        let rows: [[String?]] = server.sessions.values.sorted { $0.id < $1.id }.map { s in
            ["\(s.id)", s.route?.name ?? (s.isWildcard ? "*" : nil), s.user, s.applicationName, s.route == nil ? nil : s.sessionPhase.rawValue,
             s.stateName, s.describeActivity, s.leader?.backendName, s.leader?.key.map { "\($0.processID)" }, s.follower?.backendName,
             "\(s.pendingUnitCount)", s.client.peerDescription, s.clientTLSDescription]
        }
        return AdminResult(columns: ["id", "route", "user", "application_name", "phase", "state", "activity", "leader", "leader_pid",
                                     "follower", "pending", "client", "tls"], rows: rows, tag: "SHOW")
    }

    private func divergences(_ route: String?) -> AdminResult {
        let all = server.divergences.recent.filter { route == nil || $0.route == route }.suffix(100)
        let rows: [[String?]] = all.reversed().map { d in
            [d.time, d.route, d.kind.rawValue, "\(d.session)", d.statement, d.leader?.summary, d.follower?.summary, d.detail]
        }
        return AdminResult(columns: ["time", "route", "kind", "session", "statement", "leader", "follower", "detail"], rows: rows, tag: "SHOW")
    }

    /// The [server] settings in effect, their defaults, and what a reload read but only a restart applies.
    private func configSettings() -> AdminResult {
        let defaults = Dictionary(ServerConfig().settings.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        let rows: [[String?]] = server.config.server.settings.map { s in
            let restart = ServerConfig.restartOnlyKeys.contains(s.key)
            let pending: String? = server.pendingRestart[s.key].map { $0 ?? "(none)" }
            // `listen` as bound (`serve --port 0` picks the port).
            let value = s.key == "listen" ? "\(server.config.server.listenHost):\(server.port)" : s.value
            return [s.key, value, defaults[s.key] ?? nil, restart ? "restart" : "reload", pending]
        }
        return AdminResult(columns: ["key", "value", "default", "applied_by", "after_restart"], rows: rows, tag: "SHOW")
    }

    /// Where each backend is reached now (what its host name resolved to, and when), and who uses it.
    private func backends() -> AdminResult {
        let (leaders, followers) = server.backendConnectionCounts()
        let now = server.loop.now
        let idle = server.idleBackends?.countsByBackend() ?? [:]
        let rows: [[String?]] = server.config.backends.values.sorted { $0.name < $1.name }.map { b in
            let entry = server.addressBook.entries[b.name]
            let logins = server.backendLogins[b.name]
            let lookup: String? = entry.map { e in
                if e.lookupInFlight { return "in flight" }
                if let failure = e.lastFailure { return "failed: \(failure)" }
                return e.resolvedAt == nil ? nil : "ok"
            } ?? nil
            return [b.name, b.host, "\(b.port)", entry.map { $0.addresses.joined(separator: ", ") },
                    entry?.resolvedAt.map { "\((now &- $0) / 1000)" }, lookup, b.isUnixSocket ? "unix socket" : b.tls.rawValue,
                    "\(leaders[b.name] ?? 0)", "\(followers[b.name] ?? 0)", "\(idle[b.name] ?? 0)",
                    "\(logins?.succeeded ?? 0)", "\(logins?.failed ?? 0)",
                    logins?.lastFailure.map { "\($0.text) (\((now &- $0.at) / 1000) s ago)" }]
        }
        return AdminResult(columns: ["backend", "host", "port", "addresses", "resolved_s_ago", "lookup", "tls", "leaders", "followers", "idle",
                                     "logins", "login_failures", "last_login_failure"],
                           rows: rows, tag: "SHOW")
    }

    private func stats() -> AdminResult {
        let rows: [[String?]] = server.routes.values.sorted { $0.name < $1.name }.map { r in
            let st = r.stats
            let kinds = st.divergences.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue)=\($0.value)" }.joined(separator: " ")
            let depth = r.sessions.values.reduce(0) { $0 + $1.pendingUnitCount }
            func avg(_ total: Double, _ n: Int) -> String? { n == 0 ? nil : String(format: "%.3f", total / Double(n)) }
            return [r.name, "\(st.statements)", "\(st.mirrored)", "\(st.divergenceTotal)", kinds, "\(depth)",
                    avg(st.leaderMsTotal, st.leaderCount), avg(st.followerMsTotal, st.followerCount), "\(st.flips)",
                    String(format: "%.0f", st.lastFlipStallMs), String(format: "%.0f", st.maxFlipStallMs)]
        }
        return AdminResult(columns: ["route", "statements", "mirrored", "divergences", "by_kind", "queue_depth", "leader_avg_ms",
                                     "follower_avg_ms", "flips", "last_flip_stall_ms", "max_flip_stall_ms"], rows: rows, tag: "SHOW")
    }
}

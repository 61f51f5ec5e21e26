// The proxy: accepts clients, owns sessions and routes, forwards cancels, sweeps timeouts, records
// divergences, flips phases (pausing a route when the leader changes), persists them, reloads and shuts down.
import CutoverCore
import Foundation
import CutoverProtocol
import CutoverRuntime
import Logging

public final class ProxyServer {
    public let loop: EventLoop
    public private(set) var config: CutoverConfig {
        didSet {
            writeHighWater = config.server.writeHighWater
            mirrorQueueLimits = (config.server.mirrorQueueBytes, config.server.mirrorQueueStatements)
            keepalive = Self.keepalive(config.server)
        }
    }
    /// What every new client and backend TCP socket gets (a reload applies it to new connections).
    private(set) var keepalive: TCPKeepalive
    /// Read by sessions on every chunk (a `config` read copies the whole struct).
    private(set) var writeHighWater: Int
    /// The async follower queue's bounds (bytes, statements), read on every mirrored chunk.
    private(set) var mirrorQueueLimits: (Int, Int)
    let logger: Logger
    private var listener: TCPListener?
    /// The Unix-domain socket beside it (`unix_socket_dir`), if configured.
    private var unixListener: TCPListener?
    /// Every session by the secret its client got in BackendKeyData (unique: a cancel request finds its session here).
    private(set) var sessions: [Int32: ClientSession] = [:]
    private var nextSessionID = 1
    private var janitor: LoopTimer?
    private var metricsEndpoint: MetricsEndpoint?
    /// When `start` ran (ms on the loop clock), for the uptime metric.
    private(set) var startedAt: UInt64 = 0
    /// Sessions whose on-demand follower (async mirroring) owes answers; read every `followerReadIntervalMs`.
    private var followerReadList: [ClientSession] = []
    private var followerReader: LoopTimer?
    /// How long an async follower's answer may wait unread when the client sends nothing more (ms).
    static let followerReadIntervalMs: UInt64 = 10
    /// The server certificate of clients' TLS (nil while `client_tls` is `disable`). Sessions keep the
    /// context they started with; a reload builds a new one for later sessions.
    private(set) var clientTLS: TLSContext?
    /// The TLS context of every backend whose `tls` is not `disable`, by backend name.
    private(set) var backendTLS: [String: TLSContext] = [:]
    /// Where each backend's host name points (see ProxyServer+Addresses), and the lookups in flight.
    var addressBook = BackendAddresses(refreshMs: 0)
    var lookups: [String: HostLookup] = [:]
    /// Logins to each backend by name, and the last refusal (SHOW BACKENDS, metrics): a backend that starts
    /// refusing (a rotated password, max_connections reached) shows here before anyone reads the logs.
    private(set) var backendLogins: [String: BackendLoginStats] = [:]
    /// Client logins refused since start, by SQLSTATE (metrics).
    private(set) var clientLoginRefusals: [String: Int] = [:]
    /// Their log lines: 10 a second (a token bucket, as for divergence records).
    private var refusalLogLimiter = DivergenceLimiter(perSecond: 10)
    /// The state file's routes this config does not have, written back unchanged.
    private var routesNotConfigured: [String: PersistedState.Route] = [:]
    /// Held from start to exit: one proxy per state file.
    private var stateLock: StateFileLock?
    /// Between `start` and a clean stop: the state file then says a proxy is running, so one that finds the
    /// mark at its start knows its predecessor did not stop cleanly.
    private var servingSince: Double?
    /// Numbers each pause (SHOW ROUTES `pause_id`): MARK IN SYNC names the pause its verify ran under.
    /// Seeded at random: ids do not repeat across restarts (a verify begun before one cannot name a pause
    /// taken after it).
    private var lastPauseID = Int.random(in: 1...1_000_000_000)
    /// The running mark the state file had at start (its writer did not stop cleanly): routes a reload
    /// brings back from the file are restored as out of sync too.
    private var uncleanPredecessor: PersistedState.Running?
    /// The clean stop has written the state file for the last time.
    private var stopped = false
    /// Restart-only settings the last reload read with another value than the running one (SHOW CONFIG).
    private(set) var pendingRestart: [String: String?] = [:]
    private var saltedCache: [String: [UInt8]] = [:]
    private var shutdownDeadline: UInt64?
    var isShuttingDown: Bool { shutdownDeadline != nil }
    /// Idle logged-in backend connections sessions left, for later sessions (nil: `backend_pool_size` is 0).
    private(set) var idleBackends: IdleBackendPool?
    private var onStopped: (() -> Void)?
    public private(set) var activeSessions = 0
    /// Run-time state of every route, restored from the state file.
    private(set) var routes: [String: RouteRuntime] = [:]
    let analyzer = QueryAnalyzer()
    private(set) var crossSchema = CrossSchemaDetector(knownSchemas: [])
    let divergences: DivergenceRecorder
    /// How many records one statement may write a second (`divergence_log_limit`).
    private var divergenceLimiter: DivergenceLimiter
    /// The same for a route and kind as a whole, ten times as many, checked before a statement is parsed.
    private var routeDivergenceLimiter: DivergenceLimiter
    private(set) lazy var admin = AdminConsole(server: self)
    /// Re-reads the config file (set by `cutover serve`); used by SIGHUP and the admin RELOAD command.
    public var reloader: (() throws -> CutoverConfig)?

    /// Fails if the state file exists but cannot be read: a proxy must never silently forget a phase.
    public init(loop: EventLoop, config: CutoverConfig, logger: Logger) throws {
        self.loop = loop
        self.config = config
        writeHighWater = config.server.writeHighWater
        mirrorQueueLimits = (config.server.mirrorQueueBytes, config.server.mirrorQueueStatements)
        keepalive = Self.keepalive(config.server)
        self.logger = logger
        divergences = DivergenceRecorder(path: config.server.divergenceLog, capacity: config.server.divergenceMemory, logger: logger)
        (divergenceLimiter, routeDivergenceLimiter) = Self.divergenceLimiters(config.server.divergenceLogLimit)
        resolveAtStart()
        clientTLS = try Self.clientTLSContext(config.server)
        backendTLS = try Self.backendTLSContexts(config)
        if clientTLS != nil, let key = config.server.clientTLSKeyFile,
           let mode = (try? FileManager.default.attributesOfItem(atPath: key))?[.posixPermissions] as? Int, mode & 0o077 != 0 {
            // PostgreSQL refuses such a key; a Kubernetes secret is 0644 unless its defaultMode says otherwise.
            logger.warning("client TLS key file is readable by other users: chmod 600 it (or set the secret's defaultMode)",
                           metadata: ["path": "\(key)", "mode": "\(String(mode, radix: 8))"])
        }
        // The lock first: a second proxy on this file must not even read it as its own.
        stateLock = try config.server.stateFile.map { try StateFileLock(stateFile: $0) }
        let persisted = try config.server.stateFile.map { try PersistedState.load(path: $0) } ?? PersistedState()
        if let previous = persisted.running {
            logger.warning("the previous proxy on this state file did not stop cleanly; routes in a dual phase are marked out of sync",
                           metadata: ["previous_pid": "\(previous.pid)", "file": "\(config.server.stateFile ?? "")"])
        }
        uncleanPredecessor = persisted.running
        for (name, r) in config.routes { routes[name] = restoredRoute(r, persisted.routes[name], previousRun: persisted.running) }
        // Routes the file knows and this config does not (commented out, a typo) keep their saved state: the
        // next save must not erase a phase a later config brings back.
        routesNotConfigured = persisted.routes.filter { config.routes[$0.key] == nil }
        crossSchema = Self.detector(config)
        for (name, r) in routes.sorted(by: { $0.key < $1.key }) {
            logger.info("route", metadata: ["route": "\(name)", "phase": "\(r.phase.rawValue)", "mirror": "\(r.mirror.rawValue)",
                                            "restored": "\(persisted.routes[name] != nil)"])
        }
    }

    /// The port actually bound (useful with port 0 in tests).
    public var port: Int { listener?.port ?? 0 }
    public var sessionCount: Int { sessions.count }

    private func openUnixListener(port: Int) throws {
        guard let directory = config.server.unixSocketDirectory else { return }
        unixListener = try TCPListener(loop: loop, unixPath: PostgresSocket.path(directory: directory, port: port)) { [unowned self] c in
            self.accept(c)
        }
    }

    public func start() throws {
        configurePool(config.server)
        readCatalogsAtStart()
        // The socket file first when the port is known: a client (or a readiness probe) that reaches the TCP
        // port then finds the socket file ready too. Port 0 is known only once the TCP listener is bound.
        let configuredPort = config.server.listenPort
        if configuredPort != 0 { try openUnixListener(port: configuredPort) }
        do {
            listener = try TCPListener(loop: loop, host: config.server.listenHost, port: configuredPort) { [unowned self] c in
                self.accept(c)
            }
            if configuredPort == 0 { try openUnixListener(port: port) }
        } catch {
            unixListener?.close()
            unixListener = nil
            listener?.close()
            listener = nil
            throw error
        }
        let timer = LoopTimer(loop: loop) { [unowned self] in self.sweep() }
        timer.start(timeoutMs: 100, repeatMs: 100)
        janitor = timer
        startedAt = loop.now
        logger.info("listening", metadata: ["address": "\(config.server.listenHost):\(port)", "routes": "\(config.routes.keys.sorted())"])
        if let path = unixListener?.unixPath { logger.info("listening", metadata: ["socket": "\(path)"]) }
        if let host = config.server.metricsHost {
            do {
                metricsEndpoint = try MetricsEndpoint(loop: loop, server: self, host: host, port: config.server.metricsPort)
            } catch {
                listener?.close()
                listener = nil
                unixListener?.close()
                unixListener = nil
                throw error
            }
            logger.info("metrics endpoint listening", metadata: ["address": "\(host):\(metricsPort)", "paths": "/metrics /healthz /readyz"])
        }
        // Marked running before the loop turns (no client is served before it does): from here on only a
        // clean stop clears the mark. A start that cannot write it does not serve.
        servingSince = Date().timeIntervalSince1970
        do { try persist() } catch {
            servingSince = nil
            listener?.close()
            listener = nil
            unixListener?.close()
            unixListener = nil
            metricsEndpoint?.close()
            metricsEndpoint = nil
            throw error
        }
    }

    /// The metrics endpoint's bound port (0 when there is none).
    public var metricsPort: Int { metricsEndpoint?.port ?? 0 }

    /// Why `/readyz` says no: shutting down (Kubernetes then stops sending new clients), or not listening.
    var notReadyReason: String? {
        if shutdownDeadline != nil { return "shutting down" }
        if listener == nil { return "not listening" }
        return nil
    }

    // MARK: sessions

    private func accept(_ c: TCPConnection) {
        c.setKeepalive(keepalive)
        var refusal: ErrorFields?
        // max_clients counts clients that logged in; logins still in progress have bounds of their own (six
        // silent connections used to lock a max_clients = 5 proxy out for auth_timeout).
        let address = c.peerAddress?.host ?? "local"
        let logins = sessions.count - activeSessions
        if shutdownDeadline != nil { refusal = ProxyError.shuttingDown() }
        else if activeSessions >= config.server.maxClients { refusal = ProxyError.tooManyClients(config.server.maxClients) }
        else if logins >= loginLimit { refusal = ProxyError.tooManyLogins(loginLimit, from: nil) }
        else if loginsByAddress[address, default: 0] >= Self.loginsPerAddress { refusal = ProxyError.tooManyLogins(Self.loginsPerAddress, from: address) }
        // Refused clients still get to read their error after the SSL exchange, up to a margin; past it
        // they are cut off at once so a connection flood cannot grow memory.
        if let error = refusal, sessions.count >= config.server.maxClients + 64 {
            var w = ByteWriter()
            error.encode(into: &w)
            c.write(w.bytes)
            c.closeAfterWrites()
            // A flood would write a line each (200 connections, 200 lines): at most 10 a second.
            if let suppressed = refusalLogLimiter.admit("client refused", nowMs: loop.now) {
                logger.warning("client refused", metadata: ["reason": "\(error.message ?? "")", "peer": "\(c.peerDescription)",
                                                            "not_logged_before": "\(suppressed)"])
            }
            return
        }
        let id = nextSessionID
        nextSessionID += 1
        var secret: Int32
        repeat { secret = Int32(bitPattern: UInt32.random(in: 1...UInt32.max)) } while sessions[secret] != nil
        let session = ClientSession(id: id, client: c, server: self, config: config, proxySecret: secret,
                                    refusal: refusal)
        sessions[secret] = session
        if refusal == nil {
            loginAddresses[secret] = address
            loginsByAddress[address, default: 0] += 1
        }
    }

    func sessionStarted(_ s: ClientSession) {
        activeSessions += 1
        loginEnded(s)
    }

    /// Logins in progress: at most this many in all, and `loginsPerAddress` from one client address.
    var loginLimit: Int { max(128, 2 * config.server.maxClients) }
    static let loginsPerAddress = 32
    /// The client address of each session still logging in, and how many logins each address has open.
    private var loginAddresses: [Int32: String] = [:]
    private var loginsByAddress: [String: Int] = [:]

    private func loginEnded(_ s: ClientSession) {
        guard let address = loginAddresses.removeValue(forKey: s.proxySecret) else { return }
        loginsByAddress[address, default: 1] -= 1
        if loginsByAddress[address] == 0 { loginsByAddress[address] = nil }
    }

    func sessionEnded(_ s: ClientSession, wasActive: Bool) {
        if wasActive { activeSessions -= 1 }
        loginEnded(s)
        loop.retire(s) // this usually runs inside one of the session's own callbacks
        sessions[s.proxySecret] = nil
        if shutdownDeadline != nil && sessions.isEmpty { finishShutdown() }
    }

    // MARK: cancel

    /// A client's CancelRequest carries the pid it was given and the proxy's secret; the leader gets its real key.
    func forwardCancel(_ key: CancelRequest) {
        guard let s = sessions[key.secretKey], s.clientVisiblePIDMatches(key.processID), cancelStatement(of: s) else {
            logger.info("cancel request matched no session")
            return
        }
    }

    /// Sends a CancelRequest with the real key to the backend `s`'s leader runs on; false if it has no
    /// logged-in leader to cancel on. The follower is cancelled too when it runs the very statement the
    /// leader does (async mode; see `ClientSession.followerRunsLeadersLastUnit`): otherwise it would finish
    /// and commit a write the client was told was cancelled.
    @discardableResult
    func cancelStatement(of s: ClientSession) -> Bool {
        guard let leader = s.leader, leader.key != nil else { return false }
        sendCancel(to: leader, of: s)
        if s.followerRunsLeadersLastUnit(), let follower = s.follower { sendCancel(to: follower, of: s) }
        return true
    }

    /// A CancelRequest with `link`'s real key, to the server it is connected to (not to a fresh choice among
    /// the backend's addresses: a name with several, or one that moved since, would reach a server without
    /// that key).
    private func sendCancel(to link: BackendLink, of s: ClientSession) {
        guard let real = link.key else { return }
        link.isTainted = true // a cancel still on its way must not reach the next session's statement
        guard let (address, port) = link.connection.peerAddress, !address.isEmpty else {
            logger.warning("cancel request not forwarded: the backend connection has no peer address", metadata: ["backend": "\(link.backendName)"])
            return
        }
        logger.info("forwarding cancel", metadata: ["session": "\(s.id)", "backend": "\(link.backendName)", "role": "\(link === s.leader ? "leader" : "follower")"])
        _ = CancelForwarder(loop: loop, address: address, port: port, key: real, timeoutMs: UInt64(config.server.connectTimeout * 1000))
    }

    /// The idle backend pool as `backend_pool_size` and `backend_idle_timeout` say (at start and at a reload).
    func configurePool(_ s: ServerConfig) {
        guard s.backendPoolSize > 0 else {
            idleBackends?.terminateAll()
            idleBackends = nil
            return
        }
        let pool = idleBackends ?? IdleBackendPool(sizePerLogin: s.backendPoolSize, maxTotal: s.backendPoolTotal, idleTimeoutMs: 0)
        pool.sizePerLogin = s.backendPoolSize
        pool.maxTotal = s.backendPoolTotal
        pool.idleTimeoutMs = UInt64(s.backendIdleTimeout * 1000)
        pool.lifetimeMs = UInt64(s.backendLifetime * 1000)
        idleBackends = pool
    }

    /// Parks a session's idle leader for a later session, unless it was logged in before a reload changed
    /// the backends, or it is connected to an address its host name no longer resolves to (a failover's
    /// DNS switch: later sessions must reach the new server). False: the caller ends it.
    func parkIdle(_ link: BackendLink) -> Bool {
        guard let pool = idleBackends, let key = link.poolKey, let backend = config.backends[link.backendName] else { return false }
        if !backend.isUnixSocket, let known = addressBook.entries[backend.name]?.addresses,
           let peer = link.connection.peerAddress?.host, !known.contains(peer) {
            return false
        }
        return pool.park(link, key: key, now: loop.now)
    }

    /// The session with the admin console's id (SHOW SESSIONS), if it is still there.
    func session(withID id: Int) -> ClientSession? {
        sessions.values.first { Int($0.id) == id && $0.state != .closed }
    }

    /// KILL: the session ends as if its client had gone, and the client is told why (57P01, what
    /// pg_terminate_backend sends). A statement still running on its leader is cancelled first, so the
    /// backend lets go of its locks now rather than when the statement ends.
    func kill(_ s: ClientSession) {
        if s.state == .forwarding && s.pendingReadyForQuery > 0 { cancelStatement(of: s) } // (idle in a transaction, Terminate suffices)
        logger.warning("session killed by an admin", metadata: ["session": "\(s.id)", "user": "\(s.user)"])
        if s.state == .draining { return s.forceFinish("the session was killed by an admin") } // its client is gone: stop waiting for the follower
        s.failClient(ProxyError.fatal("57P01", "terminating connection due to administrator command"))
    }

    // MARK: backends

    /// A client's login was refused (wrong password, unknown database or user, no certificate, a malformed
    /// startup): logged with who and from where (a password never), and counted by SQLSTATE for metrics.
    /// Authentication failures are warnings (someone may be guessing); the rest, a notice. The names come
    /// from an unauthenticated client, so they are cut and escaped, and at most 10 lines a second are
    /// written (the next one says how many were left out; the counter counts them all).
    func noteClientLoginRefused(_ error: ErrorFields, startup: StartupMessage?, peer: String) {
        let state = error.sqlState ?? "XX000"
        clientLoginRefusals[state, default: 0] += 1
        guard let suppressed = refusalLogLimiter.admit("client login refused", nowMs: loop.now) else { return }
        var metadata: Logger.Metadata = ["sqlstate": "\(state)", "error": "\(LogText.clean(error.message ?? "", limit: 200))", "peer": "\(peer)",
                                         "user": "\(LogText.clean(startup?.user ?? ""))", "database": "\(LogText.clean(startup?.database ?? ""))"]
        if suppressed > 0 { metadata["not_logged_before"] = "\(suppressed)" }
        if state.hasPrefix("28") { logger.warning("client login refused", metadata: metadata) }
        else { logger.notice("client login refused", metadata: metadata) }
    }

    /// Sessions' open backend connections by backend name, leaders and followers apart (a draining session
    /// may still name a leader it has already ended).
    func backendConnectionCounts() -> (leaders: [String: Int], followers: [String: Int]) {
        var leaders: [String: Int] = [:], followers: [String: Int] = [:]
        for s in sessions.values {
            if let l = s.leader, !l.isClosed { leaders[l.backendName, default: 0] += 1 }
            if let f = s.follower, !f.isClosed { followers[f.backendName, default: 0] += 1 }
        }
        return (leaders, followers)
    }

    /// A login to `backend` ended: succeeded (`failure` nil) or refused / failed with `failure`.
    func noteBackendLogin(_ backend: String, failure: ErrorFields?) {
        guard let failure else { backendLogins[backend, default: BackendLoginStats()].succeeded += 1; return }
        backendLogins[backend, default: BackendLoginStats()].failed += 1
        backendLogins[backend]!.lastFailure = ((failure.sqlState.map { $0 + " " } ?? "") + (failure.message ?? "login failed"), loop.now)
    }

    /// Follower logins in flight at once, proxy-wide (`server.follower_logins`). A flip gives every session
    /// of a route a follower at once; on the follower's host each is a forked backend and an authentication,
    /// and started together they stalled the route's transactions (measured: 38–194 ms with 8 sessions on
    /// one CPU).
    private lazy var followerLogins = LoginGate<BackendLink>(limit: config.server.followerLogins)

    func admitFollowerLogin(_ link: BackendLink) {
        if followerLogins.request(link) { link.connect(nowNs: loop.nanoseconds) }
    }

    /// A follower's login ended: a link still waiting leaves the queue; an admitted one frees its slot.
    func followerLoginSettled(_ link: BackendLink) {
        if followerLogins.withdraw(where: { $0 === link }) { return }
        while let next = followerLogins.finished() {
            if next.isClosed { continue } // its slot is released by the next finished()
            next.connect(nowNs: loop.nanoseconds)
            return
        }
    }

    /// Puts a session on the follower-read timer's list (it leaves once its follower owes nothing).
    func readFollowerLater(_ s: ClientSession) {
        guard !s.inFollowerReadList else { return }
        s.inFollowerReadList = true
        followerReadList.append(s)
        if followerReadList.count == 1 {
            if followerReader == nil { followerReader = LoopTimer(loop: loop) { [unowned self] in self.readFollowers() } }
            followerReader?.start(timeoutMs: Self.followerReadIntervalMs, repeatMs: Self.followerReadIntervalMs)
        }
    }

    private func readFollowers() {
        let list = followerReadList
        followerReadList = []
        for s in list {
            // A session that sent a batch or read its follower within the interval is left to do so
            // again (an active client's next batch reads the answers): a timer read would find nothing.
            if !s.readFollowerWithin(Self.followerReadIntervalMs) {
                s.flushFollowerOutbox() // a transaction left open: its statements should not wait for its end
                s.catchUpFollower()
            }
            if s.state == .forwarding, s.followerOwesAnswers, s.follower?.connection.readsOnDemand == true {
                followerReadList.append(s)
            } else {
                s.inFollowerReadList = false
            }
        }
        if followerReadList.isEmpty { followerReader?.stop() }
    }

    /// PBKDF2 costs about a millisecond; backends reuse salts, so derive once per (password, salt, iterations).
    func saltedPassword(_ password: String, _ salt: [UInt8], _ iterations: Int) -> [UInt8] {
        let key = "\(iterations):\(Crypto.base64(salt)):\(password)"
        if let hit = saltedCache[key] { return hit }
        let value = SCRAMClient.saltedPassword(password, salt: salt, iterations: iterations)
        if saltedCache.count > 1024 { saltedCache.removeAll() }
        saltedCache[key] = value
        return value
    }

    static func detector(_ config: CutoverConfig) -> CrossSchemaDetector {
        CrossSchemaDetector(knownSchemas: Set(config.routes.values.compactMap(\.legacySchema)))
    }

    // MARK: divergences

    func recordDivergence(session: ClientSession, kind: DivergenceKind, statement: String?, leader: StatementOutcome?,
                          follower: StatementOutcome?, leaderMs: Double?, followerMs: Double?, detail: String?) {
        guard let route = session.route else { return }
        route.stats.divergences[kind, default: 0] += 1
        // A flood of statements with literals would parse each text: bound the route and kind first.
        guard routeDivergenceLimiter.admit("\(route.name)\u{0}\(kind.rawValue)", nowMs: loop.now) != nil else { return }
        var fingerprint: String?
        var text: String?
        if let statement {
            let a = analyzer.analyze(statement)
            fingerprint = a.fingerprint
            // Literal values can be personal data: log them only when configured to.
            text = config.server.logLiterals ? statement : (a.normalized ?? "<statement that does not parse>")
        }
        guard let suppressed = divergenceLimiter.admit("\(route.name)\u{0}\(kind.rawValue)\u{0}\(fingerprint ?? text ?? "")",
                                                       nowMs: loop.now) else { return }
        var d = Divergence(route: route.name, phase: session.sessionPhase, mirror: session.mirrorMode, session: session.id,
                           applicationName: session.applicationName, user: session.user, kind: kind,
                           fingerprint: fingerprint, statement: text, leader: leader, follower: follower,
                           leaderMs: leaderMs, followerMs: followerMs, detail: detail)
        if suppressed > 0 { d.suppressed = suppressed }
        divergences.record(d)
    }

    /// A divergence of the route as a whole (not of one session's statement).
    func recordRouteDivergence(_ route: RouteRuntime, kind: DivergenceKind, detail: String) {
        route.stats.divergences[kind, default: 0] += 1
        divergences.record(Divergence(route: route.name, phase: route.phase, mirror: route.mirror, session: 0, applicationName: "",
                                      user: "", kind: kind, detail: detail))
    }

    /// Reports statements naming another route's schema: they stop working once the schemas live apart.
    func checkCrossSchema(_ unit: WorkUnit, session: ClientSession, route: RouteRuntime) {
        for text in unit.statements { checkCrossSchema(text, session: session, route: route) }
        for text in unit.parsed { checkCrossSchema(text, session: session, route: route) }
    }

    private func checkCrossSchema(_ text: String, session: ClientSession, route: RouteRuntime) {
        let foreign = crossSchema.foreignSchemas(in: text, own: route.config.legacySchema, analyzer: analyzer)
        guard !foreign.isEmpty else { return }
        let key = analyzer.analyze(text).fingerprint ?? text
        if route.crossSchemaSeen.contains(key) {
            route.stats.divergences[.crossSchema, default: 0] += 1
            return
        }
        if route.crossSchemaSeen.count < 10_000 { route.crossSchemaSeen.insert(key) }
        recordDivergence(session: session, kind: .crossSchema, statement: text, leader: nil, follower: nil, leaderMs: nil,
                         followerMs: nil, detail: "names schema \(foreign.sorted().joined(separator: ", ")) from route \(route.name) (schema \(route.config.legacySchema ?? "-")); it cannot work once the schemas live on separate instances")
    }

    // MARK: phases

    struct AdminError: Error, CustomStringConvertible {
        var code: String
        var message: String
        var detail: String?
        var description: String { message }
    }

    /// A route's run-time state: from the state file when it has the route, else from the config.
    private func restoredRoute(_ config: RouteConfig, _ file: PersistedState.Route?, previousRun: PersistedState.Running?) -> RouteRuntime {
        let restored = file?.restored(previousRun: previousRun)
        let saved = restored?.route
        let r = RouteRuntime(config: config, phase: saved?.phase ?? config.phase, mirror: saved?.mirror ?? config.mirror)
        if let saved {
            if saved.inSync == false {
                r.inSync = false
                let reason = saved.outOfSyncReason ?? "unknown"
                r.outOfSyncReason = reason + (file?.inSync == false ? " (before a restart)" : "")
            }
            // A file from before these were kept: a route in `new` has made legacy miss writes.
            if saved.legacyMissedWrites ?? (saved.phase == .new) { r.legacyMissedWritesBeforeRestart = true }
            if saved.paused == true {
                // No session exists yet: the pause is settled from the start, and holds every new transaction.
                lastPauseID += 1
                let p = RoutePause(id: lastPauseID, reason: .manual, startedAt: loop.now, deadline: loop.now, onSettled: nil)
                p.settled = true
                r.pause = p
            }
            if let flip = file?.flip { r.lastFlip = "\(flip.from.rawValue) → \(flip.to.rawValue) aborted (cut short by a restart)" }
            for note in restored?.notes ?? [] { logger.warning("route restored", metadata: ["route": "\(config.name)", "note": "\(note)"]) }
        }
        r.onPersistentChange = { [unowned self] in self.persistOrLog() }
        return r
    }

    /// Persists, logging a failure (for changes that cannot be undone when the file cannot be written).
    func persistOrLog() {
        do { try persist() } catch {
            logger.error("cannot write the state file", metadata: ["error": "\(error)"])
        }
    }

    func persist() throws {
        guard let path = config.server.stateFile, !stopped else { return }
        var s = PersistedState(routes: routesNotConfigured, running: servingSince.map { .init(pid: getpid(), since: $0) })
        for (name, r) in routes {
            var manual = false
            if let p = r.pause, !p.isFlip { manual = true }
            s.routes[name] = PersistedState.Route(
                phase: r.phase, mirror: r.mirror, inSync: r.inSync, outOfSyncReason: r.outOfSyncReason,
                legacyMissedWrites: r.phase == .new && (r.unmirroredStatements > 0 || r.legacyMissedWritesBeforeRestart),
                paused: manual ? true : nil, flip: r.flipInProgress)
        }
        do { try s.save(path: path) } catch {
            throw AdminError(code: "58030", message: "\(error)")
        }
    }

    /// Flips a route: the route pauses, in-flight transactions finish, follower queues drain, then every
    /// session switches. A flip that adds a follower first logs one in for every session (warm-up), so the
    /// pause does not wait on logins and the first mirrored statements do not queue behind them.
    func setPhase(_ name: String, to target: Phase, force: Bool, reply: @escaping (Result<AdminResult, AdminError>) -> Void) {
        guard let r = routes[name] else { return reply(.failure(AdminError(code: "42704", message: "no route named \"\(name)\""))) }
        let from = r.phase
        if let refusal = flipRefusal(r, from: from, to: target, force: force) { return reply(.failure(refusal)) }
        if target.follower != nil && r.catalogs[target.leader] == nil {
            // Mirroring needs the new phase's leader's catalog before its first write: read first, then flip.
            return refreshCatalog(r, side: target.leader) { [unowned self] failure in
                if let failure {
                    return reply(.failure(AdminError(code: "58000", message: "cannot flip \(name): the \(target.leader.rawValue) side's catalog could not be read: \(failure)")))
                }
                self.setPhase(name, to: target, force: force, reply: reply)
            }
        }
        let started = loop.now
        guard from.follower == nil, let side = target.follower else {
            return flip(r, from: from, to: target, force: force, started: started, warmUpMs: 0, reply: reply)
        }
        let opened = r.sessions.values.reduce(0) { $0 + ($1.openStandby(side: side) ? 1 : 0) }
        guard opened > 0 else { return flip(r, from: from, to: target, force: force, started: started, warmUpMs: 0, reply: reply) }
        logger.notice("flip warming up", metadata: ["route": "\(name)", "to": "\(target.rawValue)", "standby_followers": "\(opened)"])
        let bound = UInt64(max(config.server.flipTimeout, 1) * 1000)
        r.warmUp = FlipWarmUp(deadline: started + bound) { [unowned self] in
            self.logger.notice("flip warmed up", metadata: ["route": "\(name)", "standby_followers": "\(opened)", "ms": "\(self.loop.now - started)"])
            if let refusal = self.flipRefusal(r, from: from, to: target, force: force) {
                self.dropStandbys(r)
                return reply(.failure(refusal))
            }
            self.flip(r, from: from, to: target, force: force, started: started, warmUpMs: self.loop.now - started, reply: reply)
        }
        checkFlipWarmUp(r)
    }

    /// Why a flip of `r` cannot start now, if it cannot (checked again after a warm-up).
    private func flipRefusal(_ r: RouteRuntime, from: Phase, to target: Phase, force: Bool) -> AdminError? {
        let name = r.name
        if r.warmUp != nil { return AdminError(code: "55006", message: "route \(name) is already flipping (its followers are logging in); wait") }
        if r.phase != from { return AdminError(code: "55006", message: "route \(name) changed phase to \(r.phase.rawValue) while the flip warmed up") }
        do { try from.transition(to: target, force: force) } catch {
            return AdminError(code: "55000", message: "cannot flip \(name): \(error)")
        }
        if let p = r.pause, p.isFlip || target.leader != from.leader || !p.settled {
            return AdminError(code: "55006", message: p.isFlip || target.leader != from.leader
                                ? "route \(name) is paused or already flipping; RESUME it or wait"
                                : "route \(name) is paused but not every session has reached an idle boundary yet; wait, or RESUME it")
        }
        if target.follower != nil, let problem = config.routesOntoThemselves().first(where: { $0.key == "routes.\(name).new" }) {
            // check-config refuses such a config; `serve` starts with it (a single-side rehearsal), but never mirrors it.
            return AdminError(code: "55000", message: "cannot flip \(name) to \(target.rawValue): \(problem.message)")
        }
        if target.leader != from.leader && !r.inSync && !force {
            // The follower is the stale side, and it is the one this flip would make the leader.
            let stale = from.follower?.rawValue ?? "follower"
            return AdminError(code: "55000", message: "route \(name) is out of sync (\(r.outOfSyncReason ?? "unknown")); making \(stale) the leader could lose writes",
                              detail: "The \(stale) side may lack writes. Re-synchronize it under PAUSE (cutover backfill\(stale == "legacy" ? " --reverse" : ""), "
                                + "then cutover verify --mark-in-sync), or add FORCE.")
        }
        return nil
    }

    /// Ends a flip's warm-up once no standby follower is still logging in, or at its deadline (the sessions
    /// whose standby is not in yet adopt it mid-login, as a follower without warm-up would be).
    func checkFlipWarmUp(_ r: RouteRuntime) {
        guard let w = r.warmUp else { return }
        guard loop.now >= w.deadline || !r.sessions.values.contains(where: { $0.standbyLoggingIn }) else { return }
        r.warmUp = nil
        let done = w.onDone
        w.onDone = nil
        done?()
    }

    /// Standbys the flip did not adopt (it was refused or aborted) are let go.
    private func dropStandbys(_ r: RouteRuntime) {
        for s in r.sessions.values { s.dropStandby() }
    }

    private func flip(_ r: RouteRuntime, from: Phase, to target: Phase, force: Bool, started: UInt64, warmUpMs: UInt64,
                      reply: @escaping (Result<AdminResult, AdminError>) -> Void) {
        let name = r.name
        if r.pause != nil {
            // A settled manual PAUSE (flipRefusal saw to it): every session is parked at an idle boundary, so the flip (one that
            // keeps the leader: PAUSE, backfill, SET PHASE dual-legacy, RESUME) applies at once.
            do { try switchPhase(r, from: from, to: target) } catch let e as AdminError { dropStandbys(r); return reply(.failure(e)) } catch {}
            return reply(.success(flipResult(name, from, target, r, stallMs: 0, started: started, warmUpMs: warmUpMs, followersReady: followersReady(r))))
        }
        // Every flip pauses the route: new transactions wait, in-flight ones finish, follower queues drain,
        // then all sessions switch at once, so none runs in the old phase after the flip (no write escapes
        // the new follower) and no transaction spans two phases.
        logger.notice("flip started", metadata: ["route": "\(name)", "from": "\(from.rawValue)", "to": "\(target.rawValue)"])
        // Saved before anything moves: a proxy killed from here to the switch finds it at its start and
        // reports the flip aborted (the route is in `from`, the phase this file still has).
        r.flipInProgress = PersistedState.Flip(from: from, to: target, startedAt: Date().timeIntervalSince1970)
        do { try persist() } catch let e as AdminError {
            r.flipInProgress = nil
            dropStandbys(r)
            return reply(.failure(e))
        } catch {}
        startPause(r, reason: .flip(from: from, to: target), timeout: config.server.flipTimeout) { [unowned self] settled, _ in
            if !settled {
                let holdouts = r.sessions.values.filter { !$0.isDrainedAtBoundary }.map { "session \($0.id) (\($0.user), \($0.applicationName.isEmpty ? "-" : $0.applicationName), \($0.describeActivity))" }
                self.endFlipUnswitched(r, "\(from.rawValue) → \(target.rawValue) aborted after \(self.config.server.flipTimeout) s")
                self.logger.warning("flip aborted", metadata: ["route": "\(name)", "holdouts": "\(holdouts)"])
                reply(.failure(AdminError(code: "57014", message: "flip of \(name) to \(target.rawValue) aborted after \(self.config.server.flipTimeout) s; the route stays in \(from.rawValue)",
                                          detail: "Still busy: " + holdouts.joined(separator: "; "))))
                return
            }
            guard target.leader != from.leader else { return self.finishFlip(r, from: from, to: target, started: started, warmUpMs: warmUpMs, reply: reply) }
            // Every session is held at an idle boundary: the old leader's sequences are final; carry them.
            self.carrySequences(r, from: from.leader, to: target.leader) { failure in
                if let failure {
                    self.endFlipUnswitched(r, "\(from.rawValue) → \(target.rawValue) failed: sequences not carried")
                    return reply(.failure(AdminError(code: "58000", message: "flip of \(name) to \(target.rawValue) aborted: the sequences could not be carried to the new leader; the route stays in \(from.rawValue)",
                                                     detail: failure)))
                }
                self.finishFlip(r, from: from, to: target, started: started, warmUpMs: warmUpMs, reply: reply)
            }
        }
    }

    /// The last step of a pausing flip: switch every session, lift the pause, answer.
    private func finishFlip(_ r: RouteRuntime, from: Phase, to target: Phase, started: UInt64, warmUpMs: UInt64,
                            reply: @escaping (Result<AdminResult, AdminError>) -> Void) {
        let name = r.name
        do { try switchPhase(r, from: from, to: target) } catch let e as AdminError {
            endFlipUnswitched(r, "\(from.rawValue) → \(target.rawValue) failed: \(e.message)")
            return reply(.failure(e))
        } catch {}
        let ready = followersReady(r) // before the held input goes on
        let stall = endPause(r)
        r.lastFlip = "\(from.rawValue) → \(target.rawValue) done, longest stall \(Int(stall)) ms"
        r.stats.lastFlipStallMs = stall
        r.stats.maxFlipStallMs = max(r.stats.maxFlipStallMs, stall)
        logger.notice("flip done", metadata: ["route": "\(name)", "to": "\(target.rawValue)", "longest_stall_ms": "\(stall)"])
        reply(.success(flipResult(name, from, target, r, stallMs: stall, started: started, warmUpMs: warmUpMs, followersReady: ready)))
    }

    /// An operator declares a repaired route in sync. Sound only if nothing was written since the check that
    /// showed both sides equal: so it must name the operator's PAUSE that is in force now, settled (every
    /// session held at an idle boundary), and the check must have run under it (`cutover verify
    /// --mark-in-sync` reads the pause id before it starts). In `new` it records that legacy was brought back
    /// in step (a reverse backfill), so re-entering dual-new does not mark the route.
    func markInSync(_ name: String, pauseID: Int, by who: String) throws -> AdminResult {
        guard let r = routes[name] else { throw AdminError(code: "42704", message: "no route named \"\(name)\"") }
        guard r.phase != .legacy else {
            throw AdminError(code: "55000", message: "route \(name) is in phase legacy: it has no follower to mark in sync",
                             detail: "Entering dual-legacy from legacy starts in sync (after a backfill under PAUSE).")
        }
        guard let p = r.pause, !p.isFlip, p.id == pauseID, p.settled else {
            let now = r.pause.map { $0.isFlip ? "a flip's pause" : "pause \($0.id)\($0.settled ? "" : ", not settled yet")" } ?? "no pause"
            throw AdminError(code: "55000", message: "MARK IN SYNC \(name) needs the route held by pause \(pauseID), settled; it has \(now)",
                             detail: "PAUSE the route, then run cutover verify --mark-in-sync: it checks both sides under that pause.")
        }
        // A session that stopped mirroring (its follower lost, timed out, overflowed) writes to the leader
        // alone for the rest of its life: the route cannot be in sync while it runs.
        if r.phase.follower != nil, let alone = r.sessions.values.first(where: { $0.state == .forwarding && $0.follower == nil }) {
            throw AdminError(code: "55000", message: "MARK IN SYNC \(name): session \(alone.id) runs without a follower (its mirroring stopped), so its writes reach one side only",
                             detail: "End it first (KILL \(alone.id)); its client reconnects with a follower.")
        }
        let before = r.inSync ? (r.phase == .new ? "legacy behind" : "in sync") : "out of sync (\(r.outOfSyncReason ?? "unknown"))"
        let saved = (r.inSync, r.outOfSyncReason, r.unmirroredStatements, r.legacyMissedWritesBeforeRestart)
        r.inSync = true
        r.outOfSyncReason = nil
        if r.phase == .new {
            r.unmirroredStatements = 0
            r.legacyMissedWritesBeforeRestart = false
        }
        do { try persist() } catch {
            (r.inSync, r.outOfSyncReason, r.unmirroredStatements, r.legacyMissedWritesBeforeRestart) = saved
            throw error
        }
        logger.notice("route marked in sync", metadata: ["route": "\(name)", "by": "\(who)", "pause_id": "\(pauseID)", "was": "\(before)"])
        return AdminResult(columns: ["route", "phase", "was", "marked_by"], rows: [[name, r.phase.rawValue, before, who]], tag: "MARK IN SYNC")
    }

    /// A pausing flip that did not switch: the pause ends, standbys go, and the saved flip is cleared.
    private func endFlipUnswitched(_ r: RouteRuntime, _ outcome: String) {
        endPause(r)
        dropStandbys(r)
        r.lastFlip = outcome
        r.flipInProgress = nil
        persistOrLog()
    }

    /// Moves a quiet route (every session drained at an idle boundary) to `target`: sync state, persist,
    /// then each session adds, drops or swaps its follower.
    private func switchPhase(_ r: RouteRuntime, from: Phase, to target: Phase) throws {
        let wasInSync = r.inSync, reason = r.outOfSyncReason
        let unmirrored = r.unmirroredStatements, missedBefore = r.legacyMissedWritesBeforeRestart
        let flipRecord = r.flipInProgress
        r.phase = target
        r.flipInProgress = nil // saved in the same write as the new phase
        if target.follower == nil { r.inSync = true; r.outOfSyncReason = nil }
        if from.follower == nil, let side = target.follower {
            // Entering a dual phase: the follower is only as fresh as the last backfill. Going back from
            // `new`, the proxy knows legacy missed every write made since; from `legacy`, the operator
            // backfilled the new side before this flip (see the runbook).
            r.inSync = true
            r.outOfSyncReason = nil
            if side == .legacy && (r.unmirroredStatements > 0 || r.legacyMissedWritesBeforeRestart) {
                let missed = "\(r.unmirroredStatements) statements run while the route was in phase new"
                    + (r.legacyMissedWritesBeforeRestart ? ", and those before the proxy's last restart" : "")
                r.markOutOfSync("legacy missed \(missed)")
                recordRouteDivergence(r, kind: .unmirroredWrites,
                                      detail: "the route returned to \(target.rawValue) from \(from.rawValue); legacy missed \(missed); re-sync it before making it the leader again")
            }
        }
        if target.follower != nil {
            r.unmirroredStatements = 0
            r.legacyMissedWritesBeforeRestart = false
        }
        do { try persist() } catch {
            r.phase = from
            r.flipInProgress = flipRecord
            r.inSync = wasInSync
            r.outOfSyncReason = reason
            r.unmirroredStatements = unmirrored
            r.legacyMissedWritesBeforeRestart = missedBefore
            throw error
        }
        r.stats.flips += 1
        for s in Array(r.sessions.values) {
            s.applyRoutePhase()
            s.dropStandby() // adopted by now if the new phase has a follower
        }
    }

    /// Sessions whose follower was logged in when the flip switched them (all of them, after a warm-up).
    private func followersReady(_ r: RouteRuntime) -> Int {
        r.sessions.values.reduce(0) { $0 + ($1.follower?.isReady == true ? 1 : 0) }
    }

    private func flipResult(_ name: String, _ from: Phase, _ to: Phase, _ r: RouteRuntime, stallMs: Double, started: UInt64,
                            warmUpMs: UInt64, followersReady: Int) -> AdminResult {
        AdminResult(columns: ["route", "from", "to", "sessions", "longest_stall_ms", "duration_ms", "warm_up_ms", "followers_ready"],
                    rows: [[name, from.rawValue, to.rawValue, "\(r.sessions.count)", "\(Int(stallMs))", "\(loop.now - started)",
                            "\(warmUpMs)", to.follower == nil ? nil : "\(followersReady)"]],
                    tag: "SET PHASE")
    }

    func setMirror(_ name: String, to mode: MirrorMode) throws -> AdminResult {
        guard let r = routes[name] else { throw AdminError(code: "42704", message: "no route named \"\(name)\"") }
        let old = r.mirror
        r.mirror = mode
        do { try persist() } catch { r.mirror = old; throw error }
        for s in r.sessions.values where s.isDrainedAtBoundary { s.applyRoutePhase() }
        return AdminResult(columns: ["route", "mirror"], rows: [[name, mode.rawValue]], tag: "SET MIRROR")
    }

    /// Holds new transactions on `r` back; `onSettled(true)` once every session is drained at a boundary,
    /// `onSettled(false)` at the deadline.
    func startPause(_ r: RouteRuntime, reason: RoutePause.Reason, timeout: Double, onSettled: @escaping (Bool, RoutePause) -> Void) {
        lastPauseID += 1
        let p = RoutePause(id: lastPauseID, reason: reason, startedAt: loop.now, deadline: loop.now + UInt64(timeout * 1000), onSettled: nil)
        p.onSettled = { [unowned p] ok in onSettled(ok, p) }
        r.pause = p
        if !p.isFlip { persistOrLog() } // an operator's PAUSE survives a restart
        for s in r.sessions.values { s.updateFollowerReading() } // the pause waits for their answers
        checkPause(r)
    }

    /// Settles a pause if every session of the route is drained at an idle boundary.
    func checkPause(_ r: RouteRuntime) {
        guard let p = r.pause, !p.settled else { return }
        guard r.sessions.values.allSatisfy({ $0.isDrainedAtBoundary }) else { return }
        p.settled = true
        if let settle = p.onSettled {
            p.onSettled = nil
            settle(true)
        }
    }

    /// Lifts a pause; held input proceeds. Returns the longest time any client waited, in ms.
    @discardableResult
    func endPause(_ r: RouteRuntime) -> Double {
        guard let p = r.pause else { return 0 }
        r.pause = nil
        if !p.isFlip { persistOrLog() }
        // A PAUSE still waiting for its sessions (a RESUME came first) is answered now, not never.
        if let settle = p.onSettled {
            p.onSettled = nil
            settle(false)
        }
        var longest = p.longestStallMs
        for s in Array(r.sessions.values) { longest = max(longest, s.unpark()) }
        for s in Array(r.sessions.values) {
            s.reachedIdleBoundaryIfIdle()
            s.updateFollowerReading()
        }
        return longest
    }

    // MARK: timeouts

    private func sweep() {
        let now = loop.now
        let nowNs = loop.nanoseconds
        let s = config.server
        if let pool = idleBackends, pool.count > 0 { pool.expire(now: now) }
        let connectLimitMs = UInt64(s.connectTimeout * 1000)
        for session in Array(sessions.values) {
            if s.connectTimeout > 0, session.state == .forwarding || session.state == .connecting {
                // Followers and standbys get the leader's per-address connect_timeout too (no allocation per sweep).
                session.follower?.fallBackIfConnectTimedOut(nowMs: now, limitMs: connectLimitMs)
                session.standby?.fallBackIfConnectTimedOut(nowMs: now, limitMs: connectLimitMs)
            }
            switch session.state {
            case .handshake where s.authTimeout > 0 && now - session.createdAt > UInt64(s.authTimeout * 1000):
                session.failClient(ProxyError.fatal("08006", "authentication timed out after \(Int(s.authTimeout)) s"))
            case .connecting where s.connectTimeout > 0 && now - (session.leader?.connectStartedAt ?? now) > UInt64(s.connectTimeout * 1000):
                if let leader = session.leader {
                    // A connect that never completes (a host gone after a failover) counts against that address,
                    // and the host's next address, if any, gets a connect_timeout of its own (as in libpq).
                    let reason = "timed out after \(s.connectTimeout) s"
                    if let address = leader.connectingTo {
                        backendConnectOutcome(leader.backendName, address: address, succeeded: false)
                        if leader.fallBack(reason) { continue }
                    }
                    session.failClient(leader.unavailable(reason))
                }
            case .draining:
                session.checkFollowerTimeout(nowMs: now, nowNs: nowNs)
                session.finishDrainingIfDone()
            case .forwarding:
                session.checkFollowerTimeout(nowMs: now, nowNs: nowNs)
                if session.closeWhenIdle && session.isIdleAtBoundary {
                    session.failClient(ProxyError.shuttingDown())
                } else if s.clientIdleTimeout > 0 && session.isIdleAtBoundary && session.parkedSince == nil
                            && now - session.lastActivity > UInt64(s.clientIdleTimeout * 1000) {
                    session.failClient(ProxyError.fatal("57P05", "terminating connection due to idle timeout of \(s.clientIdleTimeout) s"))
                } else if s.idleTransactionTimeout > 0 && session.isIdleInTransaction
                            && now - session.lastActivity > UInt64(s.idleTransactionTimeout * 1000) {
                    // PostgreSQL's own idle_in_transaction_session_timeout error; the leader's Terminate rolls back.
                    logger.warning("session idle in a transaction past idle_transaction_timeout, closed",
                                   metadata: ["session": "\(session.id)", "user": "\(session.user)", "route": "\(session.route?.name ?? "")"])
                    session.failClient(ProxyError.fatal("25P03", "terminating connection due to idle-in-transaction timeout of \(s.idleTransactionTimeout) s"))
                }
            default: break
            }
        }
        metricsEndpoint?.sweep(now: now)
        for r in routes.values {
            checkFlipWarmUp(r)
            guard let p = r.pause else { continue }
            if let settle = p.onSettled, now >= p.deadline { p.onSettled = nil; settle(false) } else { checkPause(r) }
        }
        if let deadline = shutdownDeadline, now >= deadline {
            logger.warning("shutdown timeout reached, closing remaining sessions", metadata: ["sessions": "\(sessions.count)"])
            for session in Array(sessions.values) {
                if session.state == .draining { session.forceFinish("the shutdown timeout ran out") } else { session.failClient(ProxyError.shuttingDown()) }
            }
        }
    }

    // MARK: lifecycle

    /// Replaces the config for new sessions; running sessions keep theirs. Route phases stay as they are.
    /// All of it or (when its TLS files or its divergence log cannot be opened now) none of it: a reload
    /// that rotated the client CA, say, must not take effect without its certificates.
    public func reload(_ fileConfig: CutoverConfig) throws {
        var newConfig = fileConfig
        // A user whose password did not change keeps its SCRAM salt: a new random salt at each reload would
        // tell known users (whose salt changes) from unknown ones (whose mock salt does not).
        for (name, u) in newConfig.users where u.scramFromPassword {
            if let old = config.users[name], old.scramFromPassword, old.md5 != nil, old.md5 == u.md5 { newConfig.users[name]?.scram = old.scram }
        }
        let restartOnly = newConfig.server.keepRestartOnlySettings(of: config.server)
        // The files were checked when the config was loaded; they may have changed since (a renewal in progress).
        let newClientTLS = try Self.clientTLSContext(newConfig.server)
        let newBackendTLS = try Self.backendTLSContexts(newConfig)
        guard divergences.open(newConfig.server.divergenceLog) else {
            throw AdminError(code: "F0000", message: "cannot open the divergence log \(newConfig.server.divergenceLog ?? "")")
        }
        // Idle backend connections logged in under the old backend settings (host, user, password, TLS) go.
        if newConfig.backends != config.backends { idleBackends?.terminateAll() }
        configurePool(newConfig.server)
        config = newConfig
        pendingRestart = restartOnly
        for (key, value) in restartOnly.sorted(by: { $0.key < $1.key }) {
            logger.warning("a setting changed in the file takes effect only at a restart", metadata: [
                "key": "\(key)", "in_effect": "\(newConfig.server.settings.first { $0.key == key }?.value ?? "none")", "in_file": "\(value ?? "none")"])
        }
        reconfigureAddresses(newConfig)
        saltedCache.removeAll()
        clientTLS = newClientTLS
        backendTLS = newBackendTLS
        for link in followerLogins.setLimit(newConfig.server.followerLogins) {
            if link.isClosed { followerLoginSettled(link) } else { link.connect(nowNs: loop.nanoseconds) } // a closed one frees its slot
        }
        for (name, rc) in newConfig.routes {
            if let r = routes[name] { r.config = rc } else {
                routes[name] = restoredRoute(rc, routesNotConfigured[name], previousRun: uncleanPredecessor)
                routesNotConfigured[name] = nil
            }
        }
        crossSchema = Self.detector(newConfig)
        // RELOAD also re-reads the leaders' catalogs (a schema changed behind the proxy's back).
        for r in routes.values where r.phase.follower != nil { refreshCatalog(r, side: r.phase.leader) { _ in } }
        divergences.setCapacity(newConfig.server.divergenceMemory)
        if newConfig.server.divergenceLogLimit != divergenceLimiter.perSecond {
            (divergenceLimiter, routeDivergenceLimiter) = Self.divergenceLimiters(newConfig.server.divergenceLogLimit)
        }
        logger.info("configuration reloaded", metadata: ["routes": "\(newConfig.routes.keys.sorted())", "users": "\(newConfig.users.count)"])
    }

    /// Per statement, and (ten times as many) per route and kind, checked before a statement is parsed.
    static func divergenceLimiters(_ perSecond: Int) -> (DivergenceLimiter, DivergenceLimiter) {
        (DivergenceLimiter(perSecond: perSecond), DivergenceLimiter(perSecond: perSecond * 10))
    }

    static func keepalive(_ s: ServerConfig) -> TCPKeepalive {
        TCPKeepalive(enabled: s.tcpKeepalive, idleSeconds: Int32(s.tcpKeepidle), intervalSeconds: Int32(s.tcpKeepintvl),
                     count: Int32(s.tcpKeepcnt), userTimeoutMs: Int32(s.tcpUserTimeout))
    }

    static func clientTLSContext(_ s: ServerConfig) throws -> TLSContext? {
        guard s.clientTLS != .disable, let certificate = s.clientTLSCertificateFile, let key = s.clientTLSKeyFile else { return nil }
        return try TLSContext(certificateFile: certificate, keyFile: key, clientCAFile: s.clientTLSCAFile,
                              clientCRLFile: s.clientTLSCAFile == nil ? nil : s.clientTLSCRLFile)
    }

    static func backendTLSContexts(_ config: CutoverConfig) throws -> [String: TLSContext] {
        var contexts: [String: TLSContext] = [:]
        for (name, b) in config.backends where b.tls != .disable {
            contexts[name] = try TLSContext(caFile: b.tls.verifies ? b.tlsCAFile : nil)
        }
        return contexts
    }

    /// Stops accepting; sessions end at their next idle boundary, all of them by the shutdown timeout.
    public func shutdown(then done: @escaping () -> Void) {
        guard shutdownDeadline == nil else { return }
        onStopped = done
        shutdownDeadline = loop.now + UInt64(config.server.shutdownTimeout * 1000)
        listener?.close()
        listener = nil
        unixListener?.close() // removes the socket file
        unixListener = nil
        logger.info("shutting down", metadata: ["sessions": "\(sessions.count)", "timeout_s": "\(config.server.shutdownTimeout)"])
        for session in Array(sessions.values) {
            if session.state == .forwarding {
                session.closeWhenIdle = true
                if session.isIdleAtBoundary { session.failClient(ProxyError.shuttingDown()) }
            } else {
                session.failClient(ProxyError.shuttingDown())
            }
        }
        if sessions.isEmpty { finishShutdown() }
    }

    private func finishShutdown() {
        // Every session has ended (drained, or its follower's missing statements recorded and the route
        // marked): the state file may now say this proxy stopped cleanly.
        servingSince = nil
        do { try persist() } catch {
            logger.error("cannot write the state file at shutdown; the next start will treat this stop as unclean",
                         metadata: ["error": "\(error)"])
        }
        // Written for the last time: work still finishing on the thread pool (a catalog read, a sequence
        // carry) must not write it after this clean stop. The lock stays held until the process exits.
        stopped = true
        idleBackends?.terminateAll()
        cancelLookups()
        metricsEndpoint?.close()
        metricsEndpoint = nil
        janitor?.close()
        followerReader?.close()
        followerReadList = []
        janitor = nil
        let done = onStopped
        onStopped = nil
        done?()
    }
}

/// How logins to one backend have gone since the proxy started (pooled reuse is not a login).
struct BackendLoginStats {
    var succeeded = 0
    var failed = 0
    /// The last failure's SQLSTATE and message, and when (loop ms).
    var lastFailure: (text: String, at: UInt64)?
}

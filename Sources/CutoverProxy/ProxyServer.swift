// The proxy: accepts clients, owns their sessions, forwards cancels, sweeps timeouts, reloads and shuts down.
import CutoverCore
import CutoverProtocol
import CutoverRuntime
import Glibc
import Logging

public final class ProxyServer {
    public let loop: EventLoop
    public private(set) var config: CutoverConfig
    let logger: Logger
    private var listener: TCPListener?
    private var sessions: [Int: ClientSession] = [:]
    private var sessionsBySecret: [Int32: ClientSession] = [:]
    private var nextSessionID = 1
    private var janitor: LoopTimer?
    private var resolvedAddresses: [String: String] = [:]
    private var saltedCache: [String: [UInt8]] = [:]
    private var shutdownDeadline: UInt64?
    private var onStopped: (() -> Void)?
    public private(set) var activeSessions = 0

    public init(loop: EventLoop, config: CutoverConfig, logger: Logger) {
        self.loop = loop
        self.config = config
        self.logger = logger
        resolvedAddresses = Self.resolve(config)
    }

    /// The port actually bound (useful with port 0 in tests).
    public var port: Int { listener?.port ?? 0 }
    public var sessionCount: Int { sessions.count }

    public func start() throws {
        listener = try TCPListener(loop: loop, host: config.server.listenHost, port: config.server.listenPort) { [unowned self] c in
            self.accept(c)
        }
        let timer = LoopTimer(loop: loop) { [unowned self] in self.sweep() }
        timer.start(timeoutMs: 250, repeatMs: 250)
        janitor = timer
        logger.info("listening", metadata: ["address": "\(config.server.listenHost):\(port)", "routes": "\(config.routes.keys.sorted())"])
    }

    // MARK: sessions

    private func accept(_ c: TCPConnection) {
        var refusal: ErrorFields?
        if shutdownDeadline != nil { refusal = ProxyError.shuttingDown() }
        else if sessions.count >= config.server.maxClients { refusal = ProxyError.tooManyClients(config.server.maxClients) }
        // Refused clients still get to read their error after the SSL exchange, up to a margin; past it
        // they are cut off at once so a connection flood cannot grow memory.
        if let error = refusal, sessions.count >= config.server.maxClients + 64 {
            var w = ByteWriter()
            error.encode(into: &w)
            c.write(w.bytes)
            c.closeAfterWrites()
            logger.warning("client refused", metadata: ["reason": "\(error.message ?? "")", "peer": "\(c.peerDescription)"])
            return
        }
        let id = nextSessionID
        nextSessionID += 1
        var secret: Int32
        repeat { secret = Int32(bitPattern: UInt32.random(in: 1...UInt32.max)) } while sessionsBySecret[secret] != nil
        let session = ClientSession(id: id, client: c, server: self, config: config, proxySecret: secret, logger: logger,
                                    refusal: refusal)
        sessions[id] = session
        sessionsBySecret[secret] = session
    }

    func sessionStarted(_ s: ClientSession) { activeSessions += 1 }

    func sessionEnded(_ s: ClientSession, wasActive: Bool) {
        if wasActive { activeSessions -= 1 }
        sessions[s.id] = nil
        sessionsBySecret[s.proxySecret] = nil
        if shutdownDeadline != nil && sessions.isEmpty { finishShutdown() }
    }

    /// The run-time phase of a route (persisted phases arrive with the dual-write work; until then, the config's).
    func phase(of route: String) -> Phase? { config.routes[route]?.phase }

    // MARK: cancel

    /// A client's CancelRequest carries the leader's pid and the proxy's secret; the backend gets its real key.
    func forwardCancel(_ key: CancelRequest) {
        guard let s = sessionsBySecret[key.secretKey], let real = s.leaderKey, real.processID == key.processID,
              let leader = s.leader else {
            logger.info("cancel request matched no session")
            return
        }
        logger.info("forwarding cancel", metadata: ["session": "\(s.id)", "backend": "\(leader.backend.name)"])
        _ = CancelForwarder(loop: loop, address: leader.address, port: leader.backend.port, key: real)
    }

    // MARK: backends

    func address(of backend: BackendConfig) -> String { resolvedAddresses[backend.name] ?? backend.host }

    /// PBKDF2 costs about a millisecond; backends reuse salts, so derive once per (password, salt, iterations).
    func saltedPassword(_ password: String, _ salt: [UInt8], _ iterations: Int) -> [UInt8] {
        let key = "\(iterations):\(Crypto.base64(salt)):\(password)"
        if let hit = saltedCache[key] { return hit }
        let value = SCRAMClient.saltedPassword(password, salt: salt, iterations: iterations)
        if saltedCache.count > 1024 { saltedCache.removeAll() }
        saltedCache[key] = value
        return value
    }

    /// Host names are resolved when the config is loaded, so no session blocks the loop on DNS.
    static func resolve(_ config: CutoverConfig) -> [String: String] {
        var out: [String: String] = [:]
        for (name, b) in config.backends { out[name] = resolveHost(b.host) ?? b.host }
        return out
    }

    // MARK: timeouts

    private func sweep() {
        let now = loop.now
        let s = config.server
        for session in Array(sessions.values) {
            switch session.state {
            case .handshake where s.authTimeout > 0 && now - session.createdAt > UInt64(s.authTimeout * 1000):
                session.failClient(ProxyError.fatal("08006", "authentication timed out after \(Int(s.authTimeout)) s"))
            case .connecting where s.connectTimeout > 0 && now - (session.leader?.startedAt ?? now) > UInt64(s.connectTimeout * 1000):
                if let b = session.leader?.backend {
                    session.failClient(ProxyError.backendUnavailable(b, "timed out after \(s.connectTimeout) s"))
                }
            case .forwarding:
                if session.closeWhenIdle && session.isIdleAtBoundary {
                    session.failClient(ProxyError.shuttingDown())
                } else if s.clientIdleTimeout > 0 && session.isIdleAtBoundary
                            && now - session.lastActivity > UInt64(s.clientIdleTimeout * 1000) {
                    session.failClient(ProxyError.fatal("57P05", "terminating connection due to idle timeout of \(s.clientIdleTimeout) s"))
                }
            default: break
            }
        }
        if let deadline = shutdownDeadline, now >= deadline {
            logger.warning("shutdown timeout reached, closing remaining sessions", metadata: ["sessions": "\(sessions.count)"])
            for session in Array(sessions.values) { session.failClient(ProxyError.shuttingDown()) }
        }
    }

    // MARK: lifecycle

    /// Replaces the config for new sessions; running sessions keep theirs.
    public func reload(_ newConfig: CutoverConfig) {
        config = newConfig
        resolvedAddresses = Self.resolve(newConfig)
        saltedCache.removeAll()
        logger.info("configuration reloaded", metadata: ["routes": "\(newConfig.routes.keys.sorted())", "users": "\(newConfig.users.count)"])
    }

    /// Stops accepting; sessions end at their next idle boundary, all of them by the shutdown timeout.
    public func shutdown(then done: @escaping () -> Void) {
        guard shutdownDeadline == nil else { return }
        onStopped = done
        shutdownDeadline = loop.now + UInt64(config.server.shutdownTimeout * 1000)
        listener?.close()
        listener = nil
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
        janitor?.close()
        janitor = nil
        let done = onStopped
        onStopped = nil
        done?()
    }
}

/// Blocking name resolution (only at config load): the first IPv4/IPv6 address of `host`.
func resolveHost(_ host: String) -> String? {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var result: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return nil }
    defer { freeaddrinfo(result) }
    var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    guard getnameinfo(first.pointee.ai_addr, first.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 else { return nil }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

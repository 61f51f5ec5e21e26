// One client's session: handshake, then leader pass-through with backpressure, cancel keys and boundaries.
import CutoverCore
import CutoverProtocol
import CutoverRuntime
import Logging

/// A client connection and its backend connection(s), from the first byte to the close.
///
///     client ──► [startup/auth: ClientHandshake] ──► [BackendLink login] ──► forwarding
///     forwarding: client bytes ─scan─► leader;  leader bytes ─scan (ReadyForQuery)─► client
final class ClientSession: TCPConnectionDelegate, BackendLinkOwner {
    enum State { case handshake, connecting, forwarding, closed }

    let id: Int
    let client: TCPConnection
    unowned let server: ProxyServer
    var logger: Logger
    private(set) var state = State.handshake
    private var handshake: ClientHandshake
    private var framer: MessageFramer
    private var clientScanner: MessageScanner
    private(set) var leader: BackendLink?
    private(set) var target: RouteTarget?
    private(set) var user = ""
    private(set) var applicationName = ""
    /// The secret this client got in BackendKeyData; the proxy's own, never the backend's.
    let proxySecret: Int32
    private(set) var leaderKey: CancelRequest?
    private(set) var transactionStatus = TransactionStatus.idle
    /// Query, Sync and FunctionCall messages sent whose ReadyForQuery has not come back yet.
    private(set) var pendingReadyForQuery = 0
    let createdAt: UInt64
    private(set) var lastActivity: UInt64
    /// Set by a graceful shutdown: end the session at its next idle boundary.
    var closeWhenIdle = false
    private var pendingClientBytes: [UInt8] = []
    private var clientPaused = false
    private var leaderPaused = false

    /// Frontend messages that each earn exactly one ReadyForQuery.
    static let boundaryMessages = MessageScanner.IDSet([FrontendMessageID.query.rawValue, FrontendMessageID.sync.rawValue,
                                                        FrontendMessageID.functionCall.rawValue])

    init(id: Int, client: TCPConnection, server: ProxyServer, config: CutoverConfig, proxySecret: Int32, logger: Logger,
         refusal: ErrorFields? = nil) {
        self.id = id
        self.client = client
        self.server = server
        self.proxySecret = proxySecret
        var logger = logger
        logger[metadataKey: "session"] = "\(id)"
        self.logger = logger
        handshake = ClientHandshake(config: config, phaseOf: { [unowned server] in server.phase(of: $0) })
        handshake.refusal = refusal
        framer = MessageFramer(untyped: true, maxMessageSize: min(config.server.maxMessageSize, 1 << 20))
        clientScanner = MessageScanner(captured: .init([]), maxMessageSize: config.server.maxMessageSize)
        createdAt = server.loop.now
        lastActivity = createdAt
        client.delegate = self
        client.startReading()
    }

    // MARK: client events

    func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        lastActivity = server.loop.now
        switch state {
        case .handshake: handshakeBytes(bytes)
        case .connecting: pendingClientBytes.append(contentsOf: bytes) // pipelined before AuthenticationOk
        case .forwarding: forwardFromClient(bytes)
        case .closed: break
        }
    }

    func connectionDidDrain(_ c: TCPConnection) {
        // The client caught up: read from the leader again.
        if leaderPaused, let leader {
            leaderPaused = false
            leader.connection.startReading()
        }
    }

    func connection(_ c: TCPConnection, didConnect error: Int32?) {}

    func connection(_ c: TCPConnection, didFail error: Int32?) {
        if let error { logger.debug("client connection failed", metadata: ["error": "\(uvErrorName(error))"]) }
        end(reason: "client disconnected")
    }

    // MARK: handshake

    private func handshakeBytes(_ bytes: UnsafeRawBufferPointer) {
        framer.append(bytes)
        do {
            while state == .handshake, let frame = try framer.next() {
                let action: ClientHandshake.Action
                if frame.id == nil {
                    action = handshake.startupPacketReceived(frame.body)
                } else if frame.id == FrontendMessageID.password.rawValue {
                    action = handshake.passwordMessageReceived(frame.body)
                } else if frame.id == FrontendMessageID.terminate.rawValue {
                    return end(reason: "client terminated during login")
                } else {
                    action = .fail(ProxyError.protocolViolation("expected an authentication message, got '\(Character(Unicode.Scalar(frame.id!)))'"))
                }
                framer.expectUntyped = handshake.expectsUntyped
                run(action)
            }
        } catch let e as ProtocolError {
            failClient(ProxyError.describe(e))
        } catch {
            failClient(ProxyError.protocolViolation("invalid startup"))
        }
    }

    private func run(_ action: ClientHandshake.Action) {
        switch action {
        case .wait: break
        case .send(let bytes): client.write(bytes)
        case .fail(let e): failClient(e)
        case .cancel(let key):
            server.forwardCancel(key)
            end(reason: "cancel request")
        case .admin:
            failClient(ProxyError.fatal("0A000", "the admin console is not available in this version of the proxy"))
        case .connect(let target, let startup, let user):
            self.target = target
            self.user = user
            applicationName = startup["application_name"] ?? ""
            logger[metadataKey: "route"] = "\(target.route ?? "*")"
            logger[metadataKey: "user"] = "\(user)"
            connectLeader(target, startup)
        }
    }

    private func connectLeader(_ target: RouteTarget, _ startup: StartupMessage) {
        state = .connecting
        let link = BackendLink(loop: server.loop, backend: target.leader, address: server.address(of: target.leader),
                               owner: self, saltedPassword: server.saltedPassword, maxMessageSize: server.config.server.maxMessageSize)
        leader = link
        let handshake = BackendHandshake(backend: target.leader)
        link.start(startup: handshake.startupPacket(client: startup, database: target.database, searchPath: target.searchPath))
    }

    // MARK: backend events

    func backendReady(_ link: BackendLink, parameters: [(String, String)], key: CancelRequest?) {
        guard state == .connecting else { return }
        leaderKey = key
        var w = ByteWriter(capacity: 512)
        w.writeBytes(handshake.takePendingPrefix())
        BackendMessage.authentication(.ok).encode(into: &w)
        for (name, value) in parameters { BackendMessage.parameterStatus(name: name, value: value).encode(into: &w) }
        // The leader's real process id (pg_backend_pid() agrees) and the proxy's own secret.
        BackendMessage.backendKeyData(CancelRequest(processID: key?.processID ?? 0, secretKey: proxySecret)).encode(into: &w)
        BackendMessage.readyForQuery(.idle).encode(into: &w)
        state = .forwarding
        server.sessionStarted(self)
        logger.info("session started", metadata: ["backend": "\(link.backend.name)", "backend.pid": "\(key?.processID ?? 0)",
                                                  "application_name": "\(applicationName)"])
        client.write(w.bytes)
        if !pendingClientBytes.isEmpty {
            let early = pendingClientBytes
            pendingClientBytes = []
            early.withUnsafeBytes { forwardFromClient($0) }
        }
    }

    func backendLoginFailed(_ link: BackendLink, _ error: ErrorFields) {
        logger.warning("backend login failed", metadata: ["backend": "\(link.backend.name)", "sqlstate": "\(error.sqlState ?? "")",
                                                         "error": "\(error.message ?? "")"])
        failClient(error)
    }

    func backendRead(_ link: BackendLink, _ bytes: UnsafeRawBufferPointer) {
        guard state == .forwarding else { return }
        client.write(bytes)
        if client.queuedBytes > server.config.server.writeHighWater, !leaderPaused {
            // A slow client: stop reading the leader until the client drains (bounded memory).
            leaderPaused = true
            link.connection.stopReading()
        }
    }

    func backendReadyForQuery(_ link: BackendLink, _ status: TransactionStatus) {
        transactionStatus = status
        if pendingReadyForQuery > 0 { pendingReadyForQuery -= 1 }
        lastActivity = server.loop.now
    }

    func backendLost(_ link: BackendLink, _ error: Int32?) {
        guard state != .closed else { return }
        logger.warning("backend connection lost", metadata: ["backend": "\(link.backend.name)", "error": "\(error.map(uvErrorName) ?? "closed")"])
        failClient(ProxyError.fatal("08006", "lost the connection to backend \"\(link.backend.name)\""))
    }

    func backendDrained(_ link: BackendLink) {
        if clientPaused {
            clientPaused = false
            client.startReading()
        }
    }

    // MARK: forwarding

    private func forwardFromClient(_ bytes: UnsafeRawBufferPointer) {
        guard let leader else { return }
        var terminated = false
        do {
            try clientScanner.scan(bytes) { id, _, _ in
                if Self.boundaryMessages.contains(id) { pendingReadyForQuery += 1 }
                else if id == FrontendMessageID.terminate.rawValue { terminated = true }
            }
        } catch let e as ProtocolError {
            return failClient(ProxyError.describe(e))
        } catch { return failClient(ProxyError.protocolViolation("invalid message")) }
        leader.connection.write(bytes)
        if terminated { return end(reason: "client terminated") }
        if leader.connection.queuedBytes > server.config.server.writeHighWater, !clientPaused {
            clientPaused = true
            client.stopReading()
        }
    }

    /// True at an idle transaction boundary with nothing in flight: the session can be ended or switched here.
    var isIdleAtBoundary: Bool {
        state == .forwarding && transactionStatus == .idle && pendingReadyForQuery == 0 && clientScanner.atMessageBoundary
            && (leader?.scanner.atMessageBoundary ?? true)
    }

    // MARK: ending

    /// Sends a final error to the client and closes everything.
    func failClient(_ error: ErrorFields) {
        guard state != .closed else { return }
        var w = ByteWriter()
        error.encode(into: &w)
        client.write(w.bytes)
        end(reason: error.message ?? "error")
    }

    func end(reason: String) {
        guard state != .closed else { return }
        let wasForwarding = state == .forwarding
        state = .closed
        leader?.terminate()
        client.closeAfterWrites()
        server.sessionEnded(self, wasActive: wasForwarding)
        logger.debug("session ended", metadata: ["reason": "\(reason)"])
    }
}

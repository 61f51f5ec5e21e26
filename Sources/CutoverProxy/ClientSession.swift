// One client's session: handshake, then pass-through to the leader (and, in the dual phases, a follower)
// with backpressure, cancel keys, unit boundaries, and phase changes applied at idle boundaries.
import CutoverCore
import CutoverProtocol
import CutoverRuntime
import Logging

/// A client connection and its backend connections, from the first byte to the close.
///
///     client ──► [startup/auth: ClientHandshake] ──► [BackendLink login] ──► forwarding (or admin console)
///     forwarding: client bytes ─scan (SessionTracker)─► leader (+ follower, mirrored)
///                 leader bytes ─scan (ReadyForQuery, digests)─► client;  follower bytes ─digests─► compared, dropped
final class ClientSession: TCPConnectionDelegate, BackendLinkOwner {
    enum State { case handshake, connecting, forwarding, admin, draining, closed }

    let id: Int
    let client: TCPConnection
    // Strong `let`s, not unowned: a `let` of a class is read without a retain, while every unowned(unsafe)
    // read is turned into a strong copy (a retain/release pair per access, measured with callgrind). The
    // server → sessions → server cycle ends when the session is removed from the server.
    let server: ProxyServer
    /// Cached from the server, read on every chunk.
    let loop: EventLoop
    /// Login only; dropped once the session is connected (an idle session should cost little memory).
    private var handshake: Boxed<ClientHandshake>?
    /// Whole-message framing for the login and the admin console; nil while forwarding (boxed: 8 bytes, not 32).
    private var framer: Boxed<MessageFramer>?
    private var clientScanner: MessageScanner
    // A link let go of may be the one whose callback is running (a follower dropped on its own answer).
    var leader: BackendLink? { willSet { BackendLink.retire(leader, replacedBy: newValue) } }
    var follower: BackendLink? { willSet { BackendLink.retire(follower, replacedBy: newValue) } }
    private(set) var startup = StartupMessage(parameters: [])
    /// As last SET by the client, else from the startup message (read when needed, not stored twice).
    var applicationName: String { cold?.applicationName ?? startup["application_name"] ?? "" }
    /// The route this session belongs to (nil on the wildcard route).
    var route: RouteRuntime?
    /// The authenticated user: the startup message's (read when needed, not stored twice).
    var user: String { startup.user ?? "" }
    var leaderKey: CancelRequest? { leader?.key }
    let createdAt: UInt64
    var lastActivity: UInt64

    var tracker = SessionTracker()
    /// Mirroring, pause and login leftovers, allocated on first use (see SessionColdState).
    var cold: SessionColdState?
    /// Syncs the client sent since its last Execute/Query: if the backend answers that Execute with
    /// CopyInResponse, it ignores them (it ignores Sync during COPY IN), so they earn no ReadyForQuery.
    private var syncsSinceExecute: Int32 = 0
    /// Query, Sync and FunctionCall messages sent whose ReadyForQuery has not come back yet.
    var pendingReadyForQuery: Int32 = 0
    // Narrow fields last and together: declaration order is layout order, and a Bool between two
    // 8-byte fields costs 8 bytes in every session.
    /// The secret this client got in BackendKeyData; the proxy's own, never the backend's.
    let proxySecret: Int32
    /// The pid the client was given (the first leader's); cancels must carry it even after a leader flip.
    private(set) var clientVisiblePID: Int32 = 0
    private(set) var state = State.handshake
    /// On the wildcard route (no `RouteRuntime`).
    private(set) var isWildcard = false
    /// The phase this session runs in; catches up with the route's at idle boundaries.
    var sessionPhase = Phase.legacy
    var mirrorMode = MirrorMode.async
    var transactionStatus = TransactionStatus.idle
    /// Set by a graceful shutdown: end the session at its next idle boundary.
    var closeWhenIdle = false
    private var clientPaused = false
    /// Extended-protocol messages went to the leader since the last Sync (or Query): a backend left so
    /// would take the pool's reset as part of them (or skip it after an error), and a Sync from the pool
    /// would commit what the client never synced.
    private var extendedSinceSync = false
    var leaderPaused = false
    /// The client is streaming COPY data: its Syncs are ignored by the backend until CopyDone/CopyFail.
    private var clientCopyIn = false
    /// Draining: whether the leader was already let go.
    private var leaderReleased = false
    private var wasActiveBeforeDraining = false
    /// In the server's list of sessions whose on-demand follower is read by its timer.
    var inFollowerReadList = false

    init(id: Int, client: TCPConnection, server: ProxyServer, config: CutoverConfig, proxySecret: Int32,
         refusal: ErrorFields? = nil) {
        self.id = id
        self.client = client
        self.server = server
        self.proxySecret = proxySecret
        loop = server.loop
        var handshake = ClientHandshake(config: config, phaseOf: { [unowned server] in server.routes[$0]?.phase })
        handshake.refusal = refusal
        handshake.isLocal = client.isLocal
        self.handshake = Boxed(handshake)
        // PostgreSQL's own limit for a startup packet (MAX_STARTUP_PACKET_LENGTH); the login's other messages
        // (password, SCRAM) are far smaller.
        framer = Boxed(MessageFramer(untyped: true, maxMessageSize: min(config.server.maxMessageSize, 10_000)))
        clientScanner = MessageScanner(captured: .init(SessionTracker.capturedIDs), maxMessageSize: config.server.maxMessageSize)
        createdAt = loop.now
        lastActivity = createdAt
        super.init()
        client.delegate = self
        client.startReading()
    }

    deinit { client.delegate = nil }

    /// Whether a message at `level` would be logged: the per-session messages check first, because building
    /// `logger` (its metadata) costs more than the rest of a pooled session's start (callgrind).
    func logs(_ level: Logger.Level) -> Bool { server.logger.logLevel <= level }

    /// Built when something is logged (rarely), not stored: an idle session should cost little memory.
    var logger: Logger {
        var l = server.logger
        l[metadataKey: "session"] = "\(id)"
        if let route { l[metadataKey: "route"] = "\(route.name)" } else if isWildcard { l[metadataKey: "route"] = "*" }
        if !user.isEmpty { l[metadataKey: "user"] = "\(user)" }
        return l
    }

    // MARK: client events

    override func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        lastActivity = loop.now
        switch state {
        case .handshake, .admin: framedBytes(bytes)
        case .connecting:
            pendingClientBytes.append(contentsOf: bytes) // pipelined before AuthenticationOk
            if pendingClientBytes.count > server.writeHighWater && !clientPaused {
                // Held in memory until the backend login ends (a connect timeout per address): bounded.
                clientPaused = true
                client.stopReading()
            }
        case .forwarding: forwardFromClient(bytes)
        case .closed, .draining: break
        }
    }

    override func connectionDidDrain(_ c: TCPConnection) {
        // The client caught up: read from the leader again.
        if leaderPaused, let leader {
            leaderPaused = false
            leader.connection.startReading()
        }
    }

    override func connection(_ c: TCPConnection, didConnect error: Int32?) {}

    override func connection(_ c: TCPConnection, didFail error: Int32?) {
        if let reason = (c.filter as? TLSFilter)?.failure {
            logger.info("client TLS failed", metadata: ["error": "\(reason)", "peer": "\(c.peerDescription)"])
        } else if let error {
            logger.debug("client connection failed", metadata: ["error": "\(uvErrorName(error))"])
        }
        end(reason: "client disconnected")
    }

    // MARK: handshake and admin console (whole messages)

    private func framedBytes(_ bytes: UnsafeRawBufferPointer) {
        guard let framer else { return }
        // 0x16 opens a TLS handshake; as a startup packet's first length byte it would be 369 MB, so it
        // cannot be one. PostgreSQL 17 clients open that way with sslnegotiation=direct.
        if bytes.first == 0x16, state == .handshake, framer.value.bufferedByteCount == 0,
           let handshake, !handshake.value.tlsStarted, !handshake.value.isLocal, let context = server.clientTLS {
            return startDirectTLS(bytes, context: context)
        }
        framer.value.append(bytes)
        do {
            while state == .handshake || state == .admin, let frame = try framer.value.next() {
                if state == .admin { adminMessage(frame); continue }
                guard let handshake else { return }
                let action: ClientHandshake.Action
                if frame.id == nil {
                    if let tls = client.filter as? TLSFilter { handshake.value.clientCertificateName = tls.stream.verifiedPeerCommonName }
                    action = handshake.value.startupPacketReceived(frame.body)
                } else if frame.id == FrontendMessageID.password.rawValue {
                    action = handshake.value.passwordMessageReceived(frame.body)
                } else if frame.id == FrontendMessageID.terminate.rawValue {
                    return end(reason: "client terminated during login")
                } else {
                    action = .fail(ProxyError.protocolViolation("expected an authentication message, got '\(Character(Unicode.Scalar(frame.id!)))'"))
                }
                framer.value.expectUntyped = handshake.value.expectsUntyped
                run(action)
            }
        } catch let e as ProtocolError {
            failClient(ProxyError.describe(e))
        } catch {
            failClient(ProxyError.protocolViolation("invalid startup"))
        }
    }

    /// Answers the SSLRequest with `S`; from the next byte on the client connection is TLS.
    private func startTLS() {
        // Bytes that came after the SSLRequest were sent in clear text before the answer: a client does not
        // do that, an attacker injecting into the stream before the handshake does (CVE-2021-23214).
        guard let framer, framer.value.bufferedByteCount == 0 else {
            return failClient(ProxyError.protocolViolation("received unencrypted data after SSL request"))
        }
        guard let context = server.clientTLS, let filter = tlsFilter(context, direct: false) else { return }
        client.write([0x53]) // 'S'
        client.filter = filter
    }

    /// A connection that opened with a TLS ClientHello: TLS without the SSLRequest exchange.
    private func startDirectTLS(_ clientHello: UnsafeRawBufferPointer, context: TLSContext) {
        guard let filter = tlsFilter(context, direct: true) else { return }
        client.filter = filter
        handshake?.value.startedTLSDirectly()
        client.refeedThroughFilter(clientHello)
    }

    /// The client connection's TLS, with SCRAM channel binding to its certificate (nil: failed, and said so).
    private func tlsFilter(_ context: TLSContext, direct: Bool) -> TLSFilter? {
        guard let stream = try? TLSStream(context: context) else {
            failClient(ProxyError.fatal("08006", "TLS is not available on this proxy"))
            return nil
        }
        handshake?.value.channelBinding = context.serverEndPoint
        return TLSFilter(stream, requiresALPN: direct)
    }

    /// "TLSv1.3 TLS_AES_256_GCM_SHA384" for an encrypted client connection, nil for a clear-text one.
    var clientTLSDescription: String? {
        guard let tls = client.filter as? TLSFilter, let version = tls.stream.protocolVersion else { return nil }
        return [version, tls.stream.cipher].compactMap { $0 }.joined(separator: " ")
    }

    private func run(_ action: ClientHandshake.Action) {
        switch action {
        case .wait: break
        case .send(let bytes): client.write(bytes)
        case .startTLS: startTLS()
        case .fail(let e):
            server.noteClientLoginRefused(e, startup: handshake?.value.startup, peer: client.peerDescription)
            failClient(e)
        case .cancel(let key):
            server.forwardCancel(key)
            end(reason: "cancel request")
        case .admin(let startup, let user):
            self.startup = startup
            state = .admin
            var w = ByteWriter(capacity: 256)
            w.writeBytes(handshake?.value.takePendingPrefix() ?? [])
            handshake = nil
            BackendMessage.authentication(.ok).encode(into: &w)
            for (name, value) in [("server_version", "15.0 (cutover admin)"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
                                  ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"), ("standard_conforming_strings", "on"),
                                  ("application_name", applicationName)] {
                BackendMessage.parameterStatus(name: name, value: value).encode(into: &w)
            }
            BackendMessage.backendKeyData(CancelRequest(processID: 0, secretKey: proxySecret)).encode(into: &w)
            BackendMessage.readyForQuery(.idle).encode(into: &w)
            client.write(w.bytes)
            logger.info("admin session started", metadata: ["user": "\(user)"])
        case .connect(let target, let startup, _):
            self.startup = startup
            sessionPhase = target.phase
            isWildcard = target.route == nil
            if let prefix = handshake?.value.takePendingPrefix(), !prefix.isEmpty { loginPrefix = prefix }
            handshake = nil
            // Messages the client pipelined behind its login (no need to wait for AuthenticationOk with trust)
            // go to the leader once it is ready, like bytes that arrive while it connects.
            if let rest = framer?.value.takeRemainder(), !rest.isEmpty { pendingClientBytes.append(contentsOf: rest) }
            framer = nil // the login buffer is not needed any more
            if let name = target.route, let r = server.routes[name] {
                route = r
                mirrorMode = r.mirror
                r.sessions[id] = self
                tracker.crossSchema = r.crossSchemaScope(server.crossSchema)
            }
            connectLeader(target)
        }
    }

    /// Admin commands run as they arrive, and their answers go out in the order the commands came: a SET PHASE
    /// or a PAUSE answers later, and a RESUME, KILL or CANCEL sent right behind it must still run at once (it
    /// may be what lets the first finish), but its answer waits for the first's.
    private func adminMessage(_ frame: MessageFramer.Frame) {
        switch frame.id {
        case FrontendMessageID.query.rawValue:
            let text = String(decoding: frame.body.prefix { $0 != 0 }, as: UTF8.self)
            let slot = reserveAdminAnswer()
            server.admin.execute(text, from: self) { [weak self] bytes in
                guard let self, self.state == .admin else { return }
                var w = ByteWriter(capacity: bytes.count + 6)
                w.writeBytes(bytes)
                BackendMessage.readyForQuery(.idle).encode(into: &w)
                self.fillAdminAnswer(slot, w.bytes)
            }
        case FrontendMessageID.terminate.rawValue:
            end(reason: "admin client terminated")
        default:
            var w = ByteWriter()
            ErrorFields(severity: "ERROR", code: "0A000", message: "the admin console supports the simple query protocol only").encode(into: &w)
            if frame.id == FrontendMessageID.sync.rawValue { BackendMessage.readyForQuery(.idle).encode(into: &w) }
            fillAdminAnswer(reserveAdminAnswer(), w.bytes)
        }
    }

    /// Answers an admin client may have waiting behind a pending one before it is no longer read.
    static let adminAnswersLimit = 1024

    /// A place in the admin answers' order for the command just received; returns its number.
    private func reserveAdminAnswer() -> Int {
        let c = coldState
        c.adminAnswers.append(nil)
        if c.adminAnswers.count > Self.adminAnswersLimit { client.stopReading() }
        return c.adminAnswersBase + c.adminAnswers.count - 1
    }

    /// Fills answer `slot` and writes every answer now complete at the front of the order.
    private func fillAdminAnswer(_ slot: Int, _ bytes: [UInt8]) {
        let c = coldState
        let i = slot - c.adminAnswersBase
        guard i >= 0, i < c.adminAnswers.count else { return }
        c.adminAnswers[i] = bytes
        var ready = 0
        while ready < c.adminAnswers.count, let answer = c.adminAnswers[ready] {
            client.write(answer)
            ready += 1
        }
        guard ready > 0 else { return }
        c.adminAnswers.removeFirst(ready)
        c.adminAnswersBase += ready
        if c.adminAnswers.count <= Self.adminAnswersLimit { client.startReading() }
    }

    private func connectLeader(_ target: RouteTarget) {
        state = .connecting
        let side = target.phase.leader
        let packet = BackendHandshake(backend: target.leader).startupPacket(client: startup, database: target.database, searchPath: target.searchPath)
        let pooled = server.idleBackends?.take(IdleBackendPool.Key(backend: target.leader.name, side: side, startup: packet))
        leader = pooled ?? openLink(to: target.leader, side: side, packet: packet)
        if target.follower != nil { startFollower(replay: false) }
        if let pooled {
            // Logged in and reset already: the client is served at once.
            pooled.adopt(by: self)
            if logs(.debug) { logger.debug("backend connection reused", metadata: ["backend": "\(pooled.backendName)", "backend.pid": "\(pooled.key?.processID ?? 0)"]) }
            serveClient(leader: pooled, parameterStatus: pooled.loginParameters, key: pooled.key)
        }
    }

    /// Opens a backend connection logged in with `packet` (the client's startup parameters for that backend).
    /// A follower's connect waits for the server's login gate (a flip gives every session one at once).
    func openLink(to backend: BackendConfig, side: Side?, packet: [UInt8], isFollower: Bool = false) -> BackendLink {
        let target = server.address(of: backend)
        let link = BackendLink(loop: server.loop, backend: backend, addresses: target.addresses, addressFailure: target.failure, side: side,
                               owner: self, tls: server.backendTLS[backend.name], keepalive: server.keepalive,
                               saltedPassword: server.saltedPassword)
        // With a pool, any leader may end up there (a follower becomes the leader when a flip swaps them).
        if let pool = server.idleBackends {
            link.keepsLogin = true
            link.poolGeneration = pool.generation
        }
        if isFollower {
            link.prepare(startup: packet, onSettled: { [unowned server] in server.followerLoginSettled($0) })
            server.admitFollowerLogin(link)
        } else {
            link.start(startup: packet, nowNs: loop.nanoseconds)
        }
        return link
    }

    // MARK: backend events

    func backendReady(_ link: BackendLink, parameters: [(String, String)], key: CancelRequest?) {
        server.noteBackendLogin(link.backendName, failure: nil)
        if link === standby { return standbySettled(link, failure: nil) }
        if link === follower { return updateFollowerReading() }
        guard link === leader, state == .connecting else { return }
        serveClient(leader: link, parameterStatus: link.keepsLogin ? link.loginParameters : BackendLink.parameterStatusBytes(parameters), key: key)
    }

    /// The leader is logged in (or came from the pool): the client gets AuthenticationOk, the backend's
    /// ParameterStatus messages (`parameterStatus`, encoded), BackendKeyData and ReadyForQuery, and is served.
    private func serveClient(leader link: BackendLink, parameterStatus: [UInt8], key: CancelRequest?) {
        var w = ByteWriter(capacity: 512)
        if cold != nil {
            w.writeBytes(loginPrefix)
            loginPrefix = []
        }
        BackendMessage.authentication(.ok).encode(into: &w)
        w.writeBytes(parameterStatus)
        // The leader's real process id (pg_backend_pid() agrees) and the proxy's own secret.
        clientVisiblePID = key?.processID ?? 0
        BackendMessage.backendKeyData(CancelRequest(processID: clientVisiblePID, secretKey: proxySecret)).encode(into: &w)
        BackendMessage.readyForQuery(.idle).encode(into: &w)
        state = .forwarding
        updateFollowerReading() // a follower that logged in first was polled until now
        server.sessionStarted(self)
        if logs(.info) { logger.info("session started", metadata: ["backend": "\(link.backendName)", "backend.pid": "\(key?.processID ?? 0)",
                                                  "phase": "\(sessionPhase.rawValue)", "application_name": "\(applicationName)"]) }
        client.write(w.bytes)
        if !pendingClientBytes.isEmpty {
            let early = pendingClientBytes
            pendingClientBytes = []
            early.withUnsafeBytes { forwardFromClient($0) }
            maybeResumeClient() // paused while they piled up during the login
        } else {
            reachedIdleBoundaryIfIdle()
        }
    }

    func backendLoginFailed(_ link: BackendLink, _ error: ErrorFields) {
        server.noteBackendLogin(link.backendName, failure: error)
        if link === standby { return standbySettled(link, failure: error.message ?? "login failed") }
        if link === follower {
            stopMirroring(.followerUnreachable, detail: error.message ?? "follower login failed")
            return
        }
        guard link === leader else { return }
        logger.warning("backend login failed", metadata: ["backend": "\(link.backendName)", "sqlstate": "\(error.sqlState ?? "")",
                                                         "error": "\(error.message ?? "")"])
        failClient(error)
    }

    func backendRead(_ link: BackendLink, _ bytes: UnsafeRawBufferPointer) {
        guard state == .forwarding || state == .draining else { return }
        if link === leader { leaderRead(link, bytes) } else if link === follower { followerRead(link) }
        if state == .draining { finishDrainingIfDone() }
    }

    private func leaderRead(_ link: BackendLink, _ bytes: UnsafeRawBufferPointer) {
        var forwardFrom = 0
        // By index: `for b in link.boundaries` copies the list (a retain of its array per read).
        let boundaryCount = link.boundaries.count
        // The number of the first internal unit ending in this read (the link has counted them all).
        var internalUnit = link.internalAnswered
        if let c = cold, !c.leaderInternalKinds.isEmpty { // (read in place: the accessor would copy the array)
            for k in 0..<boundaryCount where link.boundaries[k].isInternal && !link.boundaries[k].isCopyIn { internalUnit &-= 1 }
        }
        for k in 0..<boundaryCount {
            let b = link.boundaries[k]
            if b.isCopyIn {
                if !b.isInternal { copyInStarted() }
                continue
            }
            if b.isInternal {
                internalUnit &+= 1
                if !leaderInternalEnded(unit: internalUnit - 1, outcome: b.digest?.first) {
                    runLockStep(lockStep.leaderInternalReady(commitOutcome: b.digest?.first, status: b.status, now: loop.now))
                }
                continue
            }
            let previous = transactionStatus
            transactionStatus = b.status
            if pendingReadyForQuery > 0 { pendingReadyForQuery -= 1 }
            tracker.unitAnswered(status: b.status, previous: previous, stillInFlight: Int(pendingReadyForQuery))
            if follower != nil, let digest = b.digest { leaderUnitDone(digest) }
            guard lockStepIsBusy else { continue }
            let actions = lockStep.leaderReady(status: b.status, cancelled: b.digest?.cancelledStatement, now: loop.now)
            if actions.first == .holdClient {
                // Lock-step: the client gets everything but this ReadyForQuery now, the rest after the follower.
                // (Its first bytes may have arrived, and gone out, with the previous read.)
                let rfqStart = max(forwardFrom, b.endOffset - 6)
                client.write(UnsafeRawBufferPointer(rebasing: bytes[forwardFrom..<rfqStart]))
                forwardFrom = rfqStart
                heldForClient = []
                heldStatusIndex = b.endOffset - 1 - rfqStart
            }
            runLockStep(actions)
        }
        let rest = UnsafeRawBufferPointer(rebasing: bytes[forwardFrom...])
        if heldForClient != nil { heldForClient!.append(contentsOf: rest) } else { client.write(rest) }
        if client.queuedBytes > server.writeHighWater, !leaderPaused, state == .forwarding {
            // A slow client: stop reading the leader until the client drains (bounded memory).
            leaderPaused = true
            link.connection.stopReading()
        }
        if !link.boundaries.isEmpty {
            // The transaction ended on the leader: the follower gets it, in one write.
            if transactionStatus == .idle, let c = cold, !c.followerOutbox.isEmpty, c.captures?.held.isEmpty ?? true { flushFollowerOutbox() }
            if transactionStatus == .idle, let s = cold?.captures {
                if s.ddlSeen { refreshCatalogAfterDDL() }
                if s.restoreWhenIdle && follower == nil { restoreClientStatementsOnLeader() }
                if s.emptyWhenIdle > 0 { emptySettingsLeftByCopy() }
            }
            lastActivity = loop.now
            compareReadyUnits()
            maybeResumeClient()
            reachedIdleBoundaryIfIdle()
        }
    }

    /// The backend entered COPY IN for the client's last Execute: the Syncs sent after it are ignored.
    private func copyInStarted() {
        clientCopyIn = true
        guard syncsSinceExecute > 0 else { return }
        pendingReadyForQuery = max(0, pendingReadyForQuery - syncsSinceExecute)
        // A readback counted those Syncs among the client's units ahead of it: they will not be answered.
        leader?.clientUnitsWillNotBeAnswered(Int32(clamping: syncsSinceExecute))
        // Their units will get no answer of their own: the copy's ReadyForQuery answers a later Sync.
        for _ in 0..<syncsSinceExecute {
            guard units.count > unitsHead, let last = units.last, last.leader == nil else { break }
            units.removeLast()
        }
        clampUnitCursors()
        syncsSinceExecute = 0
    }

    private func followerRead(_ link: BackendLink) {
        guard !link.boundaries.isEmpty else { return }
        for b in link.boundaries {
            if b.isInternal {
                runLockStep(lockStep.followerInternalReady(commitOutcome: b.digest?.first, now: loop.now))
                continue
            }
            if let digest = b.digest { followerUnitDone(digest) }
            if lockStepIsBusy { runLockStep(lockStep.followerReady(status: transactionStatus, now: loop.now)) }
        }
        compareReadyUnits()
        maybeResumeClient()
        reachedIdleBoundaryIfIdle()
    }

    func backendLost(_ link: BackendLink, _ error: Int32?) {
        guard state != .closed else { return }
        if link === standby { return standbySettled(link, failure: "connection closed: \(error.map(uvErrorName) ?? "EOF")") }
        if link === follower {
            if state == .draining {
                stopMirroring(.followerLost, detail: "follower connection closed before answering \(pendingUnitCount) statements")
                return finishDrainingIfDone()
            }
            stopMirroring(.followerLost, detail: "follower connection closed: \(error.map(uvErrorName) ?? "EOF")")
            return
        }
        guard link === leader else { return }
        if state == .draining {
            // The leader died with a unit in lock-step: the follower may hold what the leader lost.
            if lockStepIsBusy { route?.markOutOfSync("session \(id): leader lost mid-unit after the client left") }
            return forceFinish("the leader's connection was lost after the client left")
        }
        logger.warning("backend connection lost", metadata: ["backend": "\(link.backendName)", "error": "\(error.map(uvErrorName) ?? "closed")"])
        failClient(ProxyError.fatal("08006", "lost the connection to backend \"\(link.backendName)\""))
    }

    func backendDrained(_ link: BackendLink) { maybeResumeClient() }

    func backendConnectOutcome(_ link: BackendLink, address: String, succeeded: Bool) {
        server.backendConnectOutcome(link.backendName, address: address, succeeded: succeeded)
    }

    func backendFallingBack(_ link: BackendLink, failed: String, reason: String, next: String) {
        logger.warning("backend address failed, trying the next", metadata: [
            "backend": "\(link.backendName)", "address": "\(failed)", "error": "\(reason)", "next": "\(next)"])
    }

    func backendParameterChanged(_ link: BackendLink, name: String, value: String) {
        guard link === leader, name == "application_name" else { return }
        coldState.applicationName = value
    }

    /// Reads the client again once every queue it was paused for is back under its bound.
    func maybeResumeClient() {
        guard clientPaused, state == .forwarding else { return }
        guard (leader?.connection.queuedBytes ?? 0) <= server.writeHighWater,
              lockStep.queuedBytes <= server.writeHighWater / 2 || lockStep.awaitsRestOfUnit else { return }
        clientPaused = false
        client.startReading()
    }

    // MARK: forwarding

    func forwardFromClient(_ bytes: UnsafeRawBufferPointer) {
        // Unretained: a link let go of is retired, not freed, while a callback runs (see BackendLink.retire);
        // a strong local would cost a retain/release pair per chunk.
        guard let leader = leader.map(Unretained.init) else { return }
        if parkedSince != nil || (route?.isPaused == true && isIdleAtBoundary) {
            // The route is paused and this session is between transactions: hold the new one back. (Between
            // transactions on the leader is enough: a follower still logging in or owing answers must not let
            // a new transaction through a pause; the pause settles once it has caught up.)
            if parkedSince == nil { parkedSince = loop.now }
            parkedBytes.append(contentsOf: bytes)
            if parkedBytes.count > server.writeHighWater, !clientPaused {
                // Held in memory until the pause ends: past the high-water mark the client is not read
                // (200 MB sent during a pause grew the proxy by 200 MB); `unpark` reads it again.
                clientPaused = true
                client.stopReading()
            }
            return
        }
        // Units are collected only for mirroring and lock-step; a single-side phase just counts them.
        let quiet = lockStepIsQuiet
        let collecting = follower != nil || !quiet
        // Async mirroring with a batching follower registers each unit as it ends (no per-chunk list).
        let batching = collecting && quiet && mirrorMode == .async && follower?.connection.readsOnDemand == true
        var chunk = ClientChunk(collecting: collecting, batching: batching)
        chunk.startsMidMessage = !clientScanner.atMessageBoundary
        // Async mirroring captures values that differ per side here; lock-step does it unit by unit.
        chunk.capturing = collecting && quiet && follower != nil && mirrorMode == .async
        chunk.unitBegan = extendedSinceSync || chunk.startsMidMessage ? -1 : 0
        if collecting && !batching && !chunkUnits.isEmpty { chunkUnits.removeAll(keepingCapacity: true) }
        do {
            try scanClientChunk(bytes, &chunk)
        } catch let e as ProtocolError {
            return failClient(ProxyError.describe(e))
        } catch { return failClient(ProxyError.protocolViolation("invalid message")) }
        let unitCount = chunk.unitCount, terminated = chunk.terminated
        // The client's Terminate is not passed on: ending the backends is the session's call at its end (a
        // pooled backend must never see it), and nothing after a Terminate counts.
        let bytes = terminated ? UnsafeRawBufferPointer(rebasing: bytes[..<chunk.terminateAt]) : bytes
        if unitCount > 0, let route {
            route.stats.statements += unitCount
            if route.phase.follower == nil {
                let first = route.unmirroredStatements == 0
                route.unmirroredStatements += unitCount
                if first && route.phase == .new { route.onPersistentChange?() } // legacy now misses writes: keep that across a restart
            }
            if collecting && !batching, let c = cold {
                for k in c.chunkUnits.indices where c.chunkUnits[k].unit.crossSchemaCandidate {
                    server.checkCrossSchema(c.chunkUnits[k].unit, session: self, route: route)
                }
            }
        }
        if (follower != nil && mirrorMode == .sync && !terminated) || !lockStepIsQuiet {
            // Lock-step; also after mirroring stopped mid-unit, so nothing overtakes what is queued.
            runLockStep(lockStep.clientSent(Array(bytes), units: chunkUnits, flushAt: chunk.flushAt, status: transactionStatus, now: loop.now))
            checkMirrorBounds()
            if lockStep.awaitsRestOfUnit {
                // One unit still arriving and nothing in flight: stopping would wait for ever, so the client
                // is read on, up to a bound: a unit past it (a driver's pipeline without a Sync) stops
                // mirroring for this session, which sends what is queued to the leader alone.
                let bound = max(server.mirrorQueueLimits.0, server.config.server.maxMessageSize)
                if lockStep.queuedBytes > bound {
                    stopMirroring(.queueOverflow, detail: "a unit of more than \(bound) bytes without a Sync (lock-step holds a unit whole until it ends)")
                }
            } else if lockStep.queuedBytes > server.writeHighWater, !clientPaused {
                // Lock-step queues what the client pipelines; past the bound, stop reading it.
                clientPaused = true
                client.stopReading()
            }
        } else if chunk.hasCaptures || !(cold?.captures?.held.isEmpty ?? true) {
            forwardCaptured(bytes, chunk)
            checkMirrorBounds()
        } else {
            leader.call { $0.send(bytes) }
            if let follower {
                if batching {
                    // Batched for the follower; its units (registered above) count as sent when it goes.
                    let c = coldState
                    c.followerOutbox.append(contentsOf: bytes)
                    if c.followerOutbox.count >= Self.followerOutboxLimit { flushFollowerOutbox() }
                    if !inFollowerReadList { server.readFollowerLater(self) }
                } else {
                    for (_, unit) in chunkUnits { registerUnit(unit, followerSent: true) }
                    follower.send(bytes)
                }
                checkMirrorBounds()
            }
        }
        if terminated { return end(reason: "client terminated") }
        if leader.call({ $0.connection.queuedBytes }) > server.writeHighWater, !clientPaused {
            clientPaused = true
            client.stopReading()
        }
    }

    /// What one client chunk's messages told `forwardFromClient`.
    struct ClientChunk {
        let collecting: Bool
        let batching: Bool
        var terminated = false
        /// Where the Terminate message starts (the chunk's end when it began in an earlier chunk: its first
        /// bytes went to the backend already, so the rest goes too).
        var terminateAt = 0
        var flushAt: Int?
        var unitCount = 0
        /// The chunk's first message began in an earlier chunk.
        var startsMidMessage = false
        /// Where the last message seen ended.
        var lastEnd = 0
        /// Async mirroring: writes are checked for values that differ per side (see ClientSession+Capture).
        var capturing = false
        /// Where the unit being scanned began in this chunk (-1: in an earlier one).
        var unitBegan = 0
        /// Messages in it the leader gets rewritten, or readbacks behind captured units (their lists are in
        /// the session's `CaptureState`, not here: a chunk is set up for every read).
        var hasCaptures = false
    }

    /// The scan in a function of its own, small enough for `scan` to be inlined: inside the large
    /// `forwardFromClient` it was specialized out of line, taking the session +1 per chunk.
    private func scanClientChunk(_ bytes: UnsafeRawBufferPointer, _ chunk: inout ClientChunk) throws {
        try clientScanner.scan(bytes) { id, body, endOffset in clientMessage(id, body, endOffset, &chunk) }
    }

    /// One client message, ending at `endOffset` in the chunk: tracked, and counted (and collected for the
    /// follower when mirroring) if it ends a unit.
    @inline(__always)
    private func clientMessage(_ id: UInt8, _ body: UnsafeRawBufferPointer?, _ endOffset: Int, _ chunk: inout ClientChunk) {
        guard !chunk.terminated else { return } // after a Terminate nothing counts (nothing after it is sent on)
        let endsUnit = tracker.messageEndsUnit(id: id, body: body)
        defer { chunk.lastEnd = endOffset }
        if chunk.capturing, let body, id == FrontendMessageID.query.rawValue || id == FrontendMessageID.parse.rawValue
            || id == FrontendMessageID.bind.rawValue {
            let whole = !(chunk.lastEnd == 0 && chunk.startsMidMessage)
            if let replacement = captureSees(id: id, body: body, whole: whole) {
                captureChunk(&chunk).leaderEdits.append(CaptureEdit(range: chunk.lastEnd..<endOffset, bytes: replacement))
            }
        }
        switch id {
        case FrontendMessageID.query.rawValue:
            syncsSinceExecute = 0
            extendedSinceSync = false
        case FrontendMessageID.execute.rawValue:
            syncsSinceExecute = 0
            extendedSinceSync = true
        case FrontendMessageID.sync.rawValue: extendedSinceSync = false
        case FrontendMessageID.parse.rawValue, FrontendMessageID.bind.rawValue, FrontendMessageID.describe.rawValue,
             FrontendMessageID.close.rawValue:
            extendedSinceSync = true
        case FrontendMessageID.copyDone.rawValue, FrontendMessageID.copyFail.rawValue: clientCopyIn = false
        case FrontendMessageID.terminate.rawValue:
            if !chunk.terminated {
                if chunk.lastEnd == 0 && chunk.startsMidMessage {
                    chunk.terminateAt = endOffset // split across reads: complete it, and keep these backends out of the pool
                    leader?.isTainted = true
                    follower?.isTainted = true // it got the first half too
                } else {
                    chunk.terminateAt = chunk.lastEnd
                }
            }
            chunk.terminated = true
        case FrontendMessageID.flush.rawValue:
            chunk.flushAt = endOffset
            extendedSinceSync = true
        default: break
        }
        guard endsUnit else { return }
        // During COPY IN the backend ignores Sync: no ReadyForQuery will answer it.
        if clientCopyIn && id == FrontendMessageID.sync.rawValue { return tracker.skipUnit() }
        if id == FrontendMessageID.sync.rawValue { syncsSinceExecute += 1 }
        pendingReadyForQuery += 1
        if chunk.capturing {
            let ended = captureUnitEnds(begunHere: chunk.unitBegan >= 0)
            if !ended.executions.isEmpty {
                let readback = readbackBytes(for: ended.executions, clientUnitsAhead: Int32(clamping: pendingReadyForQuery))
                let s = captureChunk(&chunk)
                s.leaderEdits.append(CaptureEdit(range: endOffset..<endOffset, bytes: readback))
                s.followerCaptures.append((chunk.unitBegan..<endOffset, ended.executions))
            } else if ended.settingsToEmpty > 0 {
                let emptying = emptyingBytes(settings: ended.settingsToEmpty, clientUnitsAhead: Int32(clamping: pendingReadyForQuery))
                captureChunk(&chunk).leaderEdits.append(CaptureEdit(range: endOffset..<endOffset, bytes: emptying))
            }
            chunk.unitBegan = endOffset
        }
        tracker.unitSent()
        chunk.unitCount += 1
        if chunk.batching {
            let unit = tracker.takeUnit()
            if unit.crossSchemaCandidate, let route { server.checkCrossSchema(unit, session: self, route: route) }
            registerUnit(unit, followerSent: false) // sent with the batch (see `followerOutbox`)
        } else if chunk.collecting {
            chunkUnits.append((endOffset, tracker.takeUnit()))
        } else if tracker.current.crossSchemaCandidate {
            let unit = tracker.takeUnit()
            if let route { server.checkCrossSchema(unit, session: self, route: route) }
        } else {
            tracker.skipUnit()
        }
    }

    /// True at an idle transaction boundary with nothing in flight: the session can be ended here.
    var isIdleAtBoundary: Bool { transactionStatus == .idle && isWaitingForClient }

    /// Inside a transaction and waiting for its client (`idle_transaction_timeout`).
    var isIdleInTransaction: Bool { transactionStatus != .idle && isWaitingForClient }

    /// Every answer given to the client and nothing half-sent either way: no extended-protocol message since
    /// the last Sync (its unit is open on the leader: Execute then Sync may come in separate reads, and a
    /// flip, a shutdown or a timeout in between would cut it in two) and no COPY FROM STDIN in progress.
    private var isWaitingForClient: Bool {
        state == .forwarding && pendingReadyForQuery == 0 && !extendedSinceSync && !clientCopyIn && clientScanner.atMessageBoundary
            && (leader?.scanner.atMessageBoundary ?? true) && lockStepIsQuiet && heldForClient == nil
    }

    /// Idle, and the follower has answered everything: the session can change phase or leader here.
    var isDrainedAtBoundary: Bool {
        isIdleAtBoundary && unitsHead == units.count
            && (follower.map { $0.isReady && $0.internalUnits == 0 && $0.scanner.atMessageBoundary } ?? true)
    }

    /// Runs whatever waits for an idle boundary: shutdown, a forced re-route, phase changes, a route pause.
    func reachedIdleBoundaryIfIdle() {
        guard isIdleAtBoundary else { return }
        if closeWhenIdle { return failClient(ProxyError.shuttingDown()) }
        // Fields read through `self.route` each time: a local binding would live (retained) to the end of scope.
        guard isDrainedAtBoundary, let phase = route?.phase, let mirror = route?.mirror, let paused = route?.isPaused else { return }
        let behind = sessionPhase != phase || mirrorMode != mirror
        if paused { return reachedIdleBoundaryWhilePaused(behind: behind) }
        if behind { applyRoutePhase() }
    }

    private func reachedIdleBoundaryWhilePaused(behind: Bool) {
        guard let route, let pause = route.pause else { return }
        // During a leader flip the switch happens for all sessions at once; a manual pause still lets a
        // parked session take a flip that keeps the leader.
        if !pause.isFlip && behind { applyRoutePhase() }
        server.checkPause(route)
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

    /// Ends the client side. A unit in lock-step is finished on both sides first (else the follower could
    /// commit what the leader rolls back), and a follower still owing answers is kept until it has given
    /// them (or times out), so the last statements are compared and a flip never overtakes writes in flight.
    func end(reason: String) {
        guard state != .closed && state != .draining else { return }
        let wasActive = state == .forwarding || state == .admin
        client.closeAfterWrites()
        // Closing can fail the client connection at once (a TLS close_notify that cannot be sent), and that
        // ends the session from inside: it must not be finished twice.
        guard state != .closed && state != .draining else { return }
        if logs(.debug) { logger.debug("session ended", metadata: ["reason": "\(reason)"]) }
        if cold != nil { lockStep.dropQueued() }
        if follower != nil && (lockStepIsBusy || pendingUnitCount > 0) {
            state = .draining
            updateFollowerReading() // nothing else will ask for its answers now
            wasActiveBeforeDraining = wasActive
            finishDrainingIfDone()
            return
        }
        state = .closed
        releaseLeader()
        finish(wasActive: wasActive)
    }

    /// The session is done with its leader: to the server's idle pool when it can serve another session as it
    /// is (idle, every answer read, nothing queued, not shutting down), else ended with Terminate.
    private func releaseLeader() {
        guard let link = leader else { return }
        if endedCleanForPool, !leaderPaused, link.isReusable, server.parkIdle(link) {
            leader = nil // the pool has it; this session must not reach it again
            return
        }
        link.terminate()
    }

    /// Whether the session ended where its backends can serve another session as they are: a pool exists,
    /// not shutting down, idle, every answer read, no extended-protocol message since the last Sync (a Sync
    /// from the proxy would commit what the client never synced), no COPY, at a message boundary.
    var endedCleanForPool: Bool {
        server.idleBackends != nil && !closeWhenIdle && !server.isShuttingDown && transactionStatus == .idle
            && pendingReadyForQuery == 0 && !extendedSinceSync && clientScanner.atMessageBoundary && !clientCopyIn && lockStepIsQuiet
    }

    /// Called as a draining session's backends answer: lets the leader go once no unit is in lock-step,
    /// and finishes once the follower has caught up (or gone).
    func finishDrainingIfDone() {
        guard state == .draining else { return }
        // A capture's readback still on its way holds the leader: the follower's copy of that unit waits for it.
        if !lockStepIsBusy && !leaderReleased && (cold?.captures?.awaiting ?? 0) == 0 {
            // Units the leader had not answered will never be compared: the client is gone. (The leader still
            // owes their answers, so `endedCleanForPool` keeps both backends, which may still run them, out of the pool.)
            while units.count > unitsHead, let last = units.last, last.leader == nil { units.removeLast() }
            clampUnitCursors()
            leaderReleased = true
            releaseLeader()
            guard state == .draining else { return } // the Terminate failed at once and finished the session
        }
        guard !lockStepIsBusy, follower == nil || pendingUnitCount == 0 else { return }
        state = .closed
        finish(wasActive: wasActiveBeforeDraining)
    }

    /// Ends a draining session now (an admin's KILL, the shutdown deadline, the leader lost): `reason` says
    /// which. Statements the follower still owed answers for are never compared, and it may not have applied
    /// them: that is a divergence, and the route is no longer in sync.
    func forceFinish(_ reason: String) {
        guard state == .draining else { return }
        if follower != nil && pendingUnitCount > 0 {
            stopMirroring(.followerLost, detail: "\(reason) while the follower still owed answers to \(pendingUnitCount) statements, "
                          + "which were not compared (whether the follower applies them is unknown)")
            guard state == .draining else { return } // nothing else was left to wait for: it is finished
        }
        state = .closed
        leader?.terminate()
        finish(wasActive: wasActiveBeforeDraining)
    }

    private func finish(wasActive: Bool) {
        flushFollowerOutbox()
        releaseFollower()
        dropStandby()
        if let route {
            route.sessions[id] = nil
            if route.pause != nil { server.checkPause(route) }
            if route.warmUp != nil { server.checkFlipWarmUp(route) }
        }
        server.sessionEnded(self, wasActive: wasActive)
    }

    // MARK: parking (route paused)

    /// Lets held input go on after a pause; returns how long the client waited, in ms.
    @discardableResult
    func unpark() -> Double {
        guard let since = parkedSince else { return 0 }
        parkedSince = nil
        let waited = Double(loop.now - since)
        let held = parkedBytes
        parkedBytes = []
        if !held.isEmpty, state == .forwarding { held.withUnsafeBytes { forwardFromClient($0) } }
        maybeResumeClient() // stopped past the high-water mark while parked
        return waited
    }
}

/// A value kept on the heap: login-only state (a `ClientHandshake` is 650 bytes) then costs an idle
/// session one pointer instead of its whole size.
final class Boxed<Value> {
    var value: Value
    init(_ value: Value) { self.value = value }
}

extension ClientSession {
    func clientVisiblePIDMatches(_ pid: Int32) -> Bool { pid == clientVisiblePID }

    /// A short account of what the session is doing, for operators (SHOW SESSIONS, aborted flips).
    var describeActivity: String {
        switch state {
        case .handshake: return "logging in"
        case .connecting: return "connecting to backend"
        case .admin: return "admin console"
        case .draining: return "client gone, follower catching up"
        case .closed: return "closed"
        case .forwarding:
            if parkedSince != nil { return "held by pause" }
            if transactionStatus != .idle { return transactionStatus == .inTransaction ? "in transaction" : "in failed transaction" }
            if pendingReadyForQuery > 0 { return "running" }
            if unitsHead < units.count { return "waiting for follower" }
            return "idle"
        }
    }

    var stateName: String {
        switch state {
        case .handshake: return "login"
        case .connecting: return "connecting"
        case .forwarding: return "active"
        case .admin: return "admin"
        case .draining: return "draining"
        case .closed: return "closed"
        }
    }

    var pendingUnitCount: Int { cold.map { $0.units.count - $0.unitsHead } ?? 0 }
}

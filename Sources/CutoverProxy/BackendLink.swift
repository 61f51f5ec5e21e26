// One connection from a session to a backend: login first, then a scanned pass-through stream.
import CutoverCore
import CutoverProtocol
import CutoverRuntime

/// What a BackendLink tells its session (the `ClientSession` that owns it: the link holds that class, not
/// this protocol, so that its calls need no retain/release pair; the protocol lists what it may call).
protocol BackendLinkOwner: AnyObject {
    func backendReady(_ link: BackendLink, parameters: [(String, String)], key: CancelRequest?)
    func backendLoginFailed(_ link: BackendLink, _ error: ErrorFields)
    /// Pass-through bytes from the backend, after login, with the ReadyForQuery messages that end in them
    /// (`link.boundaries`: offset just past each one, its status, and the unit digest when digesting).
    func backendRead(_ link: BackendLink, _ bytes: UnsafeRawBufferPointer)
    func backendLost(_ link: BackendLink, _ error: Int32?)
    func backendDrained(_ link: BackendLink)
    /// A ParameterStatus after login (a SET of a reported parameter, e.g. application_name).
    func backendParameterChanged(_ link: BackendLink, name: String, value: String)
    /// A DataRow answering a unit of the proxy's own (a capture's readback).
    func backendInternalRow(_ link: BackendLink, _ body: UnsafeRawBufferPointer, unit: UInt64)
    /// The TCP connect to `address` (what the backend's host resolved to) succeeded or failed.
    func backendConnectOutcome(_ link: BackendLink, address: String, succeeded: Bool)
    /// The connect to `failed` did not succeed (`reason`); the link is trying `next`, the host's next address.
    func backendFallingBack(_ link: BackendLink, failed: String, reason: String, next: String)
}

/// A session's connection to one backend (the leader now; a follower uses the same type).
final class BackendLink: TCPConnectionDelegate {
    /// `parked`: in the server's idle pool, between sessions (see `park`).
    enum State { case connecting, loggingIn, ready, parked, closed }

    /// The backend's name, for logs and the admin console (its whole config is needed only to log in).
    let backendName: String
    /// Replaced only while connecting, when the login falls back to the backend's next address.
    private(set) var connection: TCPConnection
    /// The session that owns this link and outlives it. Unretained, and called through `owner { }` without a
    /// retain/release pair: an unowned protocol existential (as this was) is copied strong on every call.
    private var ownerRef: Unretained<ClientSession>
    @inline(__always) private func owner<R>(_ call: (ClientSession) -> R) -> R { ownerRef.call(call) }
    /// What only the login needs, boxed and dropped once logged in: an idle link should cost little memory.
    private final class Login {
        let backend: BackendConfig
        /// What the backend's host resolved to, in the order to try them (empty when it could not be
        /// resolved: `addressFailure` says why); `attempt` is the one connected or being connected to.
        let addresses: [String]
        var attempt = 0
        var address: String? { attempt < addresses.count ? addresses[attempt] : nil }
        /// The addresses tried before the current one, and why each failed (named in the final error).
        var failures: [String] = []
        let addressFailure: String?
        /// When the current address's connect started: `connect_timeout` applies to each address, as in libpq.
        var startedAt: UInt64
        /// When the TCP connect to the current address was started (ms; a follower's first one waits for the gate).
        var attemptStartedAt: UInt64 = 0
        var handshake: BackendHandshake
        var framer = MessageFramer(maxMessageSize: 1 << 30) // a backend row can be large; this only guards corruption
        var startup: [UInt8] = []
        /// When the connect was started (nil while a follower waits for its turn at the server's login gate).
        var admittedAt: UInt64?
        /// Told once when the login ends, whichever way (the server's gate counts follower logins).
        var settled: ((BackendLink) -> Void)?
        /// The backend's TLS context (nil: `tls = "disable"`), and whether its one-byte SSL answer is awaited.
        let tls: TLSContext?
        var awaitingTLSAnswer = false
        /// Set on each TCP socket the login opens (`[server] tcp_keepalive` and its timings).
        let keepalive: TCPKeepalive
        init(backend: BackendConfig, addresses: [String], addressFailure: String?, startedAt: UInt64, handshake: BackendHandshake, tls: TLSContext?,
             keepalive: TCPKeepalive) {
            self.keepalive = keepalive
            self.backend = backend
            self.addresses = addresses
            self.addressFailure = addressFailure
            self.startedAt = startedAt
            self.handshake = handshake
            self.tls = tls
        }
    }
    private var login: Login?
    var scanner: MessageScanner
    /// Rarely used buffers, boxed (an idle link then costs 8 bytes for them, not 16).
    private final class Spill {
        /// Bytes written before login finished (a follower joining mid-session), sent right after it.
        var queuedUntilReady: [UInt8] = []
        /// Kept bytes of a chunk that had internal answers cut out of it.
        var scratch: [UInt8] = []
        /// With a backend pool: the login's startup packet (the pool's key) and the ParameterStatus values
        /// the backend reported at login (what a later session that takes the link is told).
        var startup: [UInt8] = []
        /// Encoded once, as ParameterStatus messages: a pooled link's next sessions get these bytes as they are.
        var loginParameters: [UInt8] = []
        var poolGeneration = 0
        /// When the login finished (loop ms; with a backend pool): `backend_lifetime` counts from it.
        var loggedInAt: UInt64 = 0
        /// When non-empty, one entry per internal unit still owed, in order: how many of the client's units
        /// are answered before it begins (a capture's readback goes behind the unit it reads back; the
        /// proxy's other units are sent with nothing ahead of them, 0).
        var internalBehind: [Int32] = []
    }
    private var spill: Spill?
    private var spillForWrite: Spill {
        if let spill { return spill }
        let s = Spill()
        spill = s
        return s
    }
    var queuedUntilReadyCount: Int { spill?.queuedUntilReady.count ?? 0 }
    /// When set, every answer is folded into unit digests for comparison (dual phases only: it costs a hash per row).
    /// Boxed: 8 bytes on every link instead of 24, and only dual-phase links have one.
    private var digest: Boxed<DigestBuilder>?

    struct Boundary {
        var digest: UnitDigest?
        /// Where the ReadyForQuery ends in the reported bytes (Int32: a chunk is at most the read buffer;
        /// with the narrow fields after the reference, a boundary is 16 bytes and a link 16 bytes smaller).
        private var end: Int32
        var status: TransactionStatus
        /// The end of a unit the proxy sent itself (its bytes are not in the report).
        var isInternal = false
        /// Not a ReadyForQuery but a CopyInResponse: the backend now ignores Sync until the copy ends.
        var isCopyIn = false

        var endOffset: Int { Int(end) }

        init(endOffset: Int, digest: UnitDigest?, status: TransactionStatus, isInternal: Bool = false, isCopyIn: Bool = false) {
            self.digest = digest
            end = Int32(endOffset)
            self.status = status
            self.isInternal = isInternal
            self.isCopyIn = isCopyIn
        }
    }
    /// The ReadyForQuery messages of the chunk being reported.
    private(set) var boundaries = BoundaryList()
    // Narrow fields last (declaration order is layout order).
    private(set) var key: CancelRequest?
    private(set) var state = State.connecting {
        didSet {
            // The login ended (logged in, failed, or the session let the link go first).
            guard state == .ready || state == .closed, let login, let settled = login.settled else { return }
            login.settled = nil
            settled(self)
        }
    }
    /// Which side of the route this link talks to.
    let side: Side?
    /// Keep the startup packet and the login's ParameterStatus values, so the link can go to the server's
    /// idle pool when its session ends (set before `start` when pooling is on).
    var keepsLogin = false
    /// Never to be pooled: a cancel was sent to its backend (one still in flight would hit the next session's
    /// statement), or the client's Terminate reached it in part.
    var isTainted = false
    /// Units the proxy itself sent (replayed state, the implicit BEGIN/COMMIT of sync mirroring, a capture's
    /// readback): their answers are consumed here and never reach the client; their end is reported as an
    /// internal boundary (see `addInternal`).
    private(set) var internalUnits: Int32 = 0

    /// Counts `count` units the proxy sends itself, right behind `afterClientUnits` of the client's units
    /// still to be answered (sent before them).
    func addInternal(_ count: Int32 = 1, afterClientUnits: Int32 = 0) {
        guard count > 0 else { return }
        if afterClientUnits > 0 || !(spill?.internalBehind.isEmpty ?? true) {
            let s = spillForWrite
            if s.internalBehind.isEmpty { s.internalBehind = Array(repeating: 0, count: Int(internalUnits)) }
            // Entries count from the end of the one before them.
            s.internalBehind.append(afterClientUnits - s.internalBehind.reduce(0, +))
            s.internalBehind += Array(repeating: 0, count: Int(count) - 1)
        }
        internalUnits += count
    }

    /// `count` of the client's units counted ahead of internal ones will get no ReadyForQuery (Syncs sent
    /// behind a COPY's Execute, which the backend ignores in COPY mode).
    func clientUnitsWillNotBeAnswered(_ count: Int32) {
        guard let s = spill, !s.internalBehind.isEmpty else { return }
        var left = count
        for i in s.internalBehind.indices where left > 0 {
            let d = min(s.internalBehind[i], left)
            s.internalBehind[i] -= d
            left -= d
        }
    }

    /// Whether the message arriving now answers a unit of the proxy's own.
    @inline(__always) private var answeringInternal: Bool {
        internalUnits > 0 && (spill.map { $0.internalBehind.isEmpty || $0.internalBehind[0] == 0 } ?? true)
    }

    /// Internal units answered so far: a row of one is reported with the number of its unit
    /// (`backendInternalRow`), its boundary counts here.
    private(set) var internalAnswered: UInt64 = 0

    /// A ReadyForQuery arrived: one unit, internal or the client's, is answered.
    private func unitAnswered(internal isInternal: Bool) {
        if isInternal {
            internalAnswered &+= 1
            internalUnits -= 1
            if let s = spill, !s.internalBehind.isEmpty { s.internalBehind.removeFirst() }
        } else if internalUnits > 0, let s = spill, !s.internalBehind.isEmpty, s.internalBehind[0] > 0 {
            s.internalBehind[0] -= 1
        }
    }

    /// Decoded during pass-through: ReadyForQuery drives the session's boundaries.
    static let captured = MessageScanner.IDSet([BackendMessageID.readyForQuery.rawValue, BackendMessageID.copyInResponse.rawValue,
                                                BackendMessageID.parameterStatus.rawValue])
    static let capturedDigesting = MessageScanner.IDSet(DigestBuilder.capturedIDs + [BackendMessageID.copyInResponse.rawValue,
                                                                                     BackendMessageID.parameterStatus.rawValue])
    /// Parked: the reset's CommandComplete is read too (`parkedRead` checks it is DISCARD ALL's).
    static let capturedParked = MessageScanner.IDSet([BackendMessageID.readyForQuery.rawValue, BackendMessageID.commandComplete.rawValue])

    /// `addresses`: where to connect, resolved from the backend's host, in the order to try them (empty: it
    /// could not be resolved, `addressFailure` says why).
    init(loop: EventLoop, backend: BackendConfig, addresses: [String], addressFailure: String? = nil, side: Side?, owner: ClientSession,
         tls: TLSContext?, keepalive: TCPKeepalive, saltedPassword: @escaping (String, [UInt8], Int) -> [UInt8]) {
        self.side = side
        backendName = backend.name
        ownerRef = Unretained(owner)
        connection = TCPConnection(loop: loop)
        login = Login(backend: backend, addresses: addresses, addressFailure: addressFailure, startedAt: loop.now, handshake: BackendHandshake(backend: backend, saltedPassword: saltedPassword), tls: tls,
                      keepalive: keepalive)
        scanner = MessageScanner(captured: Self.captured, maxMessageSize: Int(Int32.max))
        super.init()
        connection.delegate = self
    }

    deinit { connection.delegate = nil }

    /// An owner letting go of `old` hands it to the loop first: its connection calls it unretained, so it
    /// must outlive the callback that may be running now (see `EventLoop.retire`).
    static func retire(_ old: BackendLink?, replacedBy new: BackendLink?) {
        if let old, old !== new { old.connection.eventLoop.retire(old) }
    }

    /// Turns unit digests on or off. Only at a message boundary (the session switches phases when idle).
    func setDigesting(_ on: Bool) {
        guard on != (digest != nil) else { return }
        digest = on ? Boxed(DigestBuilder()) : nil
        scanner = MessageScanner(captured: on ? Self.capturedDigesting : Self.captured, maxMessageSize: Int(Int32.max))
    }

    /// Writes now if logged in, else queues until login completes.
    func send(_ bytes: UnsafeRawBufferPointer) {
        if state == .ready {
            // Borrowed, not retained: `connection` is a `var` (replaced only while connecting), and a plain call
            // through it retains it around the write. The link holds it strongly for the whole call.
            _ = Unretained(connection).call { $0.write(bytes) }
        } else if state != .closed {
            spillForWrite.queuedUntilReady.append(contentsOf: bytes)
        }
    }

    func send(_ bytes: [UInt8]) { bytes.withUnsafeBytes { send($0) } }

    var isReady: Bool { state == .ready }
    var isClosed: Bool { state == .closed }

    /// Connects and sends the startup packet once connected.
    func start(startup: [UInt8], nowNs: UInt64) {
        prepare(startup: startup, onSettled: nil)
        connect(nowNs: nowNs)
    }

    /// Keeps the startup packet for `connect`; `onSettled` is told once when the login ends, either way.
    func prepare(startup: [UInt8], onSettled: ((BackendLink) -> Void)?) {
        if keepsLogin { spillForWrite.startup = startup }
        login?.startup = startup
        login?.settled = onSettled
    }

    /// Starts the connection (for a follower: when the server's login gate admits it).
    func connect(nowNs: UInt64) {
        guard state == .connecting, let login, login.admittedAt == nil else { return }
        login.admittedAt = nowNs
        guard login.address != nil else {
            return failSoon(unavailable("could not resolve host name \"\(login.backend.host)\": \(login.addressFailure ?? "no address")"))
        }
        connectToCurrentAddress(login)
    }

    private func connectToCurrentAddress(_ login: Login) {
        guard let address = login.address else { return }
        login.attemptStartedAt = connection.eventLoop.now
        if let rc = login.backend.isUnixSocket ? connection.connect(unixPath: login.backend.socketPath)
                                               : connection.connect(host: address, port: login.backend.port) {
            // A local failure (no socket: EMFILE, ENOBUFS): no other address would fare better, and this
            // one is not to blame. The connect's own outcome (refused, unreachable) comes to didConnect.
            failSoon(unavailable(uvErrorName(rc)))
        } else {
            connection.setKeepalive(login.keepalive)
        }
    }

    /// The TCP connect to the current address failed (`reason`): tries the backend's next address, on a new
    /// socket, and returns true; false when none is left (the caller fails the login). A host name with
    /// several addresses (IPv4 and IPv6, or a DNS name over replicas) then fails a login only when every
    /// address does.
    @discardableResult
    func fallBack(_ reason: String) -> Bool {
        guard state == .connecting, let login, let failed = login.address, login.attempt + 1 < login.addresses.count else { return false }
        login.failures.append("\(failed): \(reason)")
        login.attempt += 1
        let loop = connection.eventLoop
        login.startedAt = loop.now
        // The old socket may be in its own callback now: it stops calling this link, and closes.
        connection.delegate = nil
        connection.close()
        connection = TCPConnection(loop: loop)
        connection.delegate = self
        owner { $0.backendFallingBack(self, failed: failed, reason: reason, next: login.address ?? "") }
        connectToCurrentAddress(login)
        return true
    }

    /// Fails from the loop, not from inside `connect`: the session may not have stored this link yet.
    private func failSoon(_ e: ErrorFields) {
        connection.eventLoop.soon { [self] in fail(e) }
    }

    /// A follower's or standby's TCP connect still unanswered after `limitMs` (a host that drops SYNs): counted
    /// against that address and moved on to the next one, as the sweep does for leaders. (With no address
    /// left it waits on: `follower_timeout` and `flip_timeout` bound a follower's login.)
    func fallBackIfConnectTimedOut(nowMs: UInt64, limitMs: UInt64) {
        guard let address = connectingTo, let login, nowMs &- login.attemptStartedAt > limitMs,
              login.attempt + 1 < login.addresses.count else { return }
        owner { $0.backendConnectOutcome(self, address: address, succeeded: false) }
        fallBack("timed out after \(Double(limitMs) / 1000) s")
    }

    /// The address a TCP connect is in flight to (nil once connected, or before the connect started).
    var connectingTo: String? { state == .connecting && login?.admittedAt != nil ? login?.address : nil }

    /// When this link's login was let through the gate (ns); nil while waiting, and once logged in.
    var loginAdmittedAt: UInt64? { login?.admittedAt }

    override func connection(_ c: TCPConnection, didConnect error: Int32?) {
        guard state == .connecting, let login else { return }
        if let address = login.address { owner { $0.backendConnectOutcome(self, address: address, succeeded: error == nil) } }
        if let error {
            if fallBack(uvErrorName(error)) { return }
            return fail(unavailable(uvErrorName(error)))
        }
        state = .loggingIn
        connection.startReading()
        if login.backend.tls != .disable && !login.backend.isUnixSocket { // libpq, too, never asks for TLS on a Unix socket
            // No context means a reload could not build it: never fall back to clear text silently.
            guard login.tls != nil else { return fail(unavailable("no TLS context for this backend (see the log)")) }
            login.awaitingTLSAnswer = true
            var w = ByteWriter(capacity: 8)
            StartupPacket.sslRequest.encode(into: &w)
            connection.write(w.bytes)
            return
        }
        sendStartup(login)
    }

    private func sendStartup(_ login: Login) {
        connection.write(login.startup) // with TLS, held by the stream until the handshake is done
        login.startup = []
    }

    /// The server's one-byte answer to the SSLRequest: `S` starts TLS, `N` continues in clear text if the
    /// mode allows it.
    private func tlsAnswered(_ bytes: UnsafeRawBufferPointer, _ login: Login) {
        login.awaitingTLSAnswer = false
        let mode = login.backend.tls
        // Anything after the answer came in clear text before the handshake: refused, as libpq does (CVE-2021-23222).
        guard bytes.count == 1 else {
            return fail(unavailable(bytes.first == UInt8(ascii: "E") ? "the server answered the SSL request with an error"
                                                                     : "received unencrypted data after the SSL answer"))
        }
        switch bytes[0] {
        case UInt8(ascii: "S"):
            guard let context = login.tls else { return fail(unavailable("no TLS context for this backend")) }
            do {
                let stream = try TLSStream(context: context, serverName: mode == .verifyFull ? login.backend.host : nil)
                connection.filter = TLSFilter(stream)
            } catch {
                return fail(unavailable("\(error)"))
            }
            sendStartup(login)
        case UInt8(ascii: "N") where mode == .prefer:
            sendStartup(login)
        case UInt8(ascii: "N"):
            fail(unavailable("the server does not accept TLS (tls = \"\(mode.rawValue)\")"))
        default:
            fail(unavailable("invalid answer to the SSL request"))
        }
    }

    override func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        switch state {
        case .loggingIn: loginRead(bytes)
        case .ready: passThrough(bytes)
        case .parked: parkedRead(bytes)
        case .connecting, .closed: break
        }
    }

    private func loginRead(_ bytes: UnsafeRawBufferPointer) {
        guard let login else { return }
        if login.awaitingTLSAnswer { return tlsAnswered(bytes, login) }
        login.framer.append(bytes)
        do {
            while state == .loggingIn, let frame = try login.framer.next() {
                let message = try BackendMessage.decode(id: frame.id!, body: frame.body)
                if login.handshake.channelBinding == nil, let tls = connection.filter as? TLSFilter {
                    login.handshake.channelBinding = tls.stream.peerEndPoint // the handshake is done by now
                }
                let action = login.handshake.received(message)
                switch action {
                case .send(let out): connection.write(out)
                case .wait: break
                case .fail(let e): return fail(e)
                case .ready(let parameters, let key, _):
                    state = .ready
                    self.key = key
                    if keepsLogin {
                        spillForWrite.loginParameters = Self.parameterStatusBytes(parameters)
                        spillForWrite.loggedInAt = connection.eventLoop.now
                    }
                    self.login = nil
                    owner { $0.backendReady(self, parameters: parameters, key: key) }
                    if let queued = spill?.queuedUntilReady, !queued.isEmpty, state == .ready {
                        connection.write(queued)
                        spill?.queuedUntilReady = []
                    }
                    // Anything after the first ReadyForQuery (nothing, normally) is ordinary traffic.
                    let rest = login.framer.takeRemainder()
                    if !rest.isEmpty, state == .ready { rest.withUnsafeBytes { passThrough($0) } }
                }
            }
        } catch {
            fail(ProxyError.fatal("08P01", "backend \"\(backendName)\" sent a malformed message during login"))
        }
    }

    private func passThrough(_ bytes: UnsafeRawBufferPointer) {
        boundaries.removeAll()
        if digest == nil && internalUnits == 0 { return passThroughPlain(bytes) }
        // Cutting internal answers out: `kept` counts reported bytes, `dropped` says whether any were cut.
        var lastEnd = 0, kept = 0, dropped = false
        // Only chunks that may hold internal answers track ranges (no allocation on the common path).
        let filtering = internalUnits > 0
        var keptRanges: [Range<Int>] = []
        do {
            try scanner.scan(bytes) { id, body, endOffset in
                let isInternal = answeringInternal
                var unit: UnitDigest?
                if let digest { unit = digest.value.received(id: id, body: body) }
                if isInternal {
                    dropped = true
                    // A capture's readback: its row carries the leader's values.
                    if id == BackendMessageID.dataRow.rawValue, let body { owner { $0.backendInternalRow(self, body, unit: internalAnswered) } }
                } else {
                    kept += endOffset - lastEnd
                    if !filtering {} else if let last = keptRanges.last, last.upperBound == lastEnd { keptRanges[keptRanges.count - 1] = last.lowerBound..<endOffset }
                    else { keptRanges.append(lastEnd..<endOffset) }
                }
                lastEnd = endOffset
                if let body { noteCaptured(id: id, body: body, reportedEnd: kept, unit: unit, isInternal: isInternal) }
            }
        } catch {
            return corruptStream()
        }
        // The partial message at the end belongs to whatever unit is current.
        if filtering && lastEnd < bytes.count {
            if answeringInternal { dropped = true } else {
                if let last = keptRanges.last, last.upperBound == lastEnd { keptRanges[keptRanges.count - 1] = last.lowerBound..<bytes.count }
                else { keptRanges.append(lastEnd..<bytes.count) }
            }
        }
        guard dropped else { return owner { $0.backendRead(self, bytes) } }
        let spill = spillForWrite
        spill.scratch.removeAll(keepingCapacity: true)
        for r in keptRanges { spill.scratch.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[r])) }
        spill.scratch.withUnsafeBytes { kept in owner { $0.backendRead(self, kept) } }
    }

    /// No digests and no internal answers to cut out (every session in a single-side phase): each message
    /// costs its header and, for the few captured ones, one id check.
    private func passThroughPlain(_ bytes: UnsafeRawBufferPointer) {
        do {
            try scanner.scan(bytes) { id, body, endOffset in
                if let body { noteCaptured(id: id, body: body, reportedEnd: endOffset, unit: nil, isInternal: false) }
            }
        } catch {
            return corruptStream()
        }
        owner { $0.backendRead(self, bytes) }
    }

    /// A captured message (ReadyForQuery, CopyInResponse, ParameterStatus) that ends at `reportedEnd` in the
    /// bytes reported to the session.
    @inline(__always)
    private func noteCaptured(id: UInt8, body: UnsafeRawBufferPointer, reportedEnd: Int, unit: UnitDigest?, isInternal: Bool) {
        if id == BackendMessageID.readyForQuery.rawValue {
            guard body.count == 1, let status = TransactionStatus(rawValue: body[0]) else { return }
            if internalUnits > 0 { unitAnswered(internal: isInternal) }
            boundaries.append(Boundary(endOffset: reportedEnd, digest: unit, status: status, isInternal: isInternal))
        } else if id == BackendMessageID.copyInResponse.rawValue {
            boundaries.append(Boundary(endOffset: reportedEnd, digest: nil, status: .idle, isInternal: isInternal, isCopyIn: true))
        } else if id == BackendMessageID.parameterStatus.rawValue, !isInternal {
            // Rare (a SET of a reported parameter): decoded here, forwarded with the rest.
            if case .parameterStatus(let name, let value)? = try? BackendMessage.decode(id: id, raw: body) {
                owner { $0.backendParameterChanged(self, name: name, value: value) }
            }
        }
    }

    /// A corrupt stream from a backend cannot be forwarded safely.
    private func corruptStream() {
        close()
        owner { $0.backendLost(self, nil) }
    }

    private func fail(_ e: ErrorFields) {
        guard state != .closed else { return }
        state = .closed
        connection.close()
        owner { $0.backendLoginFailed(self, e) }
    }

    override func connectionDidDrain(_ c: TCPConnection) {
        if state == .ready { owner { $0.backendDrained(self) } }
    }

    override func connection(_ c: TCPConnection, didFail error: Int32?) {
        let was = state
        state = .closed
        switch was {
        case .connecting:
            owner { $0.backendLoginFailed(self, unavailable(error.map(uvErrorName) ?? "connection closed")) }
        case .loggingIn:
            let tlsFailure = (c.filter as? TLSFilter)?.failure
            owner { $0.backendLoginFailed(self, unavailable(tlsFailure.map { "TLS: \($0)" } ?? "connection closed during login")) }
        case .ready:
            owner { $0.backendLost(self, error) }
        case .parked, .closed:
            break // a parked link has no session; the pool finds it closed
        }
    }

    /// When the connect to the current address started; nil once logged in (the connect timeout applies only until then).
    var connectStartedAt: UInt64? { login?.startedAt }

    /// Connecting or logging in failed (the login state names the backend's address, and those tried before it).
    func unavailable(_ reason: String) -> ErrorFields {
        if let login {
            let earlier = login.failures.isEmpty ? "" : "; tried before: \(login.failures.joined(separator: "; "))"
            return ProxyError.backendUnavailable(login.backend, reason + earlier, address: login.address)
        }
        return ProxyError.fatal("08006", "cannot connect to backend \"\(backendName)\": \(reason)")
    }

    /// Politely ends the backend session (Terminate) and closes once it is written.
    func terminate() {
        guard state != .closed else { return }
        let wasReady = state == .ready || state == .parked
        if wasReady { connection.write([FrontendMessageID.terminate.rawValue, 0, 0, 0, 4]) }
        state = .closed
        // A link still connecting or logging in has nothing worth flushing: closed at once, or a connect in
        // flight would keep its socket (and libuv's reference) after it completes.
        if wasReady { connection.closeAfterWrites() } else { connection.close() }
    }

    func close() {
        state = .closed
        connection.close()
    }

    // MARK: the idle pool

    /// The pool's key for this link: its backend and the login's startup packet (nil if not kept).
    var poolKey: IdleBackendPool.Key? {
        guard keepsLogin, let startup = spill?.startup, !startup.isEmpty else { return nil }
        return IdleBackendPool.Key(backend: backendName, side: side, startup: startup)
    }

    /// What the backend reported at login, for a session that takes the link from the pool.
    var loginParameters: [UInt8] { spill?.loginParameters ?? [] }

    /// When the login finished (loop ms), for a link kept for the pool; 0 otherwise.
    var loggedInAt: UInt64 { spill?.loggedInAt ?? 0 }

    /// The backend's ParameterStatus messages, as a client is sent them at login.
    static func parameterStatusBytes(_ parameters: [(String, String)]) -> [UInt8] {
        var w = ByteWriter(capacity: 512)
        for (name, value) in parameters { BackendMessage.parameterStatus(name: name, value: value).encode(into: &w) }
        return w.bytes
    }

    /// Whether the link can serve another session once reset: logged in, every answer read, nothing queued.
    var isReusable: Bool {
        state == .ready && internalUnits == 0 && scanner.atMessageBoundary && connection.queuedBytes == 0 && keepsLogin && !isTainted
    }

    /// Parked: the reset's CommandComplete has arrived (its ReadyForQuery then makes the link usable).
    private var sawResetTag = false

    /// Parked and still waiting for its reset's answer (taken within moments of parking): not usable yet.
    var isResetting: Bool { state == .parked && internalUnits > 0 }

    /// The pool generation it was logged in under (a reload that changes backends starts a new one).
    var poolGeneration: Int {
        get { spill?.poolGeneration ?? 0 }
        set { spillForWrite.poolGeneration = newValue }
    }

    /// Into the pool. The session that let it go is ending, so from here the link calls no session: it
    /// resets the backend with DISCARD ALL (settings, prepared statements, temporary tables, LISTEN,
    /// advisory locks: an idle pooled backend must hold no lock and get no notification), reads the answer
    /// itself, and then reads only to notice the backend going away (it closes on EOF or on anything the
    /// backend sends unasked).
    func park() {
        setDigesting(false)
        // A reset's answer is small: a longer message (a corrupt length) throws and closes the link rather
        // than reserving its whole length.
        scanner = MessageScanner(captured: Self.capturedParked, maxMessageSize: 64 << 10)
        connection.readsOnDemand = false
        state = .parked
        sawResetTag = false
        spill?.internalBehind = []
        internalUnits = 1
        var w = ByteWriter(capacity: 20)
        FrontendMessage.query("DISCARD ALL").encode(into: &w)
        connection.write(w.bytes)
        connection.startReading()
    }

    /// Parked, reset done, and the backend has not gone or spoken since: a session may take it.
    var isResetAndIdle: Bool {
        state == .parked && internalUnits == 0 && scanner.atMessageBoundary && connection.peerIsIdleAndOpen
    }

    /// Out of the pool, for `session` (only once `isResetAndIdle`).
    func adopt(by session: ClientSession) {
        ownerRef = Unretained(session)
        // Done with the parked capture set (at a message boundary: `isResetAndIdle`). The taking session may
        // have asked for digests already (a dual phase starts its follower before adopting a pooled leader).
        scanner = MessageScanner(captured: digest != nil ? Self.capturedDigesting : Self.captured, maxMessageSize: Int(Int32.max))
        state = .ready
    }

    /// A parked link's reads: the reset's answer (a DISCARD ALL CommandComplete, ParameterStatus for reset
    /// values, ReadyForQuery idle), then nothing. Anything else — an error, a transaction left open, the
    /// answer to a statement the backend was still running when the link was parked (it would be taken for
    /// the reset's, and the next session would get every answer one late), or anything after the reset —
    /// closes the link.
    private func parkedRead(_ bytes: UnsafeRawBufferPointer) {
        var usable = true
        do {
            try scanner.scan(bytes) { id, body, _ in
                guard usable else { return }
                switch id {
                case _ where internalUnits == 0:
                    usable = false
                case BackendMessageID.commandComplete.rawValue:
                    if let body, body.elementsEqual(Self.discardAllTag) { sawResetTag = true } else { usable = false }
                case BackendMessageID.parameterStatus.rawValue, BackendMessageID.noticeResponse.rawValue:
                    break
                case BackendMessageID.notificationResponse.rawValue where !sawResetTag:
                    break // a NOTIFY for the session's LISTEN, sent while it was idle; the reset unlistens
                case BackendMessageID.readyForQuery.rawValue:
                    internalUnits -= 1
                    if body?.first != TransactionStatus.idle.rawValue || !sawResetTag { usable = false }
                default:
                    usable = false
                }
            }
        } catch { usable = false }
        if !usable { close() }
    }

    /// The CommandComplete body DISCARD ALL answers with (its tag and NUL).
    static let discardAllTag = Array("DISCARD ALL".utf8) + [0]
}

/// The boundaries of one chunk: almost always none or one, so the first is stored inline and only a
/// pipelined chunk touches an array (clearing an array per chunk cost more than the rest of the bookkeeping).
struct BoundaryList: RandomAccessCollection {
    private var first_: BackendLink.Boundary?
    private var rest: [BackendLink.Boundary] = []

    var startIndex: Int { 0 }
    var endIndex: Int { first_ == nil ? 0 : 1 + rest.count }
    subscript(i: Int) -> BackendLink.Boundary { i == 0 ? first_! : rest[i - 1] }

    mutating func append(_ b: BackendLink.Boundary) {
        if first_ == nil { first_ = b } else { rest.append(b) }
    }

    mutating func removeAll() {
        guard first_ != nil else { return }
        first_ = nil
        if !rest.isEmpty { rest.removeAll(keepingCapacity: true) }
    }
}

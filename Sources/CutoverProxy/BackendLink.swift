// One connection from a session to a backend: login first, then a scanned pass-through stream.
import CutoverCore
import CutoverProtocol
import CutoverRuntime

/// What a BackendLink tells its session.
protocol BackendLinkOwner: AnyObject {
    func backendReady(_ link: BackendLink, parameters: [(String, String)], key: CancelRequest?)
    func backendLoginFailed(_ link: BackendLink, _ error: ErrorFields)
    /// Pass-through bytes from the backend, after login. `link.scanner` has already seen them.
    func backendRead(_ link: BackendLink, _ bytes: UnsafeRawBufferPointer)
    func backendReadyForQuery(_ link: BackendLink, _ status: TransactionStatus)
    func backendLost(_ link: BackendLink, _ error: Int32?)
    func backendDrained(_ link: BackendLink)
}

/// A session's connection to one backend (the leader now; a follower uses the same type).
final class BackendLink: TCPConnectionDelegate {
    enum State { case connecting, loggingIn, ready, closed }

    let backend: BackendConfig
    let address: String
    let connection: TCPConnection
    unowned let owner: BackendLinkOwner
    private(set) var state = State.connecting
    private var handshake: BackendHandshake
    private var framer: MessageFramer
    var scanner: MessageScanner
    private(set) var key: CancelRequest?
    let startedAt: UInt64

    /// Decoded during pass-through: ReadyForQuery drives the session's boundaries.
    static let captured = MessageScanner.IDSet([BackendMessageID.readyForQuery.rawValue])

    init(loop: EventLoop, backend: BackendConfig, address: String, owner: BackendLinkOwner,
         saltedPassword: @escaping (String, [UInt8], Int) -> [UInt8], maxMessageSize: Int) {
        self.backend = backend
        self.address = address
        self.owner = owner
        connection = TCPConnection(loop: loop)
        handshake = BackendHandshake(backend: backend, saltedPassword: saltedPassword)
        // Backend messages can be large (a multi-megabyte row); the limit only guards against corruption.
        framer = MessageFramer(maxMessageSize: 1 << 30)
        scanner = MessageScanner(captured: Self.captured, maxMessageSize: Int(Int32.max))
        startedAt = loop.now
        connection.delegate = self
        _ = maxMessageSize
    }

    /// Connects and sends the startup packet once connected.
    func start(startup: [UInt8]) {
        pendingStartup = startup
        if let rc = connection.connect(host: address, port: backend.port) {
            fail(ProxyError.backendUnavailable(backend, uvErrorName(rc)))
        }
    }
    private var pendingStartup: [UInt8] = []

    func connection(_ c: TCPConnection, didConnect error: Int32?) {
        guard state == .connecting else { return }
        if let error { return fail(ProxyError.backendUnavailable(backend, uvErrorName(error))) }
        state = .loggingIn
        connection.startReading()
        connection.write(pendingStartup)
        pendingStartup = []
    }

    func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
        switch state {
        case .loggingIn: login(bytes)
        case .ready: passThrough(bytes)
        case .connecting, .closed: break
        }
    }

    private func login(_ bytes: UnsafeRawBufferPointer) {
        framer.append(bytes)
        do {
            while state == .loggingIn, let frame = try framer.next() {
                let message = try BackendMessage.decode(id: frame.id!, body: frame.body)
                switch handshake.received(message) {
                case .send(let out): connection.write(out)
                case .wait: break
                case .fail(let e): return fail(e)
                case .ready(let parameters, let key, _):
                    state = .ready
                    self.key = key
                    owner.backendReady(self, parameters: parameters, key: key)
                    // Anything after the first ReadyForQuery (nothing, normally) is ordinary traffic.
                    let rest = framer.takeRemainder()
                    if !rest.isEmpty, state == .ready { rest.withUnsafeBytes { passThrough($0) } }
                }
            }
        } catch {
            fail(ProxyError.fatal("08P01", "backend \"\(backend.name)\" sent a malformed message during login"))
        }
    }

    private func passThrough(_ bytes: UnsafeRawBufferPointer) {
        do {
            try scanner.scan(bytes) { id, body, _ in
                if id == BackendMessageID.readyForQuery.rawValue, let body, body.count == 1,
                   let status = TransactionStatus(rawValue: body[0]) {
                    owner.backendReadyForQuery(self, status)
                }
            }
        } catch {
            // A corrupt stream from a backend cannot be forwarded safely.
            close()
            owner.backendLost(self, nil)
            return
        }
        owner.backendRead(self, bytes)
    }

    private func fail(_ e: ErrorFields) {
        guard state != .closed else { return }
        state = .closed
        connection.close()
        owner.backendLoginFailed(self, e)
    }

    func connectionDidDrain(_ c: TCPConnection) { owner.backendDrained(self) }

    func connection(_ c: TCPConnection, didFail error: Int32?) {
        let was = state
        state = .closed
        switch was {
        case .connecting:
            owner.backendLoginFailed(self, ProxyError.backendUnavailable(backend, error.map(uvErrorName) ?? "connection closed"))
        case .loggingIn:
            owner.backendLoginFailed(self, ProxyError.backendUnavailable(backend, "connection closed during login"))
        case .ready:
            owner.backendLost(self, error)
        case .closed:
            break
        }
    }

    /// Politely ends the backend session (Terminate) and closes once it is written.
    func terminate() {
        guard state != .closed else { return }
        if state == .ready { connection.write([FrontendMessageID.terminate.rawValue, 0, 0, 0, 4]) }
        state = .closed
        connection.closeAfterWrites()
    }

    func close() {
        state = .closed
        connection.close()
    }
}

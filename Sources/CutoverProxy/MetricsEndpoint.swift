// The HTTP endpoint for Prometheus and Kubernetes probes: /metrics, /healthz, /readyz, one request per connection.
import CutoverCore
import CutoverRuntime

/// Serves what `ProxyServer` reports over plain HTTP/1.1. Each connection gets one answer and is closed;
/// a client that sends no complete request head within `requestTimeoutMs` is dropped (the server's sweep
/// checks), at most `maxExchanges` are open at once (the oldest goes first), and an answer its client does
/// not read within `requestTimeoutMs` is cut off, so a scraper cannot hold the proxy's memory or descriptors.
final class MetricsEndpoint {
    static let requestTimeoutMs: UInt64 = 5000
    static let maxExchanges = 32

    private let loop: EventLoop
    private unowned let server: ProxyServer
    private var listener: TCPListener?
    private var exchanges: [Exchange] = []
    /// Answered connections still writing their answer (closed after their writes), and since when.
    private var answering: [(connection: TCPConnection, since: UInt64)] = []
    var port: Int { listener?.port ?? 0 }

    init(loop: EventLoop, server: ProxyServer, host: String, port: Int) throws {
        self.loop = loop
        self.server = server
        listener = try TCPListener(loop: loop, host: host, port: port) { [unowned self] c in self.accept(c) }
    }

    private func accept(_ c: TCPConnection) {
        sweep(now: loop.now)
        if exchanges.count >= Self.maxExchanges { exchanges.first?.finish() }
        exchanges.append(Exchange(connection: c, endpoint: self, startedAt: loop.now))
    }

    /// Drops requests that did not arrive, and answers not read, within `requestTimeoutMs`.
    func sweep(now: UInt64) {
        for e in exchanges where now &- e.startedAt > Self.requestTimeoutMs { e.finish() }
        answering.removeAll { a in
            if a.connection.isClosing { return true }
            guard now &- a.since > Self.requestTimeoutMs else { return false }
            a.connection.close()
            return true
        }
    }

    fileprivate func ended(_ e: Exchange, answered: Bool) {
        loop.retire(e) // called from the exchange's own callbacks
        exchanges.removeAll { $0 === e }
        if answered { answering.append((e.connection, loop.now)) }
    }

    func close() {
        listener?.close()
        listener = nil
        for e in exchanges { e.finish() }
        for a in answering { a.connection.close() }
        answering = []
    }

    /// The answer to one request.
    fileprivate func respond(to head: HTTPRequestHead) -> [UInt8] {
        let isHead = head.method == "HEAD"
        guard head.method == "GET" || isHead else {
            return HTTPRequestHead.response(status: 405, reason: "Method Not Allowed", body: "only GET and HEAD\n", includeBody: !isHead)
        }
        switch head.path {
        case "/metrics":
            return HTTPRequestHead.response(status: 200, reason: "OK", contentType: "text/plain; version=0.0.4; charset=utf-8",
                                            body: server.metricsText(), includeBody: !isHead)
        case "/healthz", "/livez":
            // Answered by the event loop itself: if this comes back, the loop is turning.
            return HTTPRequestHead.response(status: 200, reason: "OK", body: "ok\n", includeBody: !isHead)
        case "/readyz":
            if let reason = server.notReadyReason {
                return HTTPRequestHead.response(status: 503, reason: "Service Unavailable", body: reason + "\n", includeBody: !isHead)
            }
            return HTTPRequestHead.response(status: 200, reason: "OK", body: "ready\n", includeBody: !isHead)
        default:
            return HTTPRequestHead.response(status: 404, reason: "Not Found", body: "try /metrics, /healthz or /readyz\n", includeBody: !isHead)
        }
    }

    /// One HTTP connection: reads the request head, writes the answer, closes.
    fileprivate final class Exchange: TCPConnectionDelegate {
        let connection: TCPConnection
        unowned let endpoint: MetricsEndpoint
        let startedAt: UInt64
        private var received: [UInt8] = []
        private var done = false

        init(connection: TCPConnection, endpoint: MetricsEndpoint, startedAt: UInt64) {
            self.connection = connection
            self.endpoint = endpoint
            self.startedAt = startedAt
            super.init()
            connection.delegate = self
            connection.startReading()
        }

        deinit { connection.delegate = nil }

        override func connection(_ c: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {
            guard !done else { return }
            received.append(contentsOf: bytes)
            do {
                guard let head = try HTTPRequestHead.parse(received) else { return }
                reply(endpoint.respond(to: head))
            } catch HTTPRequestHead.Problem.tooLarge {
                reply(HTTPRequestHead.response(status: 431, reason: "Request Header Fields Too Large", body: "request head too large\n"))
            } catch {
                reply(HTTPRequestHead.response(status: 400, reason: "Bad Request", body: "not an HTTP/1.x request\n"))
            }
        }

        private func reply(_ bytes: [UInt8]) {
            connection.write(bytes)
            connection.closeAfterWrites() // the connection outlives this object until its answer is out
            leave(answered: true)
        }

        /// Closes the connection now (a timeout, too many open, shutdown) and leaves the endpoint's list.
        func finish() {
            guard !done else { return }
            connection.close()
            leave()
        }

        private func leave(answered: Bool = false) {
            guard !done else { return }
            done = true
            endpoint.ended(self, answered: answered && !connection.isClosing)
        }

        override func connectionDidDrain(_ c: TCPConnection) {}
        override func connection(_ c: TCPConnection, didConnect error: Int32?) {}
        override func connection(_ c: TCPConnection, didFail error: Int32?) { finish() }
    }
}

// One TCP stream: libuv polls its socket; reads land in the loop's shared buffer, writes go straight to the kernel
// and only what the kernel refuses is copied into a queue of the connection's own.
import CLibUV
import Glibc

/// What a connection reports. Called on the loop thread, from libuv callbacks.
///
/// A class to subclass, not a protocol: the connection holds its delegate as an unretained class reference
/// and calls it without a retain/release pair. An unowned protocol existential is copied strong on every
/// call (callgrind: two retain/release pairs per query, a tenth of the proxy's retain traffic).
open class TCPConnectionDelegate {
    public init() {}
    /// Bytes read. Valid only during the call: the buffer is the loop's, shared by every connection.
    open func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer) {}
    /// The queued writes have all reached the kernel (backpressure may lift).
    open func connectionDidDrain(_ connection: TCPConnection) {}
    /// Outbound connect finished; `error` is a libuv error code or nil.
    open func connection(_ connection: TCPConnection, didConnect error: Int32?) {}
    /// The peer closed, or a read/write failed. The connection is closing; `error` is nil for a clean EOF.
    open func connection(_ connection: TCPConnection, didFail error: Int32?) {}
}

/// Transforms a connection's bytes both ways (TLS): what the socket delivers is decoded before the delegate
/// sees it, and what the owner writes is encoded before the socket gets it. A class to subclass, not a
/// protocol, so a connection holds it in one word (an existential would take two, and the connection's
/// allocation would grow a size class).
open class StreamFilter {
    public enum Outcome { case open, ended, failed }
    public init() {}
    /// Bytes from the socket: decoded bytes go to `deliver`, bytes the filter itself must send (handshake
    /// answers) to `send`. `.ended` is a clean end of the stream, `.failed` a broken one.
    open func received(_ bytes: UnsafeRawBufferPointer, deliver: (UnsafeRawBufferPointer) -> Void,
                       send: (UnsafeRawBufferPointer) -> Void) -> Outcome { deliver(bytes); return .open }
    /// Bytes the owner writes: their encoding goes to `send`. False fails the connection.
    open func sending(_ bytes: UnsafeRawBufferPointer, send: (UnsafeRawBufferPointer) -> Void) -> Bool { send(bytes); return true }
    /// The connection is closing after its writes: a last word for the peer (TLS close_notify) goes to `send`.
    open func finishing(send: (UnsafeRawBufferPointer) -> Void) {}
}

/// A non-blocking TCP socket watched by a libuv poll handle, with its queued writes and its one libuv-held reference.
///
/// Why a poll handle and not a libuv stream: the proxy reads every chunk into one shared buffer and writes
/// synchronously, so libuv's stream layer (allocation callbacks, write requests, its own queue) was only
/// overhead — about a fifth of the proxy's user-space instructions per query — and a `uv_tcp_t` is a
/// hundred bytes larger than a `uv_poll_t` on every connection.
///
/// Ownership: libuv holds +1 on this object from the moment its socket is attached until the close callback,
/// which also closes the socket; the handle's memory is freed in `deinit`, which therefore runs only after
/// libuv is done with it. Error codes are negative errno values (libuv's codes on Unix).
/// TCP keepalive and TCP_USER_TIMEOUT for a connection (0: the kernel's default for that value).
public struct TCPKeepalive: Sendable, Equatable {
    public var enabled: Bool
    public var idleSeconds: Int32
    public var intervalSeconds: Int32
    public var count: Int32
    public var userTimeoutMs: Int32

    public init(enabled: Bool = true, idleSeconds: Int32 = 0, intervalSeconds: Int32 = 0, count: Int32 = 0, userTimeoutMs: Int32 = 0) {
        self.enabled = enabled; self.idleSeconds = idleSeconds; self.intervalSeconds = intervalSeconds
        self.count = count; self.userTimeoutMs = userTimeoutMs
    }
}

public final class TCPConnection: HandleOwner {
    /// The poll handle. Its `loop` field is set at init, before libuv initializes the handle with the same
    /// value, so the connection reaches its EventLoop (and the shared read buffer) without a field of its own.
    let handle: UnsafeMutablePointer<uv_poll_t>
    /// Not retained and not weak (a weak load costs a side-table lookup per callback): every owner sets
    /// it to nil in its deinit, and the connection (kept alive by libuv until its close callback) checks it.
    public var delegate: TCPConnectionDelegate? {
        get { delegateRef?.object }
        set { delegateRef = newValue.map(Unretained.init) }
    }
    /// The delegate outlives every call (see above), so no retain/release pair is needed around it.
    private var delegateRef: Unretained<TCPConnectionDelegate>?
    /// Bytes the kernel did not take yet, from `pendingHead` on. Empty (no capacity) when caught up.
    private var pending: [UInt8] = []
    /// Set by the owner when the stream switches to TLS (after the SSLRequest exchange); every later read
    /// and write goes through it. Nil on a plain connection, which then pays one nil check per read and write.
    public var filter: StreamFilter?
    // Narrow fields last (declaration order is layout order): with them packed (the head as Int32, the
    // flags in one byte) and no field for the loop, a connection is a 80-byte allocation instead of 96,
    // and a session has two.
    private var head: Int32 = 0
    private var pendingHead: Int {
        get { Int(head) }
        set { head = Int32(newValue) }
    }
    private var fd: Int32 = -1
    /// A connect that failed at once: reported from the first poll, so callers see one path for every outcome.
    private var immediateConnectError: Int32 = 0
    /// The events libuv polls for now (changing them costs an epoll_ctl, so only real changes are made).
    private var polledEvents: UInt8 = 0
    private struct Flags: OptionSet {
        let rawValue: UInt8
        static let closing = Flags(rawValue: 1 << 0)
        static let reading = Flags(rawValue: 1 << 1)
        static let onDemand = Flags(rawValue: 1 << 2)
        static let attached = Flags(rawValue: 1 << 3)
        static let connecting = Flags(rawValue: 1 << 4)
        static let closeWhenFlushed = Flags(rawValue: 1 << 5)
        static let local = Flags(rawValue: 1 << 6)
    }
    private var flags: Flags = []
    @inline(__always) private func flag(_ f: Flags) -> Bool { flags.contains(f) }
    @inline(__always) private func set(_ f: Flags, _ on: Bool) { if on { flags.insert(f) } else { flags.remove(f) } }

    public private(set) var isClosing: Bool {
        get { flag(.closing) }
        set { set(.closing, newValue) }
    }
    public private(set) var isReading: Bool {
        get { flag(.reading) }
        set { set(.reading, newValue) }
    }
    /// Reading without being polled for it: the owner calls `readNow()` when it wants what has arrived.
    /// For a stream nobody waits on (an async follower's answers), this saves a wake-up of the loop per
    /// answer; the kernel keeps the bytes meanwhile.
    public var readsOnDemand: Bool {
        get { flag(.onDemand) }
        set {
            guard newValue != flag(.onDemand) else { return }
            set(.onDemand, newValue)
            updatePolling()
        }
    }
    /// The socket is attached to the poll handle (libuv holds +1 until the close callback).
    private var isAttached: Bool {
        get { flag(.attached) }
        set { set(.attached, newValue) }
    }
    private var isConnecting: Bool {
        get { flag(.connecting) }
        set { set(.connecting, newValue) }
    }
    private var closeWhenFlushed: Bool {
        get { flag(.closeWhenFlushed) }
        set { set(.closeWhenFlushed, newValue) }
    }

    public init(loop: EventLoop) {
        handle = .allocate(capacity: 1)
        handle.pointee.loop = loop.loop
    }

    /// A Unix-domain socket: a client on this host (no TCP options; PostgreSQL offers such clients no TLS).
    public var isLocal: Bool { flag(.local) }

    /// Sets keepalive probes and the user timeout on the socket (a TCP one that is open or connecting):
    /// a peer that vanished without a FIN or RST (a host that died, a dropped NAT entry) is then found.
    public func setKeepalive(_ k: TCPKeepalive) {
        guard isAttached, !isLocal, fd >= 0 else { return }
        Socket.setKeepalive(fd, k)
    }

    /// Wraps a socket accepted by a listener. Returns nil (and closes the socket) if libuv cannot poll it.
    init?(loop: EventLoop, acceptedSocket fd: Int32, local: Bool = false) {
        handle = .allocate(capacity: 1)
        handle.pointee.loop = loop.loop
        if local { flags.insert(.local) } else { Socket.setNoDelay(fd) }
        guard attach(fd) == 0 else {
            Glibc.close(fd)
            return nil
        }
    }

    deinit { handle.deallocate() }

    /// The loop this connection runs on.
    public var eventLoop: EventLoop {
        Unmanaged<EventLoop>.fromOpaque(handle.pointee.loop.unsafelyUnwrapped.pointee.data.unsafelyUnwrapped).takeUnretainedValue()
    }

    private func attach(_ socket: Int32) -> Int32 {
        let rc = uv_poll_init_socket(handle.pointee.loop, handle, socket)
        guard rc == 0 else { return rc }
        fd = socket
        isAttached = true
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        return 0
    }

    /// Starts an outbound connection to an IPv4/IPv6 literal address. Nil means the outcome will be
    /// reported to `connection(_:didConnect:)`.
    public func connect(host: String, port: Int) -> Int32? {
        guard let (storage, length) = Socket.address(host: host, port: port) else { return -EINVAL }
        return connect(storage, length)
    }

    /// Starts an outbound connection to a Unix-domain socket file, reported the same way.
    public func connect(unixPath: String) -> Int32? {
        guard let (storage, length) = Socket.address(unixPath: unixPath) else { return -ENAMETOOLONG }
        flags.insert(.local)
        return connect(storage, length)
    }

    private func connect(_ storage: sockaddr_storage, _ length: socklen_t) -> Int32? {
        guard !isAttached, !isClosing else { return -EINVAL }
        let socket = Socket.open(family: storage.ss_family)
        guard socket >= 0 else { return socket }
        if !isLocal { Socket.setNoDelay(socket) }
        immediateConnectError = Socket.connect(socket, to: storage, length: length)
        let rc = attach(socket)
        guard rc == 0 else {
            Glibc.close(socket)
            return rc
        }
        isConnecting = true
        updatePolling()
        return nil
    }

    public func startReading() {
        guard !isReading, !isClosing else { return }
        isReading = true
        updatePolling()
    }

    public func stopReading() {
        guard isReading, !isClosing else { return }
        isReading = false
        updatePolling()
    }

    /// Bytes accepted by `write` but not yet by the kernel.
    public var queuedBytes: Int { pending.count - pendingHead }

    /// Writes `bytes`: straight to the kernel when possible, else what is left is copied into the queue.
    /// Returns false if the connection is closing or the write failed (the failure is also reported).
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard !isClosing, isAttached else { return false }
        guard bytes.count > 0 else { return true }
        if let filter { return write(bytes, through: filter) }
        return writeToSocket(bytes)
    }

    /// Out of line, so the clear-text path pays only the nil check.
    @inline(never)
    private func write(_ bytes: UnsafeRawBufferPointer, through filter: StreamFilter) -> Bool {
        var ok = true
        guard filter.sending(bytes, send: { ok = ok && writeToSocket($0) }) else {
            fail(-EPROTO)
            return false
        }
        return ok
    }

    /// The socket's own bytes (after the filter, if any).
    @inline(__always)
    private func writeToSocket(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard !isClosing, bytes.count > 0 else { return !isClosing }
        var offset = 0
        if pending.isEmpty && !isConnecting {
            while true {
                // send/recv rather than write/read: socket calls without the file layer's hooks, and
                // MSG_NOSIGNAL keeps a reset peer an error code even where SIGPIPE was not ignored.
                let n = Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
                if n == bytes.count { return true }
                if n >= 0 { offset = n; break }
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN { break }
                fail(-e)
                return false
            }
        }
        if pendingHead > 0 && pendingHead >= queuedBytes {
            // Keep the queue at most twice what it holds: drop the part already written.
            pending.removeFirst(pendingHead)
            pendingHead = 0
        }
        pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset...]))
        updatePolling()
        return true
    }

    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { write($0) } }

    /// Closes the socket. Queued writes are dropped; use `closeAfterWrites` to let them go out first.
    public func close() {
        guard !isClosing else { return }
        isClosing = true
        isReading = false
        pending = []
        pendingHead = 0
        // The close callback closes the socket: libuv stops polling it first, here.
        if isAttached { uv_close(uvshim_poll_handle(handle), onClose) }
    }

    /// Lets queued writes reach the kernel, then closes (used after sending a final ErrorResponse).
    public func closeAfterWrites() {
        guard !isClosing else { return }
        if let filter, isAttached { filter.finishing(send: { _ = writeToSocket($0) }) }
        guard !isClosing else { return }
        stopReading()
        if pending.isEmpty { return isConnecting ? close() : shutdownAndClose() } // connecting: nothing to say yet
        closeWhenFlushed = true
    }

    func handleClosed() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        Unmanaged.passUnretained(self).release() // libuv's +1 from attach
    }

    /// Where this connection is connected to: the peer's IP address and port, or for a Unix-domain
    /// socket its path and port 0 (nil if the socket cannot say).
    public var peerAddress: (host: String, port: Int)? { Socket.name(fd, peer: true) }

    /// An idle connection's peer is still there and has sent nothing: no EOF, no reset, no bytes waiting
    /// (a peek, nothing is consumed). For a connection kept unread between users (a pooled backend).
    public var peerIsIdleAndOpen: Bool {
        guard isAttached, !isClosing, !isConnecting, fd >= 0, pending.isEmpty else { return false }
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
    }

    /// "host:port" of the peer, for logs.
    public var peerDescription: String {
        if isLocal { return "[local]" } // as PostgreSQL names a Unix-socket client
        guard let (host, port) = Socket.name(fd, peer: true) else { return "?" }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    // MARK: poll events

    private func updatePolling() {
        guard isAttached, !isClosing else { return }
        var events: Int32 = 0
        if isConnecting || !pending.isEmpty { events |= Int32(UV_WRITABLE.rawValue) }
        if isReading && !isConnecting && !readsOnDemand { events |= Int32(UV_READABLE.rawValue) }
        guard UInt8(events) != polledEvents else { return }
        polledEvents = UInt8(events)
        if events == 0 { uv_poll_stop(handle) } else { uv_poll_start(handle, events, onPoll) }
    }

    @inline(__always)
    func polled(status: Int32, events: Int32) {
        if status < 0 { polledEvents = 0 } // libuv stopped the handle (the socket reported an error)
        if isConnecting { return connectFinished(status: status) }
        if events & Int32(UV_READABLE.rawValue) != 0 && isReading {
            readAvailable()
            if isClosing { return }
        }
        if status < 0 {
            // A reset or another socket error: the socket says which.
            let e = Socket.pendingError(fd)
            return fail(e != 0 ? e : status)
        }
        if events & Int32(UV_WRITABLE.rawValue) != 0 { flush() }
    }

    private func connectFinished(status: Int32) {
        isConnecting = false
        var e = immediateConnectError
        if e == 0 { e = Socket.pendingError(fd) }
        if e == 0 && status < 0 { e = status }
        if e != 0 {
            if closeWhenFlushed { return close() } // its owner already let it go
            delegateRef?.call { $0.connection(self, didConnect: e) }
            return
        }
        updatePolling()
        delegateRef?.call { $0.connection(self, didConnect: nil) }
        if !pending.isEmpty && !isClosing { flush() }
    }

    @inline(__always)
    private func readAvailable() {
        let buffer = EventLoop.readBuffer(of: handle.pointee.loop)
        let n = Glibc.recv(fd, buffer.baseAddress, buffer.count, 0)
        if n > 0 {
            let bytes = UnsafeRawBufferPointer(start: buffer.baseAddress, count: n)
            if let filter { return received(bytes, through: filter) }
            delegateRef?.call { $0.connection(self, didRead: bytes) }
        } else if n == 0 {
            fail(nil)
        } else {
            let e = errno
            if e != EAGAIN && e != EINTR { fail(-e) }
        }
    }

    /// Reads what has arrived (a reading, on-demand connection): delivers it to the delegate, chunk by chunk,
    /// until the kernel has nothing more. Returns whether anything was delivered (or the stream ended).
    @discardableResult
    public func readNow() -> Bool {
        var delivered = false
        let buffer = EventLoop.readBuffer(of: handle.pointee.loop)
        while isReading, !isClosing, isAttached, !isConnecting {
            let n = Glibc.recv(fd, buffer.baseAddress, buffer.count, 0)
            if n > 0 {
                delivered = true
                let bytes = UnsafeRawBufferPointer(start: buffer.baseAddress, count: n)
                if let filter { received(bytes, through: filter) } else { delegateRef?.call { $0.connection(self, didRead: bytes) } }
                if n < buffer.count { break } // drained (a fuller buffer may have more behind it)
                continue
            }
            if n == 0 { fail(nil); return true }
            let e = errno
            if e == EINTR { continue }
            if e != EAGAIN { fail(-e); return true }
            break
        }
        return delivered
    }

    /// Bytes the delegate was given before it set `filter` that belong to the filter (a TLS ClientHello
    /// that opened the connection): they go through it now, as if just read.
    public func refeedThroughFilter(_ bytes: UnsafeRawBufferPointer) {
        if let filter, !isClosing { received(bytes, through: filter) }
    }

    /// Socket bytes through the filter: its output to the socket, what it decodes to the delegate.
    /// Out of line, so the clear-text path pays only the nil check.
    @inline(never)
    private func received(_ bytes: UnsafeRawBufferPointer, through filter: StreamFilter) {
        let outcome = filter.received(bytes, deliver: { decoded in
            if !isClosing { delegateRef?.call { $0.connection(self, didRead: decoded) } }
        }, send: { _ = writeToSocket($0) })
        switch outcome {
        case .open: break
        case .ended: fail(nil)
        case .failed: fail(-EPROTO)
        }
    }

    private func flush() {
        while !pending.isEmpty {
            let n = pending.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + pendingHead, $0.count - pendingHead, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN { return }
                return fail(-e)
            }
            pendingHead += n
            if pendingHead == pending.count {
                // Caught up: an idle connection keeps no buffer.
                pending = []
                pendingHead = 0
            }
        }
        if closeWhenFlushed { return shutdownAndClose() }
        updatePolling()
        delegateRef?.call { $0.connectionDidDrain(self) }
    }

    private func shutdownAndClose() {
        if fd >= 0 { shutdown(fd, Int32(SHUT_WR)) }
        close()
    }

    private func fail(_ error: Int32?) {
        guard !isClosing else { return }
        let d = delegate
        close()
        d?.connection(self, didFail: error)
    }
}

// The C callbacks: capture-free functions that recover the owner from `data`. They borrow the connection
// without a retain/release pair: libuv's +1 keeps it alive for the duration of every callback.

private func onPoll(_ handle: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    Unmanaged<TCPConnection>.fromOpaque(handle!.pointee.data!)._withUnsafeGuaranteedRef { $0.polled(status: status, events: events) }
}

private func onClose(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    Unmanaged<TCPConnection>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().handleClosed()
}

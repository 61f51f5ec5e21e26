// One TCP stream: reads into the loop's shared buffer, writes with uv_try_write first and owned copies after.
import CLibUV
import Glibc

/// What a connection reports. Called on the loop thread, from libuv callbacks.
public protocol TCPConnectionDelegate: AnyObject {
    /// Bytes read. Valid only during the call: the buffer is the loop's, shared by every connection.
    func connection(_ connection: TCPConnection, didRead bytes: UnsafeRawBufferPointer)
    /// The queued writes have all reached the kernel (backpressure may lift).
    func connectionDidDrain(_ connection: TCPConnection)
    /// Outbound connect finished; `error` is a libuv error code or nil.
    func connection(_ connection: TCPConnection, didConnect error: Int32?)
    /// The peer closed, or a read/write failed. The connection is closing; `error` is nil for a clean EOF.
    func connection(_ connection: TCPConnection, didFail error: Int32?)
}

/// A libuv TCP handle with its memory, its queued writes and its one libuv-held reference.
///
/// Ownership: libuv holds +1 on this object from `init` until the close callback; the handle's memory is freed
/// in `deinit`, which therefore runs only after libuv is done with it. Each queued write owns its bytes.
public final class TCPConnection: HandleOwner {
    let handle: UnsafeMutablePointer<uv_tcp_t>
    let loop: EventLoop
    /// Not retained and not weak (a weak load costs a side-table lookup per callback): every owner sets
    /// it to nil in its deinit, and the connection (kept alive by libuv until its close callback) checks it.
    public unowned(unsafe) var delegate: TCPConnectionDelegate?
    public private(set) var isClosing = false
    public private(set) var isReading = false
    private var connectRequest: UnsafeMutablePointer<uv_connect_t>?
    /// An opaque tag for the owner (e.g. which side of a session this is).
    public var tag: Int = 0

    public init(loop: EventLoop) {
        self.loop = loop
        handle = .allocate(capacity: 1)
        uv_tcp_init(loop.loop, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    deinit {
        connectRequest?.deallocate()
        handle.deallocate()
    }

    var stream: UnsafeMutablePointer<uv_stream_t> { uvshim_stream(handle) }

    /// Starts an outbound connection to an IPv4/IPv6 literal address.
    public func connect(host: String, port: Int) -> Int32? {
        var storage = sockaddr_storage()
        let rc: Int32 = withUnsafeMutableBytes(of: &storage) { raw in
            if host.contains(":") {
                return uv_ip6_addr(host, Int32(port), raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self))
            }
            return uv_ip4_addr(host, Int32(port), raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self))
        }
        if rc != 0 { return rc }
        let req = UnsafeMutablePointer<uv_connect_t>.allocate(capacity: 1)
        connectRequest = req
        req.pointee.data = Unmanaged.passUnretained(self).toOpaque() // the handle's +1 keeps self alive
        let r = withUnsafeBytes(of: &storage) { raw in
            uv_tcp_connect(req, handle, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), onConnect)
        }
        return r == 0 ? nil : r
    }

    func connected(_ status: Int32) {
        if status == 0 { uv_tcp_nodelay(handle, 1) }
        delegate?.connection(self, didConnect: status == 0 ? nil : status)
    }

    public func startReading() {
        guard !isReading, !isClosing else { return }
        isReading = true
        uv_read_start(stream, onAlloc, onRead)
    }

    public func stopReading() {
        guard isReading, !isClosing else { return }
        isReading = false
        uv_read_stop(stream)
    }

    /// Bytes handed to libuv but not yet to the kernel.
    public var queuedBytes: Int { uv_stream_get_write_queue_size(stream) }

    /// Writes `bytes`: straight to the kernel when possible, else an owned copy is queued.
    /// Returns false if the connection is closing or the write failed (the failure is also reported).
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard !isClosing else { return false }
        guard bytes.count > 0 else { return true }
        var offset = 0
        if queuedBytes == 0 {
            var buf = uv_buf_t(base: UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: CChar.self)), len: bytes.count)
            let n = Int(uv_try_write(stream, &buf, 1))
            if n == bytes.count { return true }
            if n < 0 && n != Int(uvshim_eagain()) { fail(Int32(n)); return false }
            offset = max(n, 0)
        }
        let request = WriteRequest(copying: UnsafeRawBufferPointer(rebasing: bytes[offset...]), connection: self)
        let rc = request.submit(stream)
        if rc != 0 { fail(rc); return false }
        return true
    }

    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { write($0) } }

    func writeFinished(_ status: Int32) {
        if status < 0 {
            if status != uvshim_ecanceled() { fail(status) }
            return
        }
        if queuedBytes == 0 { delegate?.connectionDidDrain(self) }
    }

    func read(_ nread: Int) {
        if nread > 0 {
            delegate?.connection(self, didRead: UnsafeRawBufferPointer(start: loop.readBuffer, count: nread))
        } else if nread < 0 {
            fail(nread == Int(uvshim_eof()) ? nil : Int32(nread))
        }
    }

    func fail(_ error: Int32?) {
        guard !isClosing else { return }
        let d = delegate
        close()
        d?.connection(self, didFail: error)
    }

    /// Closes the handle. Queued writes are cancelled; use `closeAfterWrites` to let them go out first.
    public func close() {
        guard !isClosing else { return }
        isClosing = true
        isReading = false
        uv_close(uvshim_tcp_handle(handle), onClose)
    }

    /// Lets queued writes reach the kernel, then closes (used after sending a final ErrorResponse).
    public func closeAfterWrites() {
        guard !isClosing else { return }
        stopReading()
        if queuedBytes == 0 { close(); return }
        let req = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        if uv_shutdown(req, stream, onShutdown) != 0 { req.deallocate(); close() }
    }

    func handleClosed() {
        Unmanaged.passUnretained(self).release() // libuv's +1 from init
    }

    /// Accepts a pending connection from `server` into this (fresh) handle.
    func accept(from server: UnsafeMutablePointer<uv_stream_t>) -> Bool {
        guard uv_accept(server, stream) == 0 else { return false }
        uv_tcp_nodelay(handle, 1)
        return true
    }

    /// The file descriptor, for diagnostics.
    public var peerDescription: String {
        var storage = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutableBytes(of: &storage) { uv_tcp_getpeername(handle, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &len) }
        guard rc == 0 else { return "?" }
        var name = [CChar](repeating: 0, count: 64)
        return withUnsafeBytes(of: &storage) { raw -> String in
            let family = raw.load(as: sockaddr.self).sa_family
            if family == sa_family_t(AF_INET) {
                var a = raw.load(as: sockaddr_in.self)
                uv_ip4_name(&a, &name, 64)
                return "\(cString(name)):\(UInt16(bigEndian: a.sin_port))"
            }
            var a = raw.load(as: sockaddr_in6.self)
            uv_ip6_name(&a, &name, 64)
            return "[\(cString(name))]:\(UInt16(bigEndian: a.sin6_port))"
        }
    }
}

/// One queued write and the bytes it owns until libuv's callback.
final class WriteRequest {
    let request: UnsafeMutablePointer<uv_write_t>
    let storage: UnsafeMutableRawBufferPointer
    let connection: TCPConnection

    init(copying bytes: UnsafeRawBufferPointer, connection: TCPConnection) {
        request = .allocate(capacity: 1)
        storage = .allocate(byteCount: bytes.count, alignment: 1)
        storage.copyMemory(from: bytes)
        self.connection = connection
    }

    deinit {
        storage.deallocate()
        request.deallocate()
    }

    func submit(_ stream: UnsafeMutablePointer<uv_stream_t>) -> Int32 {
        request.pointee.data = Unmanaged.passRetained(self).toOpaque() // +1 until the callback
        var buf = uv_buf_t(base: storage.baseAddress!.assumingMemoryBound(to: CChar.self), len: storage.count)
        let rc = uv_write(request, stream, &buf, 1, onWrite)
        if rc != 0 { Unmanaged.passUnretained(self).release() }
        return rc
    }
}

// C callbacks: capture-free functions that recover the owner from `data` and call one method.

private func connection(_ data: UnsafeMutableRawPointer?) -> TCPConnection {
    Unmanaged<TCPConnection>.fromOpaque(data!).takeUnretainedValue()
}

// The hot callbacks borrow the connection without a retain/release pair: libuv's +1 keeps it alive for
// the duration of every callback.
private func onAlloc(_ handle: UnsafeMutablePointer<uv_handle_t>?, _ suggested: Int, _ buf: UnsafeMutablePointer<uv_buf_t>?) {
    Unmanaged<TCPConnection>.fromOpaque(handle!.pointee.data!)._withUnsafeGuaranteedRef { c in
        buf!.pointee = uv_buf_t(base: c.loop.readBuffer.assumingMemoryBound(to: CChar.self), len: c.loop.readBufferSize)
    }
}

private func onRead(_ stream: UnsafeMutablePointer<uv_stream_t>?, _ nread: Int, _ buf: UnsafePointer<uv_buf_t>?) {
    Unmanaged<TCPConnection>.fromOpaque(stream!.pointee.data!)._withUnsafeGuaranteedRef { $0.read(nread) }
}

private func onWrite(_ req: UnsafeMutablePointer<uv_write_t>?, _ status: Int32) {
    let w = Unmanaged<WriteRequest>.fromOpaque(req!.pointee.data).takeRetainedValue()
    w.connection.writeFinished(status)
}

private func onConnect(_ req: UnsafeMutablePointer<uv_connect_t>?, _ status: Int32) {
    connection(req!.pointee.data).connected(status)
}

private func onShutdown(_ req: UnsafeMutablePointer<uv_shutdown_t>?, _ status: Int32) {
    let c = connection(req!.pointee.data)
    req!.deallocate()
    c.close()
}

private func onClose(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    connection(handle!.pointee.data).handleClosed()
}

private func cString(_ chars: [CChar]) -> String {
    String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

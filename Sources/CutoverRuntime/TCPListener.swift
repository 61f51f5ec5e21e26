// A listening TCP socket that hands each accepted client to a callback as a TCPConnection.
import CLibUV
import Glibc

public final class TCPListener: HandleOwner {
    let handle: UnsafeMutablePointer<uv_tcp_t>
    let loop: EventLoop
    let onAccept: (TCPConnection) -> Void
    public private(set) var port: Int = 0
    private var closed = false

    public struct BindError: Error, CustomStringConvertible {
        public let code: Int32
        public let address: String
        public var description: String { "cannot listen on \(address): \(uvErrorName(code))" }
    }

    /// Binds and listens; port 0 picks a free port (read it from `port`).
    public init(loop: EventLoop, host: String, port: Int, backlog: Int32 = 1024, onAccept: @escaping (TCPConnection) -> Void) throws {
        self.loop = loop
        self.onAccept = onAccept
        handle = .allocate(capacity: 1)
        uv_tcp_init(loop.loop, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        var storage = sockaddr_storage()
        let address = "\(host):\(port)"
        var rc: Int32 = withUnsafeMutableBytes(of: &storage) { raw in
            host.contains(":") ? uv_ip6_addr(host, Int32(port), raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self))
                : uv_ip4_addr(host, Int32(port), raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self))
        }
        if rc == 0 { rc = withUnsafeBytes(of: &storage) { uv_tcp_bind(handle, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 0) } }
        if rc == 0 { rc = uv_listen(uvshim_stream(handle), backlog, onConnection) }
        if rc != 0 { close(); throw BindError(code: rc, address: address) }
        var bound = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutableBytes(of: &bound) { uv_tcp_getsockname(handle, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &len) }
        self.port = withUnsafeBytes(of: &bound) { raw in
            raw.load(as: sockaddr.self).sa_family == sa_family_t(AF_INET6)
                ? Int(UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port))
                : Int(UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port))
        }
    }

    deinit { handle.deallocate() }

    func accepted(_ status: Int32) {
        guard status == 0, !closed else { return }
        let c = TCPConnection(loop: loop)
        if c.accept(from: uvshim_stream(handle)) { onAccept(c) } else { c.close() }
    }

    /// Stops accepting. Connections already accepted are unaffected.
    public func close() {
        guard !closed else { return }
        closed = true
        uv_close(uvshim_tcp_handle(handle), onListenerClose)
    }

    func handleClosed() { Unmanaged.passUnretained(self).release() }
}

private func onConnection(_ server: UnsafeMutablePointer<uv_stream_t>?, _ status: Int32) {
    Unmanaged<TCPListener>.fromOpaque(server!.pointee.data!).takeUnretainedValue().accepted(status)
}

private func onListenerClose(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    Unmanaged<TCPListener>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().handleClosed()
}

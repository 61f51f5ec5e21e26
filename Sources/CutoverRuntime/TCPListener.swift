// A listening socket (TCP, or Unix-domain) that hands each accepted client to a callback as a TCPConnection.
import CLibUV
import Glibc

public final class TCPListener: HandleOwner {
    let handle: UnsafeMutablePointer<uv_poll_t>
    let loop: EventLoop
    let onAccept: (TCPConnection) -> Void
    let fd: Int32
    /// The TCP port (0 for a Unix-domain socket).
    public let port: Int
    /// The socket file of a Unix-domain listener, removed when it closes.
    public let unixPath: String?
    private var closed = false
    /// A descriptor held back for the moment the process runs out of them: closing it lets one pending
    /// client be accepted and closed at once, instead of the listener spinning on a connection it cannot take.
    private var reserveFD: Int32

    public struct BindError: Error, CustomStringConvertible {
        public let code: Int32
        public let address: String
        public var description: String { "cannot listen on \(address): \(uvErrorName(code))" }
    }

    /// Binds and listens; port 0 picks a free port (read it from `port`).
    public convenience init(loop: EventLoop, host: String, port: Int, backlog: Int32 = 1024, onAccept: @escaping (TCPConnection) -> Void) throws {
        let socket = Socket.listen(host: host, port: port, backlog: backlog)
        guard socket >= 0 else { throw BindError(code: socket, address: "\(host):\(port)") }
        try self.init(loop: loop, socket: socket, port: Socket.name(socket, peer: false)?.port ?? port, unixPath: nil,
                      address: "\(host):\(port)", onAccept: onAccept)
    }

    /// A Unix-domain socket at `path`; its clients' connections are `isLocal`.
    public convenience init(loop: EventLoop, unixPath path: String, backlog: Int32 = 1024, onAccept: @escaping (TCPConnection) -> Void) throws {
        let socket = Socket.listen(unixPath: path, backlog: backlog)
        guard socket >= 0 else { throw BindError(code: socket, address: path) }
        try self.init(loop: loop, socket: socket, port: 0, unixPath: path, address: path, onAccept: onAccept)
    }

    private init(loop: EventLoop, socket: Int32, port: Int, unixPath: String?, address: String, onAccept: @escaping (TCPConnection) -> Void) throws {
        handle = .allocate(capacity: 1)
        let rc = uv_poll_init_socket(loop.loop, handle, socket)
        guard rc == 0 else {
            Glibc.close(socket)
            if let unixPath { unlink(unixPath) }
            handle.deallocate()
            throw BindError(code: rc, address: address)
        }
        self.loop = loop
        self.onAccept = onAccept
        fd = socket
        self.port = port
        self.unixPath = unixPath
        reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        uv_poll_start(handle, Int32(UV_READABLE.rawValue), onAcceptable)
    }

    deinit { handle.deallocate() }

    func acceptable() {
        // Bounded per wake-up, so a connection storm cannot starve the sessions already running.
        for _ in 0..<64 where !closed {
            let socket = Socket.accept(fd)
            if socket >= 0 {
                if let c = TCPConnection(loop: loop, acceptedSocket: socket, local: unixPath != nil) { onAccept(c) }
                continue
            }
            if (socket == -EMFILE || socket == -ENFILE) && reserveFD >= 0 {
                Glibc.close(reserveFD)
                let s = Socket.accept(fd)
                if s >= 0 { Glibc.close(s) }
                reserveFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
            }
            return
        }
    }

    /// Stops accepting. Connections already accepted are unaffected.
    public func close() {
        guard !closed else { return }
        closed = true
        // The file goes now, not in the close callback: a start that fails right after (its TCP port taken)
        // exits without running the loop again.
        removeSocketFile()
        uv_close(uvshim_poll_handle(handle), onListenerClose)
    }

    private var socketFileRemoved = false
    /// Once: a second unlink could remove a file another proxy has created since.
    private func removeSocketFile() {
        guard let unixPath, !socketFileRemoved else { return }
        socketFileRemoved = true
        unlink(unixPath)
    }

    func handleClosed() {
        Glibc.close(fd)
        removeSocketFile()
        if reserveFD >= 0 { Glibc.close(reserveFD) }
        reserveFD = -1
        Unmanaged.passUnretained(self).release()
    }
}

private func onAcceptable(_ handle: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    Unmanaged<TCPListener>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().acceptable()
}

private func onListenerClose(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    Unmanaged<TCPListener>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().handleClosed()
}

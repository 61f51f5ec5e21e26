// Thin, errno-to-error-code wrappers over the socket calls the runtime makes itself (libuv only polls).
import CLibUV
import Glibc

/// Socket system calls. Errors are returned as negative errno values, which on Unix are libuv's error
/// codes too, so `uvErrorName` names them.
enum Socket {
    /// A socket address for an IPv4 or IPv6 literal.
    static func address(host: String, port: Int) -> (storage: sockaddr_storage, length: socklen_t)? {
        var storage = sockaddr_storage()
        let isV6 = host.contains(":")
        let rc: Int32 = withUnsafeMutableBytes(of: &storage) { raw in
            isV6 ? uv_ip6_addr(host, Int32(port), raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self))
                : uv_ip4_addr(host, Int32(port), raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self))
        }
        guard rc == 0 else { return nil }
        return (storage, socklen_t(isV6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size))
    }

    /// A Unix-domain socket address; nil if the path does not fit `sun_path` (107 bytes on Linux).
    static func address(unixPath path: String) -> (storage: sockaddr_storage, length: socklen_t)? {
        var storage = sockaddr_storage()
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else { return nil }
        withUnsafeMutableBytes(of: &storage) { raw in
            raw.storeBytes(of: sa_family_t(AF_UNIX), toByteOffset: 0, as: sa_family_t.self)
            let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
            raw.baseAddress!.advanced(by: offset).copyMemory(from: bytes, byteCount: bytes.count)
        }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        return (storage, socklen_t(offset + bytes.count + 1))
    }

    /// A non-blocking, close-on-exec stream socket of the address's family.
    static func open(family: sa_family_t) -> Int32 {
        let fd = socket(Int32(family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        return fd >= 0 ? fd : -errno
    }

    /// Small request/response messages must not wait for Nagle.
    static func setNoDelay(_ fd: Int32) {
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Keepalive probes and the user timeout (values of 0 keep the kernel's defaults).
    static func setKeepalive(_ fd: Int32, _ k: TCPKeepalive) {
        func set(_ level: Int32, _ option: Int32, _ value: Int32) {
            var v = value
            setsockopt(fd, level, option, &v, socklen_t(MemoryLayout<Int32>.size))
        }
        let tcp = Int32(IPPROTO_TCP)
        set(SOL_SOCKET, SO_KEEPALIVE, k.enabled ? 1 : 0)
        if k.enabled {
            if k.idleSeconds > 0 { set(tcp, TCP_KEEPIDLE, k.idleSeconds) }
            if k.intervalSeconds > 0 { set(tcp, TCP_KEEPINTVL, k.intervalSeconds) }
            if k.count > 0 { set(tcp, TCP_KEEPCNT, k.count) }
        }
        if k.userTimeoutMs > 0 { set(tcp, Int32(TCP_USER_TIMEOUT), k.userTimeoutMs) }
    }

    /// The pending error of a socket (a finished connect, a reset): 0 or a negative errno.
    static func pendingError(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 else { return -errno }
        return -err
    }

    /// Starts a non-blocking connect: 0 when connected or in progress, else a negative errno.
    static func connect(_ fd: Int32, to address: sockaddr_storage, length: socklen_t) -> Int32 {
        var address = address
        let rc = withUnsafeBytes(of: &address) { Glibc.connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
        if rc == 0 || errno == EINPROGRESS { return 0 }
        return -errno
    }

    /// Binds and listens; returns the fd or a negative errno.
    static func listen(host: String, port: Int, backlog: Int32) -> Int32 {
        guard let (storage, length) = address(host: host, port: port) else { return -EINVAL }
        return listen(storage, length, backlog: backlog)
    }

    /// Binds a Unix-domain socket at `path` (mode 0777, as PostgreSQL's default) and listens. A socket file
    /// left by a process that is gone is replaced; one a live process accepts on is not (-EADDRINUSE).
    static func listen(unixPath path: String, backlog: Int32) -> Int32 {
        guard let (storage, length) = address(unixPath: path) else { return -ENAMETOOLONG }
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else { return -EEXIST }
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = storage
            let alive = probe >= 0 && withUnsafeBytes(of: &address) {
                Glibc.connect(probe, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
            } == 0
            if probe >= 0 { Glibc.close(probe) }
            if alive { return -EADDRINUSE }
            unlink(path)
        }
        let fd = listen(storage, length, backlog: backlog)
        if fd >= 0 { chmod(path, 0o777) }
        return fd
    }

    private static func listen(_ storage: sockaddr_storage, _ length: socklen_t, backlog: Int32) -> Int32 {
        let fd = open(family: storage.ss_family)
        guard fd >= 0 else { return fd }
        if storage.ss_family != sa_family_t(AF_UNIX) {
            var on: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = storage
        var rc = withUnsafeBytes(of: &address) { bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
        if rc == 0 { rc = Glibc.listen(fd, backlog) }
        if rc != 0 {
            let e = -errno
            Glibc.close(fd)
            return e
        }
        return fd
    }

    /// Accepts one pending connection as a non-blocking socket: the fd, or a negative errno (-EAGAIN: none left).
    static func accept(_ listener: Int32) -> Int32 {
        while true {
            let fd = uvshim_accept_nonblocking(listener)
            if fd >= 0 { return fd }
            if errno != EINTR { return -errno }
        }
    }

    /// The address and port of either end of a socket; for a Unix-domain socket, its path (empty for an
    /// unnamed client end) and port 0.
    static func name(_ fd: Int32, peer: Bool) -> (host: String, port: Int)? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutableBytes(of: &storage) { raw -> Int32 in
            let p = raw.baseAddress!.assumingMemoryBound(to: sockaddr.self)
            return peer ? getpeername(fd, p, &len) : getsockname(fd, p, &len)
        }
        guard rc == 0 else { return nil }
        var name = [CChar](repeating: 0, count: 64)
        return withUnsafeBytes(of: &storage) { raw in
            if raw.load(as: sockaddr.self).sa_family == sa_family_t(AF_UNIX) {
                let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
                let path = raw[offset..<max(offset, min(Int(len), raw.count))].prefix { $0 != 0 }
                return (String(decoding: path, as: UTF8.self), 0)
            }
            if raw.load(as: sockaddr.self).sa_family == sa_family_t(AF_INET6) {
                var a = raw.load(as: sockaddr_in6.self)
                uv_ip6_name(&a, &name, 64)
                return (cString(name), Int(UInt16(bigEndian: a.sin6_port)))
            }
            var a = raw.load(as: sockaddr_in.self)
            uv_ip4_name(&a, &name, 64)
            return (cString(name), Int(UInt16(bigEndian: a.sin_port)))
        }
    }

    private static func cString(_ chars: [CChar]) -> String {
        String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

// Test support: a raw TCP client for sending malformed protocol bytes and reading the proxy's answer.
import Foundation
import Glibc
import CutoverCore

/// A blocking socket with a receive timeout.
final class RawClient {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { close(fd); throw PQError(message: "connect failed: \(errno)") }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Reads until EOF (or timeout); returns the bytes and whether the peer closed.
    func readUntilClosed() -> (bytes: [UInt8], closed: Bool) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n == 0 { return (out, true) }
            if n < 0 { return (out, false) }
            out.append(contentsOf: buf[0..<n])
        }
    }

    /// The whole answer (headers and body) of one HTTP GET to 127.0.0.1:`port` (empty if it cannot connect).
    static func httpGet(port: Int, path: String) -> String {
        guard let c = try? RawClient(port: port) else { return "" }
        c.send(Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
        return String(decoding: c.readUntilClosed().bytes, as: UTF8.self)
    }

    /// A protocol 3.0 StartupMessage with `parameters`.
    static func startup(_ parameters: [(String, String)]) -> [UInt8] {
        var body: [UInt8] = [0, 3, 0, 0]
        for (k, v) in parameters { body += Array(k.utf8) + [0] + Array(v.utf8) + [0] }
        body.append(0)
        return withUnsafeBytes(of: UInt32(body.count + 4).bigEndian, Array.init) + body
    }

    /// A simple-protocol Query message.
    static func query(_ sql: String) -> [UInt8] { message("Q", Array(sql.utf8) + [0]) }

    /// A typed frontend message: its id, length and body.
    static func message(_ id: Character, _ body: [UInt8]) -> [UInt8] {
        [id.asciiValue!] + withUnsafeBytes(of: UInt32(body.count + 4).bigEndian, Array.init) + body
    }

    /// Parse, Bind and Execute of `sql` (unnamed statement and portal, no parameters), without the Sync.
    static func extendedWithoutSync(_ sql: String) -> [UInt8] {
        message("P", [0] + Array(sql.utf8) + [0, 0, 0]) + message("B", [0, 0, 0, 0, 0, 0, 0, 0]) + message("E", [0, 0, 0, 0, 0])
    }

    /// Reads whole messages until a ReadyForQuery (true) or EOF/timeout (false); returns what was read.
    func readUntilReady() -> (bytes: [UInt8], ready: Bool) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            var i = 0
            while i + 5 <= out.count {
                let len = Int(UInt32(out[i + 1]) << 24 | UInt32(out[i + 2]) << 16 | UInt32(out[i + 3]) << 8 | UInt32(out[i + 4]))
                if i + 1 + len > out.count { break }
                if out[i] == UInt8(ascii: "Z") { return (out, true) }
                i += 1 + len
            }
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { return (out, false) }
            out.append(contentsOf: buf[0..<n])
        }
    }

    /// Logs in with SCRAM-SHA-256 over this raw socket, up to the first ReadyForQuery (so a test can then
    /// pipeline messages libpq would not). Throws if the proxy does not let it in.
    func logIn(user: String, database: String, password: String) throws {
        send(Self.startup([("user", user), ("database", database)]))
        var scram = SCRAMClient(password: password)
        var pending: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            while pending.count >= 5 {
                let len = Int(UInt32(pending[1]) << 24 | UInt32(pending[2]) << 16 | UInt32(pending[3]) << 8 | UInt32(pending[4]))
                guard pending.count >= 1 + len else { break }
                let id = pending[0], body = Array(pending[5..<(1 + len)])
                pending.removeFirst(1 + len)
                switch (id, body.count >= 4 ? Int(body[3]) : -1) {
                case (UInt8(ascii: "R"), 10): // AuthenticationSASL
                    let first = scram.clientFirst()
                    send(Self.message("p", Array(scram.mechanism.utf8) + [0] + withUnsafeBytes(of: UInt32(first.count).bigEndian, Array.init) + first))
                case (UInt8(ascii: "R"), 11): // AuthenticationSASLContinue
                    let final = try scram.clientFinal(serverFirst: Array(body[4...])) { salt, iterations in
                        Crypto.pbkdf2SHA256(password: Array(password.utf8), salt: salt, iterations: iterations)
                    }
                    send(Self.message("p", final))
                case (UInt8(ascii: "E"), _):
                    throw PQError(message: "login refused", sqlState: Self.errorCode(in: [id] + withUnsafeBytes(of: UInt32(len).bigEndian, Array.init) + body))
                case (UInt8(ascii: "Z"), _):
                    return
                default:
                    break
                }
            }
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { throw PQError(message: "the proxy closed or did not answer during login") }
            pending.append(contentsOf: buf[0..<n])
        }
    }

    /// The command tags (CommandComplete) and error SQLSTATEs in `bytes`, in order: `E:55006` for an error.
    static func answers(in bytes: [UInt8]) -> [String] {
        var out: [String] = []
        var i = 0
        while i + 5 <= bytes.count {
            let len = Int(UInt32(bytes[i + 1]) << 24 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 8 | UInt32(bytes[i + 4]))
            guard i + 1 + len <= bytes.count else { break }
            if bytes[i] == UInt8(ascii: "C") { out.append(String(decoding: bytes[(i + 5)..<(i + len)], as: UTF8.self)) }
            if bytes[i] == UInt8(ascii: "E") { out.append("E:" + (errorCode(in: Array(bytes[i..<(i + 1 + len)])) ?? "?")) }
            i += 1 + len
        }
        return out
    }

    /// The SQLSTATE of the first ErrorResponse in `bytes`, if any.
    static func errorCode(in bytes: [UInt8]) -> String? {
        var i = 0
        while i + 5 <= bytes.count {
            let id = bytes[i]
            let len = Int(UInt32(bytes[i + 1]) << 24 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 8 | UInt32(bytes[i + 4]))
            if id == UInt8(ascii: "E") {
                var j = i + 5
                while j < min(bytes.count, i + 1 + len) && bytes[j] != 0 {
                    let field = bytes[j]
                    let end = bytes[(j + 1)...].firstIndex(of: 0) ?? bytes.count
                    if field == UInt8(ascii: "C") { return String(decoding: bytes[(j + 1)..<end], as: UTF8.self) }
                    j = end + 1
                }
                return nil
            }
            if id == UInt8(ascii: "N") && len == 0 { i += 1; continue } // single-byte SSL refusal
            i += 1 + len
        }
        return nil
    }
}

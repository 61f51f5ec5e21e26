// Integration: Unix-domain sockets on both sides. Clients reach the proxy at `<unix_socket_dir>/.s.PGSQL.<port>`
// (what `psql -h DIR -p PORT` looks for), the proxy reaches a backend whose `host` is its socket directory,
// cancels go the same way, a socket file left by a killed proxy is replaced, and a stopped proxy removes its own.
import Foundation
import Testing

@Suite(.serialized) struct UnixSocketTests {
    let f: ProxyFixture
    init() throws { f = try ProxyFixture.shared() }

    @Test func clientsAndBackendsOverUnixSocketsWithCancelsAndTheSocketFileLookedAfter() throws {
        let directory = try #require(mkdtemp(strdup("/tmp/cutover-sock-XXXXXX")).map { String(cString: $0) })
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (p, port, path) = try f.ownProxy("unix-socket", server: "unix_socket_dir = \"\(directory)\"",
                                             legacyHost: f.legacy.socketDirectory)
        let socketFile = "\(directory)/.s.PGSQL.\(port)"
        #expect(FileManager.default.fileExists(atPath: socketFile), "the proxy listens at \(socketFile)")
        let mode = (try? FileManager.default.attributesOfItem(atPath: socketFile))?[.posixPermissions] as? Int
        #expect(mode == 0o777, "any local user may connect, as with PostgreSQL's default socket permissions")

        let local = try PQConnection("host=\(directory) port=\(port) dbname=onboarding user=onboarding_user password=\(FixtureSecrets.clientPassword)")
        #expect(try local.scalar("SELECT count(*) > 0 FROM candidates") == "t", "a client through the proxy's socket is served")
        #expect(try local.scalar("SELECT inet_client_addr() IS NULL") == "t", "the backend sees a Unix-socket connection from the proxy")
        let overTCP = try PQConnection(f.conninfo(port))
        #expect(try overTCP.scalar("SELECT 1") == "1", "the TCP listener serves alongside")

        // A cancel reaches the backend through its socket too.
        let (state, elapsed) = local.cancelAfter(0.3, running: "SELECT pg_sleep(20)")
        #expect(state == "57014" && elapsed < 5, "cancelled over the backend's socket: \(String(describing: state)) after \(elapsed) s")
        #expect(try local.scalar("SELECT 2") == "2", "the session carries on after the cancel")

        // A proxy killed outright leaves its socket file; the next one on the same path replaces it.
        kill(p.processIdentifier, SIGKILL)
        _ = stopBackgroundProcess(p, timeout: 5)
        #expect(FileManager.default.fileExists(atPath: socketFile), "a killed proxy cannot remove its socket file")
        let again = try ProxyFixture.startProxy(configPath: path, logPath: "\(f.directory)/unix-socket-2.log", port: port)
        let reconnected = try PQConnection("host=\(directory) port=\(port) dbname=onboarding user=onboarding_user password=\(FixtureSecrets.clientPassword)")
        #expect(try reconnected.scalar("SELECT 3") == "3", "the stale socket file was replaced")
        _ = stopBackgroundProcess(again, timeout: 10)
        #expect(!FileManager.default.fileExists(atPath: socketFile), "a proxy that stops removes its socket file")
    }

    @Test func aSocketDirectoryThatDoesNotExistStopsTheStartWithTheReason() throws {
        let port = PostgresCluster.freePort()
        let path = "\(f.directory)/unix-missing.toml"
        try f.ownConfig(port: port, server: "unix_socket_dir = \"/nonexistent-cutover-dir\"").write(toFile: path, atomically: true, encoding: .utf8)
        let result = try f.cli(["serve", "--config", path])
        #expect(!result.succeeded)
        #expect((result.stdout + result.stderr).contains("cannot listen on /nonexistent-cutover-dir/.s.PGSQL.\(port)"),
                "the error names the socket path: \(result.stderr)")
    }

    @Test func aStartThatCannotTakeItsTCPPortLeavesNoSocketFile() throws {
        // The socket file is created first (so it is ready when the TCP port answers); a start that then
        // fails on the TCP port must remove it before exiting.
        let directory = try #require(mkdtemp(strdup("/tmp/cutover-sock-XXXXXX")).map { String(cString: $0) })
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = PostgresCluster.freePort()
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(bound == 0 && listen(holder, 1) == 0, "the port is taken")
        let path = "\(f.directory)/unix-port-taken.toml"
        try f.ownConfig(port: port, server: "unix_socket_dir = \"\(directory)\"").write(toFile: path, atomically: true, encoding: .utf8)
        let result = try f.cli(["serve", "--config", path])
        #expect(!result.succeeded)
        #expect((result.stdout + result.stderr).contains("cannot listen on"), "the error says why: \(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/.s.PGSQL.\(port)"), "no socket file is left behind")
    }
}

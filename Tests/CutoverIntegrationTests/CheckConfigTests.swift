// Integration: `cutover check-config` and `serve` on config files as operators write them — run from the file's
// own directory with relative paths, a state file whose directory cannot take a file, a route onto itself.
import Foundation
import Testing

@Suite(.serialized) struct CheckConfigTests {
    /// A fresh directory holding `cutover.toml` (with `server` lines in [server]) and a password file `secret`.
    func directoryWithConfig(server: String, routeNew: String = "new") throws -> String {
        let directory = NSTemporaryDirectory() + "cutover-check-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "pw\n".write(toFile: "\(directory)/secret", atomically: true, encoding: .utf8)
        try """
            users = [{ name = "svc", password_file = "secret" }]
            [server]
            listen = "127.0.0.1:\(PostgresCluster.freePort())"
            \(server)
            [backends]
            legacy = { user = "x" }
            new = { user = "x", port = 5499 }
            [routes.r]
            legacy = "legacy"
            new = "\(routeNew)"
            """.write(toFile: "\(directory)/cutover.toml", atomically: true, encoding: .utf8)
        return directory
    }

    func cutover(_ arguments: [String], in directory: String) throws -> ProcessResult {
        try runProcess(ProxyFixture.cutoverBinary, arguments, timeout: 20, currentDirectory: directory)
    }

    @Test func relativePathsResolveAgainstTheConfigFilesDirectoryWhenRunFromThere() throws {
        let directory = try directoryWithConfig(server: "state_file = \"cutover.state\"")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let check = try cutover(["check-config", "--config", "cutover.toml"], in: directory)
        #expect(check.status == 0 && check.stdout.contains("cutover.toml: OK"), "the password file is read beside the config: \(check.stdout)")
    }

    @Test func aStateFileDirectoryThatCannotTakeAFileStopsCheckAndServeWithTheOSReason() throws {
        let directory = try directoryWithConfig(server: "state_file = \"gone/cutover.state\"")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let expected = "server.state_file: cannot create a file in \(directory)/gone, the directory of \(directory)/gone/cutover.state: No such file or directory"
        let check = try cutover(["check-config", "--config", "cutover.toml"], in: directory)
        #expect(check.status == 1 && check.stdout.contains(expected), "\(check.stdout)")
        let serve = try cutover(["serve", "--config", "\(directory)/cutover.toml"], in: "/")
        #expect(serve.status == 1 && serve.stderr.contains(expected), "\(serve.stderr)")
        #expect(!(serve.stdout + serve.stderr).contains("Domain"), "no Foundation error domain")
    }

    @Test func checkConfigRefusesARouteWhoseLegacyAndNewAreOneBackend() throws {
        let directory = try directoryWithConfig(server: "", routeNew: "legacy")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let check = try cutover(["check-config", "--config", "cutover.toml"], in: directory)
        #expect(check.status == 1 && check.stdout.contains("routes.r.new: legacy and new are the same database and schema public (backend legacy)"), "\(check.stdout)")
    }
}

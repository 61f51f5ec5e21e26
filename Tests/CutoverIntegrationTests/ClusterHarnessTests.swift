// Proves the test harness itself works: a throwaway PostgreSQL cluster with scram-sha-256 auth,
// psql against it, stop/restart, and the process runner.
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@Suite("Cluster harness", .serialized, .enabled(if: PostgresCluster.isAvailable, "PostgreSQL binaries not found"))
struct ClusterHarnessTests {
    @Test("role with a password can log in to its database; a wrong password cannot; stop ends the postmaster")
    func roleDatabaseAndStop() throws {
        let cluster = try PostgresCluster.start(name: "harness")
        defer { cluster.destroy() }

        #expect(cluster.host == "127.0.0.1")
        #expect(cluster.port > 0 && cluster.port < 65536)
        #expect(FileManager.default.fileExists(atPath: cluster.dataDirectory + "/PG_VERSION"))
        #expect(try cluster.psql("show password_encryption") == "scram-sha-256")
        #expect(try cluster.psql("show max_connections") == "300")

        try cluster.createRole(name: "harness_user", password: "harness pw 'quoted'", superuser: false)
        try cluster.createDatabase(name: "harness_db", owner: "harness_user")

        let one = try cluster.psql(
            "select 1", database: "harness_db", user: "harness_user", password: "harness pw 'quoted'")
        #expect(one == "1")
        let owner = try cluster.psql(
            "select pg_get_userbyid(datdba) from pg_database where datname = 'harness_db'")
        #expect(owner == "harness_user")

        let error = #expect(throws: PostgresClusterError.self) {
            try cluster.psql("select 1", database: "harness_db", user: "harness_user", password: "wrong")
        }
        #expect(error?.description.contains("password authentication failed") == true)

        let pid = try #require(cluster.pid)
        #expect(PostgresCluster.isProcessAlive(pid))
        cluster.stop()
        #expect(!cluster.isRunning)
        #expect(!PostgresCluster.isProcessAlive(pid))
        #expect(cluster.pid == nil)
        #expect(throws: PostgresClusterError.self) { try cluster.psql("select 1") }
    }

    @Test("restart brings the same cluster back on the same port with its data")
    func restartKeepsData() throws {
        let cluster = try PostgresCluster.start(name: "restart", superuserPassword: "other_pw")
        defer { cluster.destroy() }
        try cluster.psql("create table kept(x int); insert into kept values (42)")
        let firstPid = try #require(cluster.pid)

        cluster.stop()
        #expect(!PostgresCluster.isProcessAlive(firstPid))
        try cluster.restart()

        let secondPid = try #require(cluster.pid)
        #expect(secondPid != firstPid)
        #expect(try cluster.psql("select x from kept") == "42")
        #expect(throws: PostgresClusterError.self) { try cluster.psql("select 1", password: "postgres_pw") }

        // An immediate stop (crash-like) also comes back; restart() on a running cluster stops it first.
        cluster.stop(mode: "immediate")
        #expect(!PostgresCluster.isProcessAlive(secondPid))
        try cluster.restart()
        try cluster.restart()
        #expect(try cluster.psql("select 1") == "1")
    }

    @Test("destroy removes the directory and is idempotent")
    func destroyRemovesDirectory() throws {
        let cluster = try PostgresCluster.start(name: "destroy")
        let base = cluster.baseDirectory
        let pid = try #require(cluster.pid)
        #expect(FileManager.default.fileExists(atPath: base))
        cluster.destroy()
        cluster.destroy()
        #expect(!FileManager.default.fileExists(atPath: base))
        #expect(!PostgresCluster.isProcessAlive(pid))
    }

    @Test("two clusters run side by side on different ports")
    func twoClusters() throws {
        let a = try PostgresCluster.start(name: "side-a")
        defer { a.destroy() }
        let b = try PostgresCluster.start(name: "side-b")
        defer { b.destroy() }
        #expect(a.port != b.port)
        #expect(try a.psql("show port") == String(a.port))
        #expect(try b.psql("show port") == String(b.port))
    }

    @Test("freePort returns a bindable port")
    func freePortIsUsable() {
        let port = PostgresCluster.freePort()
        #expect(port > 1024 && port < 65536)
    }

    @Test("runProcess captures stdout, stderr, status, stdin and environment")
    func runProcessCaptures() throws {
        let result = try runProcess(
            "sh", ["-c", "cat; echo \"$CUTOVER_HARNESS_VAR\"; echo oops >&2; exit 3"],
            environment: ["CUTOVER_HARNESS_VAR": "from-env"], stdin: Data("from-stdin\n".utf8))
        #expect(result.status == 3)
        #expect(result.stdout == "from-stdin\nfrom-env\n")
        #expect(result.stderr == "oops\n")

        // Large output on both pipes must not deadlock.
        let big = try runProcess("sh", ["-c", "head -c 1000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b >&2"])
        #expect(big.status == 0)
        #expect(big.stdout.count == 1_000_000)
        #expect(big.stderr.count == 1_000_000)

        #if os(Linux)
        // Children start with no blocked signals (test threads block SIGTERM/SIGINT) and only fds 0-2.
        let status = try runProcess("sh", ["-c", "grep SigBlk /proc/self/status; ls /proc/self/fd | wc -l"])
        #expect(status.stdout.contains("SigBlk:\t0000000000000000"))
        #expect(Int(status.stdout.split(separator: "\n").last?.trimmingCharacters(in: .whitespaces) ?? "") ?? 99 <= 4)
        #endif

        // PostgreSQL server binaries are found off PATH too.
        #expect(try resolveExecutable("pg_ctl").hasSuffix("/pg_ctl"))
    }

    @Test("runProcess kills the child and throws on timeout")
    func runProcessTimeout() throws {
        let started = Date()
        #expect(throws: ProcessRunnerError.self) { try runProcess("sleep", ["30"], timeout: 0.5) }
        #expect(Date().timeIntervalSince(started) < 10)
        #expect(throws: ProcessRunnerError.self) { try runProcess("definitely-not-a-command-xyz", []) }
    }

    @Test("startBackgroundProcess writes to its log and stops on request")
    func backgroundProcess() throws {
        let log = (NSTemporaryDirectory() as NSString).appendingPathComponent("cutover-bg-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let process = try startBackgroundProcess(
            "sh", ["-c", "echo started; echo to-stderr >&2; exec sleep 60"], logPath: log)
        #expect(process.isRunning)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline,
              !((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("to-stderr") {
            usleep(20_000)
        }
        let text = try String(contentsOfFile: log, encoding: .utf8)
        #expect(text.contains("started"))
        #expect(text.contains("to-stderr"))
        let stopping = Date()
        let status = stopBackgroundProcess(process)
        #expect(!process.isRunning)
        // SIGTERM itself ended it (it was not blocked in the child), well before the SIGKILL fallback.
        #expect(process.terminationReason == .uncaughtSignal)
        #expect(status == SIGTERM)
        #expect(Date().timeIntervalSince(stopping) < 5)
    }
}

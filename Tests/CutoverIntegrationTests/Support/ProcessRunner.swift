// Test support: run child processes with captured output and a timeout, or start long-running
// children (e.g. the proxy) with output going to a log file.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The outcome of a finished child process.
struct ProcessResult: Sendable, Equatable {
    var status: Int32
    var stdout: String
    var stderr: String

    var succeeded: Bool { status == 0 }
}

enum ProcessRunnerError: Error, CustomStringConvertible {
    case executableNotFound(String)
    case launchFailed(command: String, reason: String)
    case timedOut(command: String, timeout: TimeInterval, stdout: String, stderr: String)

    var description: String {
        switch self {
        case .executableNotFound(let name):
            return "executable not found on PATH or in PostgreSQL bin directories: \(name)"
        case .launchFailed(let command, let reason):
            return "could not launch `\(command)`: \(reason)"
        case .timedOut(let command, let timeout, let stdout, let stderr):
            return "`\(command)` timed out after \(timeout)s\nstdout:\n\(stdout)\nstderr:\n\(stderr)"
        }
    }
}

/// Directories searched after PATH: the PostgreSQL 15 server binaries first, then any other version.
private let extraSearchDirectories: [String] = {
    var dirs = ["/usr/lib/postgresql/15/bin"]
    let root = "/usr/lib/postgresql"
    let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
        .sorted { (Int($0) ?? 0) > (Int($1) ?? 0) }
    for version in versions {
        let dir = "\(root)/\(version)/bin"
        if !dirs.contains(dir) { dirs.append(dir) }
    }
    return dirs
}()

/// Resolves `name` to an absolute executable path. Names containing a `/` are returned as they are
/// (made absolute against the current directory); others are looked up on PATH, then in the
/// PostgreSQL bin directories.
func resolveExecutable(_ name: String) throws -> String {
    if name.contains("/") {
        if name.hasPrefix("/") { return name }
        return FileManager.default.currentDirectoryPath + "/" + name
    }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    let candidates = path.split(separator: ":").map(String.init) + extraSearchDirectories
    for directory in candidates where !directory.isEmpty {
        let full = directory + "/" + name
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue,
           FileManager.default.isExecutableFile(atPath: full) {
            return full
        }
    }
    throw ProcessRunnerError.executableNotFound(name)
}

private func describeCommand(_ executable: String, _ arguments: [String]) -> String {
    ([executable] + arguments).joined(separator: " ")
}

private func makeTemporaryFile(_ tag: String, contents: Data = Data()) throws -> String {
    let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("cutover-proc-\(tag)-\(UUID().uuidString)")
    guard FileManager.default.createFile(atPath: path, contents: contents) else {
        throw ProcessRunnerError.launchFailed(command: tag, reason: "could not create temporary file \(path)")
    }
    return path
}

private func readText(_ path: String) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "" }
    return String(decoding: data, as: UTF8.self)
}

/// Runs `executable` with `arguments` to completion and captures its output.
///
/// The child inherits this process's environment with `environment` laid over it. Output goes to
/// temporary files, so neither stream can fill a pipe and deadlock, and a daemon the child leaves
/// behind (`pg_ctl start`'s postmaster) cannot hold the command "open". On Linux the child is
/// spawned directly with `posix_spawn`, with an empty signal mask, default signal handlers, its own
/// process group and no inherited descriptors beyond 0-2 (Foundation's `Process` inherits the
/// calling thread's mask — test threads block SIGTERM/SIGINT — and only notices the child exit once
/// every descendant has closed a socket it hands down, which a daemonizing child never does).
///
/// On timeout the child's process group gets SIGTERM, then SIGKILL, and
/// `ProcessRunnerError.timedOut` is thrown. A nonzero exit status is *not* an error: check
/// `status` (a child killed by signal N reports 128 + N, like a shell).
func runProcess(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:],
    stdin: Data? = nil,
    timeout: TimeInterval = 120,
    currentDirectory: String? = nil
) throws -> ProcessResult {
    let path = try resolveExecutable(executable)
    let command = describeCommand(path, arguments)

    let stdoutPath = try makeTemporaryFile("out")
    let stderrPath = try makeTemporaryFile("err")
    let stdinPath = try stdin.map { try makeTemporaryFile("in", contents: $0) }
    defer {
        try? FileManager.default.removeItem(atPath: stdoutPath)
        try? FileManager.default.removeItem(atPath: stderrPath)
        if let stdinPath { try? FileManager.default.removeItem(atPath: stdinPath) }
    }
    let environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }

    let status = try spawnAndWait(
        path: path, arguments: arguments, environment: environment,
        stdinPath: stdinPath ?? "/dev/null", stdoutPath: stdoutPath, stderrPath: stderrPath,
        currentDirectory: currentDirectory, timeout: timeout, command: command)
    guard let status else {
        throw ProcessRunnerError.timedOut(
            command: command, timeout: timeout, stdout: readText(stdoutPath), stderr: readText(stderrPath))
    }
    return ProcessResult(status: status, stdout: readText(stdoutPath), stderr: readText(stderrPath))
}

#if os(Linux)
private typealias AddCloseFromFunction = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
private typealias AddChdirFunction = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> Int32

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+) and `..._addchdir_np` (2.29+) are
/// behind _GNU_SOURCE, which the Glibc module does not define: look them up at run time.
private func glibcSymbol<T>(_ name: String, as type: T.Type) -> T? {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0) /* RTLD_DEFAULT */, name) else { return nil }
    return unsafeBitCast(symbol, to: type)
}

/// Spawns the child and waits for it. Returns its status, or nil after killing it on timeout.
private func spawnAndWait(
    path: String, arguments: [String], environment: [String: String],
    stdinPath: String, stdoutPath: String, stderrPath: String,
    currentDirectory: String?, timeout: TimeInterval, command: String
) throws -> Int32? {
    func check(_ rc: Int32, _ what: String) throws {
        if rc != 0 {
            throw ProcessRunnerError.launchFailed(command: command, reason: "\(what): \(String(cString: strerror(rc)))")
        }
    }

    var actions = posix_spawn_file_actions_t()
    try check(posix_spawn_file_actions_init(&actions), "posix_spawn_file_actions_init")
    defer { posix_spawn_file_actions_destroy(&actions) }
    try check(posix_spawn_file_actions_addopen(&actions, 0, stdinPath, O_RDONLY, 0), "stdin")
    try check(posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_TRUNC, 0), "stdout")
    try check(posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_TRUNC, 0), "stderr")
    if let addCloseFrom = glibcSymbol("posix_spawn_file_actions_addclosefrom_np", as: AddCloseFromFunction.self) {
        try check(addCloseFrom(&actions, 3), "closefrom")
    } else {
        // Older glibc: close what is open now (closing an fd that is gone by then is ignored).
        let fds = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for fd in fds where fd > 2 { _ = posix_spawn_file_actions_addclose(&actions, fd) }
    }
    if let currentDirectory {
        guard let addChdir = glibcSymbol("posix_spawn_file_actions_addchdir_np", as: AddChdirFunction.self) else {
            throw ProcessRunnerError.launchFailed(command: command, reason: "posix_spawn_file_actions_addchdir_np unavailable")
        }
        try check(addChdir(&actions, currentDirectory), "chdir \(currentDirectory)")
    }

    var attributes = posix_spawnattr_t()
    try check(posix_spawnattr_init(&attributes), "posix_spawnattr_init")
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    var allSignals = sigset_t()
    sigfillset(&allSignals)
    try check(posix_spawnattr_setsigmask(&attributes, &noSignals), "setsigmask")
    try check(posix_spawnattr_setsigdefault(&attributes, &allSignals), "setsigdefault")
    try check(posix_spawnattr_setpgroup(&attributes, 0), "setpgroup")
    try check(posix_spawnattr_setflags(
        &attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP)), "setflags")

    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    try check(posix_spawn(&pid, path, &actions, &attributes, argv, envp), "posix_spawn")

    func reap(blocking: Bool) -> Int32? {
        var status: Int32 = 0
        while true {
            let rc = waitpid(pid, &status, blocking ? 0 : WNOHANG)
            if rc == pid { break }
            if rc == 0 { return nil }
            if errno == EINTR { continue }
            return -1  // ECHILD: someone else reaped it; status unknown
        }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    let deadline = Date().addingTimeInterval(timeout)
    var pause: UInt32 = 200
    while true {
        if let status = reap(blocking: false) { return status }
        if Date() >= deadline { break }
        usleep(pause)
        pause = min(pause * 2, 20_000)
    }
    // Timed out: SIGTERM the child's process group, then SIGKILL it.
    kill(-pid, SIGTERM)
    kill(pid, SIGTERM)
    let graceEnd = Date().addingTimeInterval(3)
    while Date() < graceEnd {
        if reap(blocking: false) != nil { return nil }
        usleep(20_000)
    }
    kill(-pid, SIGKILL)
    kill(pid, SIGKILL)
    _ = reap(blocking: true)
    return nil
}
#else
/// Non-Linux fallback on Foundation's `Process`.
private func spawnAndWait(
    path: String, arguments: [String], environment: [String: String],
    stdinPath: String, stdoutPath: String, stderrPath: String,
    currentDirectory: String?, timeout: TimeInterval, command: String
) throws -> Int32? {
    guard let input = FileHandle(forReadingAtPath: stdinPath),
          let output = FileHandle(forWritingAtPath: stdoutPath),
          let error = FileHandle(forWritingAtPath: stderrPath) else {
        throw ProcessRunnerError.launchFailed(command: command, reason: "could not open temporary files")
    }
    defer {
        try? input.close()
        try? output.close()
        try? error.close()
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.environment = environment
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    process.standardInput = input
    process.standardOutput = output
    process.standardError = error
    let finished = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in finished.signal() }
    do {
        try withUnblockedSignals { try process.run() }
    } catch {
        throw ProcessRunnerError.launchFailed(command: command, reason: "\(error)")
    }
    if finished.wait(timeout: .now() + timeout) == .timedOut {
        process.terminate()
        if finished.wait(timeout: .now() + 3) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            _ = finished.wait(timeout: .now() + 10)
        }
        return nil
    }
    return process.terminationStatus
}
#endif

/// Runs `body` (which spawns a child) with this thread's signal mask emptied, so the child does
/// not inherit the mask of a test/dispatch thread (which blocks SIGTERM, SIGINT, ...).
private func withUnblockedSignals<T>(_ body: () throws -> T) rethrows -> T {
    var none = sigset_t()
    sigemptyset(&none)
    var previous = sigset_t()
    pthread_sigmask(SIG_SETMASK, &none, &previous)
    defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
    return try body()
}

/// Starts a long-running child (e.g. the proxy) and returns it without waiting. Its stdout and
/// stderr are appended to `logPath` (created if missing); stdin is /dev/null. The environment is
/// this process's environment with `environment` laid over it. Stop it with
/// `stopBackgroundProcess(_:)`. (Foundation only reports such a child's exit once every process
/// holding a descriptor it passes down has gone, so the child should not leave daemons behind.)
func startBackgroundProcess(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String] = [:],
    logPath: String,
    currentDirectory: String? = nil
) throws -> Process {
    let path = try resolveExecutable(executable)
    let command = describeCommand(path, arguments)
    if !FileManager.default.fileExists(atPath: logPath) {
        guard FileManager.default.createFile(atPath: logPath, contents: nil) else {
            throw ProcessRunnerError.launchFailed(command: command, reason: "could not create log file \(logPath)")
        }
    }
    guard let logHandle = FileHandle(forWritingAtPath: logPath) else {
        throw ProcessRunnerError.launchFailed(command: command, reason: "could not open log file \(logPath)")
    }
    defer { try? logHandle.close() }  // the child keeps its own copy of the descriptor
    _ = try? logHandle.seekToEnd()

    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = logHandle
    process.standardError = logHandle
    do {
        // Foundation's posix_spawn passes on this thread's signal mask; the child must get SIGTERM.
        try withUnblockedSignals { try process.run() }
    } catch {
        throw ProcessRunnerError.launchFailed(command: command, reason: "\(error)")
    }
    return process
}

/// Stops a child started with `startBackgroundProcess`: sends `signal` (SIGTERM by default), waits
/// up to `timeout` seconds, then SIGKILLs it. Returns its termination status.
@discardableResult
func stopBackgroundProcess(_ process: Process, signal: Int32 = SIGTERM, timeout: TimeInterval = 10) -> Int32 {
    guard process.isRunning else { return process.terminationStatus }
    let pid = process.processIdentifier
    kill(pid, signal)
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(20_000) }
    if process.isRunning {
        kill(pid, SIGKILL)
        process.waitUntilExit()
    }
    return process.terminationStatus
}

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
    let path = NSTemporaryDirectory() + "/cutover-proc-\(tag)-\(UUID().uuidString)"
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
/// temporary files (so neither pipe can fill up and deadlock, and grandchildren that keep the
/// descriptors open cannot hang the read). On timeout the child gets SIGTERM, then SIGKILL, and
/// `ProcessRunnerError.timedOut` is thrown. A nonzero exit status is *not* an error: check `status`.
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
    var stdinPath: String?
    defer {
        try? FileManager.default.removeItem(atPath: stdoutPath)
        try? FileManager.default.removeItem(atPath: stderrPath)
        if let stdinPath { try? FileManager.default.removeItem(atPath: stdinPath) }
    }
    guard let stdoutHandle = FileHandle(forWritingAtPath: stdoutPath),
          let stderrHandle = FileHandle(forWritingAtPath: stderrPath) else {
        throw ProcessRunnerError.launchFailed(command: command, reason: "could not open temporary output files")
    }
    defer {
        try? stdoutHandle.close()
        try? stderrHandle.close()
    }
    let stdinHandle: FileHandle
    if let stdin {
        let inputPath = try makeTemporaryFile("in", contents: stdin)
        stdinPath = inputPath
        guard let handle = FileHandle(forReadingAtPath: inputPath) else {
            throw ProcessRunnerError.launchFailed(command: command, reason: "could not open temporary input file")
        }
        stdinHandle = handle
    } else {
        stdinHandle = FileHandle.nullDevice
    }
    defer { if stdin != nil { try? stdinHandle.close() } }

    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
    process.standardInput = stdinHandle
    process.standardOutput = stdoutHandle
    process.standardError = stderrHandle

    let finished = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in finished.signal() }
    do {
        try process.run()
    } catch {
        throw ProcessRunnerError.launchFailed(command: command, reason: "\(error)")
    }

    if finished.wait(timeout: .now() + timeout) == .timedOut {
        let pid = process.processIdentifier
        process.terminate()
        if finished.wait(timeout: .now() + 3) == .timedOut {
            kill(pid, SIGKILL)
            _ = finished.wait(timeout: .now() + 10)
        }
        throw ProcessRunnerError.timedOut(
            command: command, timeout: timeout, stdout: readText(stdoutPath), stderr: readText(stderrPath))
    }
    return ProcessResult(
        status: process.terminationStatus, stdout: readText(stdoutPath), stderr: readText(stderrPath))
}

/// Starts a long-running child (e.g. the proxy) and returns it without waiting. Its stdout and
/// stderr are appended to `logPath` (created if missing); stdin is /dev/null. The environment is
/// this process's environment with `environment` laid over it. Stop it with
/// `stopBackgroundProcess(_:)`.
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
        try process.run()
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

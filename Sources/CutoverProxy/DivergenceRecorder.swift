// Writes divergence records: JSON lines to the divergence log, the latest N in memory, counters per route.
import CutoverCore
import Foundation
import Logging

final class DivergenceRecorder {
    private var file: FileHandle?
    private(set) var path: String?
    private(set) var recent: [Divergence] = []
    private var capacity: Int
    let logger: Logger

    init(path: String?, capacity: Int, logger: Logger) {
        self.capacity = capacity
        self.logger = logger
        open(path)
    }

    /// Switches the log to `newPath` (nil: none). False when the new file cannot be opened: the log
    /// written so far stays in use (a reload is then refused whole).
    @discardableResult
    func open(_ newPath: String?) -> Bool {
        guard newPath != path else { return true }
        var newFile: FileHandle?
        if let newPath {
            // Owner only: records carry statements (and their literals with log_literals). A failure shows as nil below.
            if !FileManager.default.fileExists(atPath: newPath) {
                _ = FileManager.default.createFile(atPath: newPath, contents: nil, attributes: [.posixPermissions: 0o600])
            }
            newFile = FileHandle(forWritingAtPath: newPath)
            guard newFile != nil else {
                logger.error("cannot open divergence log", metadata: ["path": "\(newPath)"])
                return false
            }
            _ = try? newFile?.seekToEnd()
        }
        try? file?.close()
        file = newFile
        path = newPath
        return true
    }

    func setCapacity(_ n: Int) { capacity = n; trim() }

    func record(_ d: Divergence) {
        recent.append(d)
        trim()
        // One write per record: divergences are the exception, and a line must never be half-written.
        if let file { try? file.write(contentsOf: Data((d.jsonLine() + "\n").utf8)) }
        logger.warning("divergence", metadata: ["route": "\(d.route)", "kind": "\(d.kind.rawValue)", "session": "\(d.session)",
                                                "statement": "\(d.statement ?? "")", "detail": "\(d.detail ?? "")"])
    }

    private func trim() { if recent.count > capacity { recent.removeFirst(recent.count - capacity) } }
}

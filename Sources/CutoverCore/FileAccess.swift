// Reading and probing the files a config names, with the OS's own words for a failure (strerror), never a
// Foundation error domain: an operator acts on "Permission denied", not on "NSCocoaErrorDomain 513".
import Foundation

enum FileAccess {
    /// The OS's text for an error number.
    static func describe(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// The file's text (UTF-8), or the OS's reason it cannot be read.
    static func readText(_ path: String) -> Result<String, FileAccessError> {
        guard let file = fopen(path, "r") else { return .failure(FileAccessError(describe(errno))) }
        defer { fclose(file) }
        var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            bytes += chunk[..<n]
            guard n == chunk.count else { break }
        }
        // A directory opens but does not read (EISDIR).
        if ferror(file) != 0 { return .failure(FileAccessError(describe(errno))) }
        return .success(String(decoding: bytes, as: UTF8.self))
    }

    /// Nil when a new file can be created in `directory` (one is created and removed again), else the OS's
    /// reason. Asking the file system is the only true answer: permissions, a read-only mount, a full disk
    /// and a missing directory all show here, and only here.
    static func probeWritable(directory: String) -> FileAccessError? {
        let probe = (directory as NSString).appendingPathComponent(".cutover-write-check-\(getpid())")
        let fd = open(probe, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        guard fd >= 0 else { return FileAccessError(describe(errno)) }
        close(fd)
        unlink(probe)
        return nil
    }
}

/// Why a file could not be read or written, in the OS's words.
struct FileAccessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

// libc's memchr behind a safe call, for the byte scans of the statement-tracking hot path.
#if canImport(Glibc)
import Glibc
#endif

public enum RawBytes {
    /// The index of the first `byte` at or after `from`, or nil.
    @inlinable public static func index(of byte: UInt8, in bytes: UnsafeRawBufferPointer, from: Int = 0) -> Int? {
        guard from < bytes.count, let base = bytes.baseAddress,
              let hit = memchr(base + from, Int32(byte), bytes.count - from) else { return nil }
        return base.distance(to: UnsafeRawPointer(hit))
    }
}

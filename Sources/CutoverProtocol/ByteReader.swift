// Reading PostgreSQL wire primitives (big-endian integers, C strings) from a message body.

/// Errors a payload decoder throws when a complete message does not have the shape its id promises.
public enum ProtocolError: Error, Equatable, Sendable {
    case truncated(String)
    case trailingBytes(String)
    case invalidLength(Int)
    case messageTooLarge(length: Int, limit: Int)
    case unsupportedProtocolVersion(major: Int, minor: Int)
    case malformed(String)
}

/// A cursor over one complete message body. Decoders must consume it exactly (`finish()`).
public struct ByteReader {
    public let bytes: ArraySlice<UInt8>
    public private(set) var index: Int
    let context: String

    public init(_ bytes: ArraySlice<UInt8>, context: String) {
        self.bytes = bytes
        self.index = bytes.startIndex
        self.context = context
    }

    public init(_ bytes: [UInt8], context: String) { self.init(bytes[...], context: context) }

    public var remaining: Int { bytes.endIndex - index }

    public mutating func readUInt8() throws -> UInt8 {
        guard remaining >= 1 else { throw ProtocolError.truncated(context) }
        defer { index += 1 }
        return bytes[index]
    }

    public mutating func readInt16() throws -> Int16 {
        guard remaining >= 2 else { throw ProtocolError.truncated(context) }
        defer { index += 2 }
        return Int16(bitPattern: UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1]))
    }

    public mutating func readInt32() throws -> Int32 {
        guard remaining >= 4 else { throw ProtocolError.truncated(context) }
        defer { index += 4 }
        return Int32(bitPattern: UInt32(bytes[index]) << 24 | UInt32(bytes[index + 1]) << 16
            | UInt32(bytes[index + 2]) << 8 | UInt32(bytes[index + 3]))
    }

    /// A NUL-terminated string; the NUL is consumed and not returned.
    public mutating func readCString() throws -> String {
        guard let nul = bytes[index...].firstIndex(of: 0) else { throw ProtocolError.truncated(context) }
        defer { index = nul + 1 }
        return String(decoding: bytes[index..<nul], as: UTF8.self)
    }

    public mutating func readBytes(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, remaining >= count else { throw ProtocolError.truncated(context) }
        defer { index += count }
        return bytes[index..<index + count]
    }

    public mutating func readRest() -> ArraySlice<UInt8> {
        defer { index = bytes.endIndex }
        return bytes[index...]
    }

    public func finish() throws {
        if remaining != 0 { throw ProtocolError.trailingBytes(context) }
    }
}

// Building PostgreSQL wire messages: id byte, length placeholder, body, length patched at the end.

/// Appends one or more messages to a byte array. `beginMessage`/`endMessage` bracket each one.
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8]
    private var lengthAt: Int = -1

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Starts a typed message (`id` present) or an untyped startup-phase packet (`id` nil).
    public mutating func beginMessage(_ id: UInt8?) {
        if let id { bytes.append(id) }
        lengthAt = bytes.count
        bytes.append(contentsOf: [0, 0, 0, 0])
    }

    public mutating func endMessage() {
        precondition(lengthAt >= 0, "endMessage without beginMessage")
        let length = UInt32(bytes.count - lengthAt)
        bytes[lengthAt] = UInt8(length >> 24)
        bytes[lengthAt + 1] = UInt8((length >> 16) & 0xFF)
        bytes[lengthAt + 2] = UInt8((length >> 8) & 0xFF)
        bytes[lengthAt + 3] = UInt8(length & 0xFF)
        lengthAt = -1
    }

    public mutating func writeUInt8(_ v: UInt8) { bytes.append(v) }

    public mutating func writeInt16(_ v: Int16) {
        let u = UInt16(bitPattern: v)
        bytes.append(UInt8(u >> 8)); bytes.append(UInt8(u & 0xFF))
    }

    public mutating func writeInt32(_ v: Int32) {
        let u = UInt32(bitPattern: v)
        bytes.append(UInt8(u >> 24)); bytes.append(UInt8((u >> 16) & 0xFF))
        bytes.append(UInt8((u >> 8) & 0xFF)); bytes.append(UInt8(u & 0xFF))
    }

    public mutating func writeCString(_ s: String) {
        bytes.append(contentsOf: s.utf8)
        bytes.append(0)
    }

    public mutating func writeBytes<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }
}

/// Reads a big-endian Int32 at `offset` of a raw buffer (used by framers on unparsed input).
@inline(__always)
public func readBigEndianInt32(_ p: UnsafeRawBufferPointer, _ offset: Int) -> Int32 {
    Int32(bitPattern: UInt32(p[offset]) << 24 | UInt32(p[offset + 1]) << 16 | UInt32(p[offset + 2]) << 8 | UInt32(p[offset + 3]))
}

// MessageScanner tests: the forwarding path sees every boundary and captured body, whatever the chunking.
import Testing
@testable import CutoverProtocol

private func sampleStream() -> [UInt8] {
    var w = ByteWriter()
    BackendMessage.parameterStatus(name: "TimeZone", value: "UTC").encode(into: &w)
    w.beginMessage(BackendMessageID.dataRow.rawValue); w.writeInt16(1); w.writeInt32(3000)
    w.writeBytes([UInt8](repeating: 0x61, count: 3000)); w.endMessage()
    BackendMessage.commandComplete(tag: "SELECT 1").encode(into: &w)
    w.beginMessage(BackendMessageID.noData.rawValue); w.endMessage() // empty body
    BackendMessage.readyForQuery(.inTransaction).encode(into: &w)
    return w.bytes
}

/// Scans `stream` cut into chunks of `size`, returning (id, decoded-if-captured) per message.
private func scan(_ stream: [UInt8], chunk size: Int) throws -> [(UInt8, BackendMessage?)] {
    var scanner = MessageScanner(captured: .init([0x53, 0x43, 0x5A]), maxMessageSize: 1 << 20)
    var seen: [(UInt8, BackendMessage?)] = []
    var offset = 0
    while offset < stream.count {
        let end = min(stream.count, offset + size)
        try stream[offset..<end].withUnsafeBytes { chunk in
            try scanner.scan(chunk) { id, body, endOffset in
                #expect(endOffset <= chunk.count)
                seen.append((id, try body.map { try BackendMessage.decode(id: id, raw: $0) }))
            }
        }
        offset = end
    }
    #expect(scanner.atMessageBoundary)
    return seen
}

@Suite struct MessageScannerTests {
    @Test(arguments: [1, 2, 3, 5, 7, 64, 4096, 1 << 20])
    func everyChunkSizeSeesTheSameMessages(chunk: Int) throws {
        let seen = try scan(sampleStream(), chunk: chunk)
        #expect(seen.map(\.0) == [0x53, 0x44, 0x43, 0x6E, 0x5A])
        #expect(seen[0].1 == .parameterStatus(name: "TimeZone", value: "UTC"))
        #expect(seen[1].1 == nil) // DataRow is not captured: its body is skipped, not copied
        #expect(seen[2].1 == .commandComplete(tag: "SELECT 1"))
        #expect(seen[4].1 == .readyForQuery(.inTransaction))
    }

    @Test func oversizedLengthThrowsWithoutBody() {
        var scanner = MessageScanner(captured: .init([]), maxMessageSize: 1024)
        let bytes: [UInt8] = [0x51, 0x40, 0, 0, 0]
        #expect(throws: ProtocolError.messageTooLarge(length: 1 << 30, limit: 1024)) {
            try bytes.withUnsafeBytes { try scanner.scan($0) { _, _, _ in } }
        }
    }

    @Test func oversizedLengthSplitAcrossChunksThrows() {
        var scanner = MessageScanner(captured: .init([]), maxMessageSize: 1024)
        #expect(throws: ProtocolError.self) {
            for b: UInt8 in [0x51, 0x40, 0, 0, 0] {
                try [b].withUnsafeBytes { try scanner.scan($0) { _, _, _ in } }
            }
        }
    }

    @Test func boundaryIsFalseMidMessage() throws {
        var scanner = MessageScanner(captured: .init([]), maxMessageSize: 1024)
        try [UInt8]([0x51, 0, 0, 0, 6, 0x41]).withUnsafeBytes { try scanner.scan($0) { _, _, _ in } }
        #expect(!scanner.atMessageBoundary)
        var count = 0
        try [UInt8]([0]).withUnsafeBytes { try scanner.scan($0) { _, _, _ in count += 1 } }
        #expect(count == 1 && scanner.atMessageBoundary)
    }
}

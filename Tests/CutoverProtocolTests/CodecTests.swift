// Codec tests: every message round-trips, and framing survives input fed one byte at a time.
import Testing
@testable import CutoverProtocol

/// Encodes backend messages, frames them byte by byte, decodes them back.
private func roundTripBackend(_ messages: [BackendMessage]) throws -> [BackendMessage] {
    var w = ByteWriter()
    for m in messages { m.encode(into: &w) }
    var framer = MessageFramer()
    var out: [BackendMessage] = []
    for byte in w.bytes {
        framer.append(CollectionOfOne(byte))
        while let f = try framer.next() { out.append(try BackendMessage.decode(id: f.id!, body: f.body)) }
    }
    #expect(framer.bufferedByteCount == 0)
    return out
}

@Suite struct BackendCodecTests {
    @Test func decisionMessagesRoundTripByteAtATime() throws {
        let messages: [BackendMessage] = [
            .authentication(.ok), .authentication(.cleartextPassword),
            .authentication(.md5Password(salt: [1, 2, 3, 4])),
            .authentication(.sasl(mechanisms: ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])),
            .authentication(.saslContinue(data: Array("r=abc,s=xyz,i=4096".utf8))),
            .authentication(.saslFinal(data: Array("v=sig".utf8))),
            .backendKeyData(CancelRequest(processID: 4242, secretKey: -17)),
            .parameterStatus(name: "client_encoding", value: "UTF8"),
            .readyForQuery(.idle), .readyForQuery(.inTransaction), .readyForQuery(.failedTransaction),
            .errorResponse(ErrorFields(severity: "FATAL", code: "28P01", message: "password authentication failed")),
            .noticeResponse(ErrorFields(severity: "NOTICE", code: "00000", message: "hello", detail: "d", hint: "h")),
            .commandComplete(tag: "UPDATE 3"),
            .negotiateProtocolVersion(minor: 0, unsupported: ["_pq_.x"]),
        ]
        #expect(try roundTripBackend(messages) == messages)
    }

    @Test func unknownIdIsOpaque() throws {
        #expect(try BackendMessage.decode(id: 0x44, body: [0, 0][...]) == .other(id: 0x44))
    }

    @Test func readyForQueryWithBadStatusThrows() {
        #expect(throws: ProtocolError.self) { try BackendMessage.decode(id: 0x5A, body: [0x51][...]) }
    }

    @Test func trailingBytesAreAnError() {
        #expect(throws: ProtocolError.trailingBytes("BackendKeyData")) {
            try BackendMessage.decode(id: 0x4B, body: [0, 0, 0, 1, 0, 0, 0, 2, 9][...])
        }
    }
}

@Suite struct FrontendCodecTests {
    @Test func authenticationResponsesRoundTrip() throws {
        let cases: [(FrontendMessage, FrontendMessage.PasswordKind)] = [
            (.password("s3cret"), .password),
            (.saslInitialResponse(mechanism: "SCRAM-SHA-256", data: Array("n,,n=,r=nonce".utf8)), .saslInitial),
            (.saslResponse(data: Array("c=biws,r=nonce,p=proof".utf8)), .saslResponse),
        ]
        for (message, kind) in cases {
            var w = ByteWriter()
            message.encode(into: &w)
            var framer = MessageFramer()
            var decoded: FrontendMessage?
            for byte in w.bytes {
                framer.append(CollectionOfOne(byte))
                if let f = try framer.next() {
                    #expect(f.id == FrontendMessageID.password.rawValue)
                    decoded = try FrontendMessage.decodePassword(body: f.body, as: kind)
                }
            }
            #expect(decoded == message)
        }
    }

    @Test func startupPacketsRoundTripByteAtATime() throws {
        let packets: [StartupPacket] = [
            .sslRequest, .gssEncRequest,
            .cancel(CancelRequest(processID: 77, secretKey: 123456)),
            .startup(StartupMessage(parameters: [("user", "u"), ("database", "onboarding"),
                                                 ("application_name", "psql"), ("DateStyle", "ISO, MDY")])),
        ]
        for p in packets {
            var w = ByteWriter()
            p.encode(into: &w)
            var framer = MessageFramer(untyped: true)
            var got: StartupPacket?
            for byte in w.bytes {
                framer.append(CollectionOfOne(byte))
                if let f = try framer.next() { got = try StartupPacket.decode(body: f.body) }
            }
            #expect(got == p)
        }
    }

    @Test func databaseDefaultsToUser() {
        #expect(StartupMessage(parameters: [("user", "alice")]).database == "alice")
        #expect(StartupMessage(parameters: [("user", "alice"), ("database", "")]).database == "alice")
    }

    @Test func unknownProtocolVersionIsRejected() {
        var w = ByteWriter()
        w.beginMessage(nil); w.writeInt32(0x0002_0000); w.writeUInt8(0); w.endMessage()
        #expect(throws: ProtocolError.unsupportedProtocolVersion(major: 2, minor: 0)) {
            try StartupPacket.decode(body: w.bytes[4...])
        }
    }

    @Test func truncatedStartupIsRejected() {
        // "user" key without its value's terminator.
        let body: [UInt8] = [0, 3, 0, 0] + Array("user".utf8) + [0] + Array("bob".utf8)
        #expect(throws: ProtocolError.truncated("startup packet")) { try StartupPacket.decode(body: body[...]) }
    }
}

@Suite struct FramerLimitTests {
    @Test func oversizedLengthThrowsBeforeBodyArrives() {
        var framer = MessageFramer(maxMessageSize: 1 << 20)
        framer.append([0x51, 0x40, 0, 0, 0]) // 'Q' with a 1 GiB length, no body
        #expect(throws: ProtocolError.messageTooLarge(length: 1 << 30, limit: 1 << 20)) { try framer.next() }
    }

    @Test func lengthBelowFourThrows() {
        var framer = MessageFramer()
        framer.append([0x51, 0, 0, 0, 3])
        #expect(throws: ProtocolError.invalidLength(3)) { try framer.next() }
    }

    @Test func incompleteInputIsNotAnError() throws {
        var framer = MessageFramer()
        framer.append([0x51, 0, 0, 0, 9, 0x41])
        #expect(try framer.next() == nil)
    }
}

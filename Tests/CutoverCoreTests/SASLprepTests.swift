// SASLprep of SCRAM passwords (RFC 4013 as PostgreSQL applies it): mapping, NFKC, prohibited characters.
import Testing
@testable import CutoverCore

@Suite struct SASLprepTests {
    @Test func asciiIsUntouchedAndNonASCIIIsMappedAndNormalized() {
        #expect(SASLprep.prepare("pencil") == "pencil")
        #expect(SASLprep.prepare("tab\there") == "tab\there", "pure ASCII is used as it is, controls included")
        #expect(SASLprep.prepare("I\u{00AD}X") == "IX", "soft hyphen maps to nothing")
        #expect(SASLprep.prepare("\u{2168}") == "IX", "NFKC: the Roman numeral nine")
        #expect(SASLprep.prepare("a\u{2002}b") == "a b", "a non-ASCII space becomes a space")
        #expect(SASLprep.prepare("se\u{301}curite\u{301}") == "s\u{E9}curit\u{E9}", "composed")
        #expect(SASLprep.prepare("\u{FB01}") == "fi", "compatibility ligature")
    }

    @Test func aProhibitedCharacterLeavesThePasswordAsItWas() {
        #expect(SASLprep.prepare("\u{E000}\u{2168}") == "\u{E000}\u{2168}", "private use")
        #expect(SASLprep.prepare("a\u{200E}\u{2168}") == "a\u{200E}\u{2168}", "a direction mark")
        #expect(SASLprep.prepare("\u{0085}x\u{2168}") == "\u{0085}x\u{2168}", "a non-ASCII control")
    }

    @Test func verifiersAgreeForEquivalentSpellings() {
        let salt: [UInt8] = Array(repeating: 7, count: 16)
        let a = SCRAMVerifier(password: "\u{2168}-se\u{301}", salt: salt, iterations: 16)
        let b = SCRAMVerifier(password: "IX-s\u{E9}", salt: salt, iterations: 16)
        #expect(a == b)
        #expect(a != SCRAMVerifier(password: "IX-se", salt: salt, iterations: 16))
    }
}

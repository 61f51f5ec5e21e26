// SASLprep (RFC 4013) of a SCRAM password, as PostgreSQL applies it, so non-ASCII passwords hash the same on both ends.
import Foundation

/// PostgreSQL prepares a SCRAM password with SASLprep before deriving its keys (`pg_saslprep`): non-ASCII
/// spaces become spaces, "mapped to nothing" characters go, the result is NFKC-normalized; if it then holds
/// a prohibited character, the password is used as it was. Pure ASCII is used as it is. (The bidirectional
/// check is not made: it needs Unicode's bidi classes, which Swift does not expose; a password failing only
/// that check would be prepared here and used raw by PostgreSQL.)
public enum SASLprep {
    public static func prepare(_ password: String) -> String {
        guard !password.utf8.allSatisfy({ $0 < 0x80 }) else { return password }
        var mapped = String.UnicodeScalarView()
        for s in password.unicodeScalars {
            if mappedToNothing(s.value) { continue }
            mapped.append(nonASCIISpace(s.value) ? " " : s)
        }
        let normalized = String(mapped).precomposedStringWithCompatibilityMapping
        return normalized.unicodeScalars.contains { prohibited($0.value) } ? password : normalized
    }

    /// RFC 3454 table B.1.
    static func mappedToNothing(_ v: UInt32) -> Bool {
        v == 0x00AD || v == 0x034F || v == 0x1806 || (0x180B...0x180D).contains(v) || (0x200B...0x200D).contains(v)
            || v == 0x2060 || (0xFE00...0xFE0F).contains(v) || v == 0xFEFF
    }

    /// Table C.1.2.
    static func nonASCIISpace(_ v: UInt32) -> Bool {
        v == 0x00A0 || v == 0x1680 || (0x2000...0x200B).contains(v) || v == 0x202F || v == 0x205F || v == 0x3000
    }

    /// Tables C.1.2 and C.2.1 to C.9 (spaces, controls, private use, non-characters, surrogates, characters
    /// inappropriate for plain text or canonical representation, change-display and tagging characters).
    static func prohibited(_ v: UInt32) -> Bool {
        if nonASCIISpace(v) || v < 0x20 || v == 0x7F || (0x80...0x9F).contains(v) { return true }
        let ranges: [ClosedRange<UInt32>] = [
            0x06DD...0x06DD, 0x070F...0x070F, 0x180E...0x180E, 0x200C...0x200F, 0x2028...0x202E, 0x2060...0x2063,
            0x206A...0x206F, 0x2FF0...0x2FFB, 0x0340...0x0341, 0xD800...0xDFFF, 0xE000...0xF8FF, 0xFDD0...0xFDEF,
            0xFEFF...0xFEFF, 0xFFF9...0xFFFD, 0x1D173...0x1D17A, 0xE0001...0xE0001, 0xE0020...0xE007F,
            0xF0000...0xFFFFD, 0x100000...0x10FFFD,
        ]
        if ranges.contains(where: { $0.contains(v) }) { return true }
        return v & 0xFFFE == 0xFFFE // U+nFFFE and U+nFFFF
    }
}

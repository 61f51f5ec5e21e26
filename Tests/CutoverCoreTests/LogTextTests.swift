// LogText: client-chosen names in log lines.
import Testing
@testable import CutoverCore

struct LogTextTests {
    @Test func clientTextIsCutAndCannotStartALineOfItsOwn() {
        #expect(LogText.clean("onboarding") == "onboarding")
        #expect(LogText.clean("a\nb\r\tc\u{1b}[31m\u{2028}") == "a\\u{a}b\\u{d}\\u{9}c\\u{1b}[31m\\u{2028}")
        #expect(LogText.clean(String(repeating: "x", count: 500)) == String(repeating: "x", count: 63) + "…")
        #expect(LogText.clean("élève", limit: 3) == "élè…", "counted in characters, not bytes")
    }
}

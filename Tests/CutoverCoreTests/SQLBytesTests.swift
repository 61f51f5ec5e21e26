// Leading-keyword edge cases: identifiers that start with a keyword, comments, the longest keyword.
import Testing
@testable import CutoverCore

@Suite struct SQLBytesIdentifierTests {
    @Test func aKeywordFollowedByAnIdentifierCharacterIsNotAKeyword() {
        #expect(SQLBytes.leadingKeyword("SET_x = 1") == .other)
        #expect(SQLBytes.leadingKeyword("commit2") == .other)
        #expect(SQLBytes.leadingKeyword("set search_path = a") == .set)
        #expect(SQLBytes.leadingKeyword("Deallocate all") == .deallocate)
        #expect(SQLBytes.leadingKeyword("DEALLOCATEX") == .other)
        #expect(SQLBytes.leadingKeyword("  /* c */ (UPDATE t") == .update)
        #expect(SQLBytes.leadingKeyword("/* unterminated") == .other)
    }
}

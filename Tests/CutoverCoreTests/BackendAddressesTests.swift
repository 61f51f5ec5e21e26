// Backend address book: which names to look up and when (injected time), what a failed lookup keeps,
// re-lookups after a failed connection, round robin that passes over refused addresses, reloads.
import Testing
@testable import CutoverCore

@Suite struct BackendAddressesTests {
    /// A book with one backend `db` on host name `db.internal`, resolved at t=0 to `addresses`.
    func resolved(_ addresses: [String], refreshMs: UInt64 = 30_000) -> BackendAddresses {
        var book = BackendAddresses(refreshMs: refreshMs)
        let lookups = book.configure(["db": "db.internal"], now: 0)
        #expect(lookups == ["db"])
        book.lookupFinished("db", host: "db.internal", addresses: addresses, failure: nil, now: 0)
        return book
    }

    @Test func ipAddressesNeedNoLookup() {
        var book = BackendAddresses(refreshMs: 1000)
        let lookups = book.configure(["a": "127.0.0.1", "b": "::1", "c": "db.internal"], now: 0)
        #expect(lookups == ["c"], "only the name is looked up")
        let a = book.choose("a", now: 100_000), b = book.choose("b", now: 100_000)
        #expect(a == .init(address: "127.0.0.1", failure: nil, startLookup: false))
        #expect(b == .init(address: "::1", failure: nil, startLookup: false))
    }

    @Test func aNameIsLookedUpAgainOnlyWhenStaleAndOneAtATime() {
        var book = resolved(["10.0.0.5"])
        #expect(book.choose("db", now: 29_999) == .init(address: "10.0.0.5", failure: nil, startLookup: false))
        let due = book.choose("db", now: 30_000)
        #expect(due == .init(address: "10.0.0.5", failure: nil, startLookup: true), "stale: look up, meanwhile use what is known")
        #expect(book.choose("db", now: 40_000).startLookup == false, "one lookup in flight at a time")
        book.lookupFinished("db", host: "db.internal", addresses: ["10.0.0.5"], failure: nil, now: 41_000)
        #expect(book.choose("db", now: 70_999).startLookup == false)
        #expect(book.choose("db", now: 71_000).startLookup == true)
    }

    @Test func withoutRefreshANameIsLookedUpOnlyAfterAFailedConnection() {
        var book = resolved(["10.0.0.5"], refreshMs: 0)
        #expect(book.choose("db", now: 10_000_000).startLookup == false)
        book.connectFailed("db", address: "10.0.0.5", now: 10_000_000)
        #expect(book.choose("db", now: 10_000_500).startLookup == true)
    }

    @Test func aFailedLookupKeepsTheKnownAddressesAndIsRetriedAfterTheRetryInterval() {
        var book = resolved(["10.0.0.5"])
        #expect(book.choose("db", now: 30_000).startLookup)
        book.lookupFinished("db", host: "db.internal", addresses: [], failure: "Temporary failure in name resolution", now: 30_010)
        let after = book.choose("db", now: 30_500)
        #expect(after == .init(address: "10.0.0.5", failure: nil, startLookup: false), "known address kept; retry not yet due")
        #expect(book.entries["db"]?.lastFailure == "Temporary failure in name resolution")
        #expect(book.choose("db", now: 31_000).startLookup, "retried once retryMs has passed since the last attempt")
    }

    @Test func aNameThatNeverResolvedSaysWhyAndKeepsTrying() {
        var book = BackendAddresses(refreshMs: 30_000)
        _ = book.configure(["db": "nowhere.invalid"], now: 0)
        book.lookupFinished("db", host: "nowhere.invalid", addresses: [], failure: "unknown node or service", now: 5)
        let first = book.choose("db", now: 100)
        #expect(first == .init(address: nil, failure: "unknown node or service", startLookup: false))
        let later = book.choose("db", now: 1_005)
        #expect(later == .init(address: nil, failure: "unknown node or service", startLookup: true))
        book.lookupFinished("db", host: "nowhere.invalid", addresses: ["10.1.1.1"], failure: nil, now: 1_010)
        #expect(book.choose("db", now: 1_020).address == "10.1.1.1")
    }

    @Test func afterAFailedConnectionTheNameIsLookedUpUntilItMovesOrAConnectionSucceeds() {
        var book = resolved(["10.0.0.5"])
        book.connectFailed("db", address: "10.0.0.5", now: 1_000)
        #expect(book.choose("db", now: 1_000).startLookup, "a failover may have moved the name: look now")
        // DNS still says the same: keep looking, at most once per retry interval.
        book.lookupFinished("db", host: "db.internal", addresses: ["10.0.0.5"], failure: nil, now: 1_010)
        #expect(book.choose("db", now: 1_500).startLookup == false)
        #expect(book.choose("db", now: 2_000).startLookup)
        // Now it moved: the new address is used at once, and the name is no longer suspect.
        let previous = book.lookupFinished("db", host: "db.internal", addresses: ["10.0.0.9"], failure: nil, now: 2_010)
        #expect(previous == ["10.0.0.5"])
        #expect(book.choose("db", now: 3_100) == .init(address: "10.0.0.9", failure: nil, startLookup: false))
    }

    @Test func aSuccessfulConnectionClearsTheSuspicion() {
        var book = resolved(["10.0.0.5"])
        book.connectFailed("db", address: "10.0.0.5", now: 1_000)
        book.connected("db", address: "10.0.0.5")
        #expect(book.choose("db", now: 5_000).startLookup == false)
    }

    @Test func severalAddressesAreUsedRoundRobinPassingOverRefusedOnes() {
        var book = resolved(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        let rotation = (0..<4).map { _ in book.choose("db", now: 100).address ?? "" }
        #expect(rotation == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.1"])
        book.connectFailed("db", address: "10.0.0.2", now: 200)
        let skipping = (0..<3).map { _ in book.choose("db", now: 300).address ?? "" }
        #expect(skipping == ["10.0.0.3", "10.0.0.1", "10.0.0.3"], "10.0.0.2 refused: passed over")
        let remembered = book.choose("db", now: 200 + 10_000).address
        #expect(remembered == "10.0.0.1", "after failureMemoryMs it is back in the rotation")
        #expect(book.choose("db", now: 200 + 10_000).address == "10.0.0.2")
    }

    @Test func eachChoiceListsTheOtherAddressesToFallBackOnRefusedOnesLast() {
        var book = resolved(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        #expect(book.choose("db", now: 100) == .init(address: "10.0.0.1", failure: nil, startLookup: false, fallbacks: ["10.0.0.2", "10.0.0.3"]))
        #expect(book.choose("db", now: 100).fallbacks == ["10.0.0.3", "10.0.0.1"], "the rotation's order, from the pick on")
        book.connectFailed("db", address: "10.0.0.1", now: 200)
        let next = book.choose("db", now: 300)
        #expect(next.address == "10.0.0.3" && next.fallbacks == ["10.0.0.2", "10.0.0.1"],
                "an address that refused lately is tried last, not left out: \(next)")
        var single = resolved(["10.0.0.5"])
        #expect(single.choose("db", now: 100).fallbacks.isEmpty)
    }

    @Test func whenEveryAddressRefusedTheRotationGoesOn() {
        var book = resolved(["10.0.0.1", "10.0.0.2"])
        book.connectFailed("db", address: "10.0.0.1", now: 100)
        book.connectFailed("db", address: "10.0.0.2", now: 100)
        let picks = (0..<2).map { _ in book.choose("db", now: 200).address ?? "" }
        #expect(Set(picks) == ["10.0.0.1", "10.0.0.2"], "no address is withheld when all failed: one may be back")
    }

    @Test func aReloadKeepsUnchangedHostsAndIgnoresResultsForTheOldHost() {
        var book = resolved(["10.0.0.5"])
        #expect(book.choose("db", now: 30_000).startLookup) // a lookup of db.internal is in flight
        let lookups = book.configure(["db": "db2.internal", "other": "10.9.9.9"], now: 30_100)
        #expect(lookups == ["db"], "the changed host is looked up; the IP address needs none")
        #expect(book.choose("db", now: 30_200) == .init(address: nil, failure: "not resolved yet", startLookup: false))
        let late = book.lookupFinished("db", host: "db.internal", addresses: ["10.0.0.6"], failure: nil, now: 30_300)
        #expect(late == nil && book.entries["db"]?.addresses == [], "the old host's answer is not taken")
        book.lookupFinished("db", host: "db2.internal", addresses: ["10.0.0.7"], failure: nil, now: 30_400)
        #expect(book.choose("db", now: 30_500).address == "10.0.0.7")
        let again = book.configure(["db": "db2.internal"], now: 31_000)
        #expect(again.isEmpty && book.choose("db", now: 31_000).address == "10.0.0.7", "unchanged: kept, no lookup")
        #expect(book.entries["other"] == nil, "a backend removed by the reload is forgotten")
    }
}

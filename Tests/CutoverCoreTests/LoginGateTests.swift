// The follower-login gate: at most `limit` in flight, first come first served, withdrawals, no leak of slots.
import Testing
@testable import CutoverCore

@Suite struct LoginGateTests {
    @Test func admitsUpToTheLimitThenQueuesInOrder() {
        var g = LoginGate<Int>(limit: 2)
        let admitted = [g.request(1), g.request(2), g.request(3), g.request(4)]
        #expect(admitted == [true, true, false, false])
        #expect(g.inFlight == 2 && g.waitingCount == 2)
        let next = [g.finished(), g.finished(), g.finished(), g.finished()]
        #expect(next == [3, 4, nil, nil])
        #expect(g.inFlight == 0 && g.waitingCount == 0)
        let again = g.request(5)
        #expect(again)
    }

    @Test func aWithdrawnTicketIsNeverAdmittedAndLeavesNoSlotTaken() {
        var g = LoginGate<Int>(limit: 1)
        let admitted = [g.request(1), g.request(2), g.request(3)]
        #expect(admitted == [true, false, false])
        let withdrawn = [g.withdraw { $0 == 2 }, g.withdraw { $0 == 2 }, g.withdraw { $0 == 1 }]
        #expect(withdrawn == [true, false, false], "only a waiting ticket can be withdrawn, once")
        let next = [g.finished(), g.finished()]
        #expect(next == [3, nil])
        #expect(g.inFlight == 0)
    }

    @Test func aNewcomerDoesNotOvertakeTheQueue() {
        var g = LoginGate<Int>(limit: 1)
        _ = g.request(1)
        _ = g.request(2)
        let second = g.finished()
        let newcomer = g.request(3)
        #expect(second == 2 && !newcomer, "the slot went to 2, and 3 waits")
        let third = g.finished()
        #expect(third == 3)
    }

    @Test func aRaisedLimitAdmitsWaitingTicketsInOrderAndALoweredOneLetsInFlightFinish() {
        var g = LoginGate<Int>(limit: 1)
        let admitted = [g.request(1), g.request(2), g.request(3), g.request(4)]
        #expect(admitted == [true, false, false, false])
        #expect(g.setLimit(3) == [2, 3] && g.inFlight == 3 && g.waitingCount == 1)
        #expect(g.setLimit(1).isEmpty && g.inFlight == 3, "in-flight logins are not cancelled")
        let next = [g.finished(), g.finished(), g.finished()]
        #expect(next == [nil, nil, 4], "the fourth waits until in-flight drops under the new limit")
        #expect(g.setLimit(0).isEmpty && g.limit == 1)
    }

    final class Ticket: Equatable {
        let n: Int
        init(_ n: Int) { self.n = n }
        static func == (a: Ticket, b: Ticket) -> Bool { a.n == b.n }
    }

    @Test func anAdmittedTicketIsNotKeptWhileOthersStillWait() {
        var g = LoginGate<Ticket>(limit: 1)
        weak var admittedLater: Ticket?
        do {
            let first = Ticket(1), second = Ticket(2)
            admittedLater = second
            _ = g.request(first)
            _ = g.request(second)
            _ = g.request(Ticket(3))
            #expect(g.finished() == second)
        }
        #expect(admittedLater == nil, "ticket 2 was admitted and let go of by its owner: the gate holds it no longer")
        #expect(g.waitingCount == 1 && g.finished()?.n == 3)
    }

    @Test func aQueueThatNeverEmptiesStaysSmall() {
        // A steady trickle: one finishes, one arrives, with always about 100 waiting.
        var g = LoginGate<Int>(limit: 1)
        for i in 0..<100 { _ = g.request(i) }
        var order: [Int] = []
        for i in 100..<10_000 {
            _ = g.request(i)
            if let next = g.finished() { order.append(next) }
        }
        #expect(order == Array(1..<9_901), "first come, first served throughout")
        #expect(g.waitingCount == 99, "ticket 0 went straight in")
        #expect(g.storedSlots <= 2 * 100 + 32, "cleared slots are dropped as it goes: \(g.storedSlots) stored")
    }
}

@Suite struct PooledLoginKeyTests {
    @Test func onlyTheSameBackendSideAndStartupBytesAreTheSameLogin() {
        let packet: [UInt8] = Array("user\0u\0database\0d\0application_name\0a\0\0".utf8)
        let key = PooledLoginKey(backend: "legacy", side: .legacy, startup: packet)
        #expect(key == PooledLoginKey(backend: "legacy", side: .legacy, startup: packet))
        #expect(key.hashValue == PooledLoginKey(backend: "legacy", side: .legacy, startup: packet).hashValue)
        var sameLength = packet
        sameLength[sameLength.count - 3] = UInt8(ascii: "b") // application_name b
        #expect(key != PooledLoginKey(backend: "legacy", side: .legacy, startup: sameLength), "one byte differs")
        #expect(key != PooledLoginKey(backend: "legacy", side: .legacy, startup: packet + [0]), "longer")
        #expect(PooledLoginKey(backend: "legacy", side: .legacy, startup: packet + [0]) != key, "shorter (no read past the end)")
        #expect(key != PooledLoginKey(backend: "other", side: .legacy, startup: packet), "another backend")
        #expect(key != PooledLoginKey(backend: "legacy", side: .new, startup: packet), "another side")
        #expect(PooledLoginKey(backend: "b", side: nil, startup: []) == PooledLoginKey(backend: "b", side: nil, startup: []))
        var pool: Set<PooledLoginKey> = [key]
        pool.insert(PooledLoginKey(backend: "legacy", side: .legacy, startup: sameLength))
        #expect(pool.count == 2 && pool.contains(PooledLoginKey(backend: "legacy", side: .legacy, startup: packet)))
    }
}

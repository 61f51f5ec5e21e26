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
}

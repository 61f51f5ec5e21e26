// Admits backend logins a few at a time, first come first served: a flip that gives every session of a route a
// follower at once would otherwise start hundreds of PostgreSQL backends (fork, authentication) in one burst.

/// A FIFO gate with at most `limit` tickets in flight. Pure: the caller starts what it admits and reports
/// when an admitted ticket has finished; a ticket still waiting can be withdrawn.
public struct LoginGate<Ticket> {
    public private(set) var limit: Int
    public private(set) var inFlight = 0
    /// Tickets waiting from `head` on. A slot is cleared when its ticket is admitted: the gate must not keep
    /// an admitted ticket (a backend link, and through it its session's buffers) alive until the queue empties.
    private var waiting: [Ticket?] = []
    private var head = 0

    public init(limit: Int) { self.limit = max(1, limit) }

    public var waitingCount: Int { waiting.count - head }
    /// Slots the queue holds, cleared ones included (tests check that it does not grow).
    var storedSlots: Int { waiting.count }

    /// True: start it now (it counts as in flight). False: it waits its turn.
    public mutating func request(_ ticket: Ticket) -> Bool {
        if inFlight < limit && waitingCount == 0 {
            inFlight += 1
            return true
        }
        waiting.append(ticket)
        return false
    }

    /// An admitted ticket has finished (success or failure): returns the next one to start, already counted.
    public mutating func finished() -> Ticket? {
        inFlight = max(0, inFlight - 1)
        guard waitingCount > 0, inFlight < limit else { return nil } // (a lowered limit: in flight may exceed it)
        let next = takeHead()
        inFlight += 1
        return next
    }

    /// Changes the limit (a config reload). Returns the waiting tickets a higher limit admits now, in order,
    /// already counted; a lower one lets those in flight finish and admits fewer after them.
    public mutating func setLimit(_ newLimit: Int) -> [Ticket] {
        limit = max(1, newLimit)
        var admitted: [Ticket] = []
        while inFlight < limit, waitingCount > 0 {
            admitted.append(takeHead())
            inFlight += 1
        }
        return admitted
    }

    /// Removes a waiting ticket (its session ended first); false if it was not waiting.
    public mutating func withdraw(where matches: (Ticket) -> Bool) -> Bool {
        guard let i = waiting[head...].firstIndex(where: { $0.map(matches) ?? false }) else { return false }
        waiting.remove(at: i)
        compact()
        return true
    }

    /// The first waiting ticket, its slot cleared.
    private mutating func takeHead() -> Ticket {
        let ticket = waiting[head]!
        waiting[head] = nil
        head += 1
        compact()
        return ticket
    }

    /// Drops the cleared slots once they are half the array (or all of it), so a queue that never empties
    /// (a steady trickle of follower logins) does not grow.
    private mutating func compact() {
        if head == waiting.count { waiting.removeAll(keepingCapacity: false); head = 0 }
        else if head >= 32 && head * 2 >= waiting.count { waiting.removeFirst(head); head = 0 }
    }
}

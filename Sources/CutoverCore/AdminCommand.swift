// The admin console's language: parsing commands and encoding their results as protocol bytes.
import Foundation
import CutoverProtocol

public enum AdminCommand: Equatable, Sendable {
    case showRoutes
    case showSessions
    case showDivergences(route: String?)
    case showStats
    case showBackends
    case showConfig
    case showVersion
    case setPhase(route: String, phase: Phase, force: Bool)
    case setMirror(route: String, mode: MirrorMode)
    case pause(route: String, timeout: Double?)
    case resume(route: String)
    case reload
    case show(help: Bool)
    /// Cancels the statement a session's leader is running (as the client's own cancel would).
    case cancel(session: Int)
    /// Ends a session: its client is told why and its backends let go (a running statement cancelled first).
    case kill(session: Int)
    /// Declares a repaired route in sync: allowed only under the operator's PAUSE whose id is given (the one
    /// a clean `cutover verify --mark-in-sync` ran under), so no write can have run between the check and this.
    case markInSync(route: String, pauseID: Int)

    public struct ParseError: Error, Equatable, Sendable {
        public var message: String
        public var sqlState: String
    }

    public static let usage = "commands: SHOW ROUTES | SHOW SESSIONS | SHOW DIVERGENCES [route] | SHOW STATS | SHOW BACKENDS | SHOW CONFIG | SHOW VERSION | SET PHASE <route> TO <phase> [FORCE] | SET MIRROR <route> TO async|sync | PAUSE <route> [timeout_seconds] | RESUME <route> | CANCEL <session id> | KILL <session id> | MARK IN SYNC <route> <pause_id> | RELOAD"

    public static func parse(_ text: String) throws(ParseError) -> AdminCommand {
        var t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        while t.hasSuffix(";") { t.removeLast(); t = t.trimmingCharacters(in: .whitespaces) }
        let words = t.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
        let upper = words.map { $0.uppercased() }
        func syntax(_ m: String) -> ParseError { ParseError(message: m + "; " + usage, sqlState: "42601") }
        func name(_ i: Int) -> String? { i < words.count ? words[i].trimmingCharacters(in: CharacterSet(charactersIn: "\"'")) : nil }
        guard let first = upper.first else { throw syntax("empty command") }
        switch (first, upper.count) {
        case ("SHOW", 2) where upper[1] == "ROUTES": return .showRoutes
        case ("SHOW", 2) where upper[1] == "SESSIONS": return .showSessions
        case ("SHOW", 2) where upper[1] == "STATS": return .showStats
        case ("SHOW", 2) where upper[1] == "BACKENDS": return .showBackends
        case ("SHOW", 2) where upper[1] == "CONFIG": return .showConfig
        case ("SHOW", 2) where upper[1] == "VERSION": return .showVersion
        case ("SHOW", 2) where upper[1] == "HELP": return .show(help: true)
        case ("SHOW", 2) where upper[1] == "DIVERGENCES": return .showDivergences(route: nil)
        case ("SHOW", 3) where upper[1] == "DIVERGENCES": return .showDivergences(route: name(2))
        case ("SET", 5), ("SET", 6):
            guard upper[3] == "TO", let route = name(2) else { throw syntax("expected SET PHASE|MIRROR <route> TO <value>") }
            let value = words[4].lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
            if upper[1] == "PHASE" {
                guard let phase = Phase(rawValue: value) else {
                    throw ParseError(message: "unknown phase \"\(value)\": use legacy, dual-legacy, dual-new or new", sqlState: "22023")
                }
                if upper.count == 6 && upper[5] != "FORCE" { throw syntax("unexpected \(words[5])") }
                return .setPhase(route: route, phase: phase, force: upper.count == 6)
            }
            if upper[1] == "MIRROR" && upper.count == 5 {
                guard let mode = MirrorMode(rawValue: value) else {
                    throw ParseError(message: "unknown mirror mode \"\(value)\": use async or sync", sqlState: "22023")
                }
                return .setMirror(route: route, mode: mode)
            }
            throw syntax("unknown SET command")
        case ("PAUSE", 2): return .pause(route: name(1)!, timeout: nil)
        case ("PAUSE", 3):
            guard let s = Double(words[2]), s.isFinite, s > 0, s <= 86_400 else {
                throw syntax("PAUSE timeout must be a number of seconds greater than 0 and at most 86400")
            }
            return .pause(route: name(1)!, timeout: s)
        case ("RESUME", 2): return .resume(route: name(1)!)
        case ("MARK", 5) where upper[1] == "IN" && upper[2] == "SYNC":
            guard let id = Int(words[4]), id > 0 else {
                throw syntax("MARK IN SYNC takes the route and the pause_id of the PAUSE (SHOW ROUTES) its clean verify ran under")
            }
            return .markInSync(route: name(3)!, pauseID: id)
        case ("RELOAD", 1): return .reload
        case ("CANCEL", 2), ("KILL", 2):
            guard let id = Int(words[1]), id > 0 else { throw syntax("\(first) takes a session id (the id column of SHOW SESSIONS)") }
            return first == "KILL" ? .kill(session: id) : .cancel(session: id)
        default: throw syntax("unknown command \"\(t)\"")
        }
    }
}

/// A result set of text columns, as the admin console sends it.
public struct AdminResult: Equatable, Sendable {
    public var columns: [String]
    public var rows: [[String?]]
    public var tag: String

    public init(columns: [String], rows: [[String?]], tag: String) { self.columns = columns; self.rows = rows; self.tag = tag }

    /// RowDescription (all `text`), DataRows, CommandComplete. ReadyForQuery is the caller's.
    public func encode(into w: inout ByteWriter) {
        if !columns.isEmpty {
            w.beginMessage(BackendMessageID.rowDescription.rawValue)
            w.writeInt16(Int16(columns.count))
            for c in columns {
                w.writeCString(c); w.writeInt32(0); w.writeInt16(0)
                w.writeInt32(25); w.writeInt16(-1); w.writeInt32(-1); w.writeInt16(0) // text, variable length, text format
            }
            w.endMessage()
            for row in rows {
                w.beginMessage(BackendMessageID.dataRow.rawValue)
                w.writeInt16(Int16(row.count))
                for v in row {
                    if let v { let b = Array(v.utf8); w.writeInt32(Int32(b.count)); w.writeBytes(b) } else { w.writeInt32(-1) }
                }
                w.endMessage()
            }
        }
        BackendMessage.commandComplete(tag: tag).encode(into: &w)
    }
}

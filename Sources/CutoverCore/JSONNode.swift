// libpg_query's JSON parse tree as a value to walk: what the mirroring rewrite reads of a statement.
import Foundation

/// One node of a parsed JSON document (an object, array, string, number or bool).
struct JSONNode {
    let value: Any

    static func parse(_ json: String) throws -> JSONNode {
        JSONNode(value: try JSONSerialization.jsonObject(with: Data(json.utf8), options: [.fragmentsAllowed]))
    }

    subscript(key: String) -> JSONNode? {
        guard let object = value as? [String: Any], let v = object[key] else { return nil }
        return JSONNode(value: v)
    }

    var array: [JSONNode] { (value as? [Any])?.map(JSONNode.init) ?? [] }
    var string: String? { value as? String }
    var int: Int? { (value as? NSNumber)?.intValue }
    var bool: Bool? { (value as? NSNumber)?.boolValue }

    /// Child nodes, in a stable order (object keys sorted): what a generic walk descends into.
    var children: [JSONNode] {
        if let object = value as? [String: Any] { return object.keys.sorted().map { JSONNode(value: object[$0]!) } }
        if let list = value as? [Any] { return list.map(JSONNode.init) }
        return []
    }

    /// An expression node's own `location` (`{"A_Const": {"location": 12, …}}` → 12).
    var location: Int? {
        if let l = self["location"]?.int { return l }
        guard let object = value as? [String: Any], object.count == 1, let inner = object.values.first as? [String: Any] else { return nil }
        return (inner["location"] as? NSNumber)?.intValue
    }

    /// Visits this node and every node below it, depth first, with the keys on the way down.
    func walk(_ visit: (JSONNode, [String]) -> Void) {
        func go(_ node: JSONNode, _ path: [String]) {
            visit(node, path)
            if let object = node.value as? [String: Any] {
                for key in object.keys.sorted() { go(JSONNode(value: object[key]!), path + [key]) }
            } else if let list = node.value as? [Any] {
                for item in list { go(JSONNode(value: item), path) }
            }
        }
        go(self, [])
    }
}

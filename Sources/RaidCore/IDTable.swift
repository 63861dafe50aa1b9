/// A key the core hands out itself, in order: member I/O IDs, request IDs, stripe units.
public protocol IDTableKey: Hashable, Comparable, Sendable {
    var tableKey: UInt64 { get }
}

extension UInt64: IDTableKey {
    @inlinable public var tableKey: UInt64 { self }
}

extension MemberIOID: IDTableKey {
    @inlinable public var tableKey: UInt64 { rawValue }
}

extension RequestID: IDTableKey {
    @inlinable public var tableKey: UInt64 { rawValue }
}

/// A table from a core-issued ID to what it stands for: the member I/Os in flight, the
/// requests waiting, the stripes active.
///
/// Why not `Dictionary`: it hashes every key with SipHash under a per-process seed, and every
/// member I/O was inserted and removed in two of them (the core's and its driver's), a request
/// in one, a stripe looked up several times per request: the hashing was 8 % of the simulator's
/// time and about a tenth of a 4 KiB write in the core alone. These keys come in order, so one
/// multiply spreads them (Fibonacci hashing); open addressing with linear probing, and removal
/// by shifting the following entries back (no tombstones, so a long run never degrades).
///
/// Bounds: at most half full (it doubles past that), never shrinks below its peak; the peak is
/// what its owner bounds (member I/Os in flight, requests admitted, `stripe_cache_size`).
/// Iteration is in slot order, which depends only on the sequence of inserts and removals (no
/// seed), yet callers that decide anything from order use `sortedByKey()`.
public struct IDTable<Key: IDTableKey, Value> {
    @usableFromInline var keys: [Key?]
    @usableFromInline var slots: [Value?]
    @usableFromInline var occupied = 0
    /// 64 - log2(capacity): the multiply's top bits index the slots.
    @usableFromInline var shift: UInt64

    @inlinable
    public init() {
        keys = [Key?](repeating: nil, count: 16)
        slots = [Value?](repeating: nil, count: 16)
        shift = 60
    }

    @inlinable public var count: Int { occupied }
    @inlinable public var isEmpty: Bool { occupied == 0 }

    @inlinable var mask: Int { keys.count - 1 }

    @inlinable
    func home(_ key: Key) -> Int { Int(truncatingIfNeeded: (key.tableKey &* 0x9E37_79B9_7F4A_7C15) >> shift) }

    /// The slot holding `key`, or nil.
    @inlinable
    func slot(of key: Key) -> Int? {
        var i = home(key)
        // At most half full: the probe meets an empty slot within `count + 1` steps.
        while let k = keys[i] {
            if k == key { return i }
            i = (i + 1) & mask
        }
        return nil
    }

    @inlinable
    public subscript(key: Key) -> Value? {
        get { slot(of: key).flatMap { slots[$0] } }
        set {
            if let newValue { updateValue(newValue, forKey: key) } else { removeValue(forKey: key) }
        }
    }

    /// Sets the value for `key`; returns the one it replaced.
    @inlinable
    @discardableResult
    public mutating func updateValue(_ value: consuming Value, forKey key: Key) -> Value? {
        // Values are moved in and out (`consuming`, `take()`), never copied: a copy of a value
        // holding references (a member I/O's buffer, a stripe) is a retain and a release, and
        // both tables of member I/Os see every I/O go in and out.
        if let i = slot(of: key) {
            let old = slots[i].take()
            slots[i] = consume value
            return old
        }
        if (occupied + 1) * 2 > keys.count { grow() }
        var i = home(key)
        while keys[i] != nil { i = (i + 1) & mask }
        keys[i] = key
        slots[i] = consume value
        occupied += 1
        return nil
    }

    @inlinable
    @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        guard var hole = slot(of: key) else { return nil }
        let removed = slots[hole].take()
        // Shift back each following entry whose home is not between the hole and itself
        // (cyclically), so every entry stays reachable from its home without tombstones.
        var next = (hole + 1) & mask
        while let k = keys[next] {
            let h = home(k)
            let stays = hole <= next ? (hole < h && h <= next) : (hole < h || h <= next)
            if !stays {
                keys[hole] = k
                slots[hole] = slots[next].take()
                hole = next
            }
            next = (next + 1) & mask
        }
        keys[hole] = nil
        slots[hole] = nil
        occupied -= 1
        return removed
    }

    @usableFromInline
    mutating func grow() {
        let oldKeys = keys
        let oldSlots = slots
        keys = [Key?](repeating: nil, count: oldKeys.count * 2)
        slots = [Value?](repeating: nil, count: oldKeys.count * 2)
        shift -= 1
        occupied = 0
        for i in oldKeys.indices {
            if let k = oldKeys[i], let v = oldSlots[i] { updateValue(v, forKey: k) }
        }
    }

    public mutating func removeAll() {
        for i in keys.indices where keys[i] != nil {
            keys[i] = nil
            slots[i] = nil
        }
        occupied = 0
    }

    /// The values in slot order: for sums and for checks that do not depend on order.
    public var values: [Value] { slots.compactMap { $0 } }

    /// Visits the values in slot order without copying them out (same caveat as `values`).
    @inlinable
    public func forEachValue(_ body: (Value) -> Void) {
        for case let v? in slots { body(v) }
    }

    /// The entries, lowest key first.
    public func sortedByKey() -> [(key: Key, value: Value)] {
        var entries: [(key: Key, value: Value)] = []
        entries.reserveCapacity(occupied)
        for i in keys.indices {
            if let k = keys[i], let v = slots[i] { entries.append((k, v)) }
        }
        entries.sort { $0.key < $1.key }
        return entries
    }
}

extension IDTable: Sendable where Value: Sendable {}

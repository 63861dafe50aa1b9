import TestSupport
import Testing
@testable import RaidMath

@Suite struct GF256Tests {
    @Test func exponentTableStartsAsMdFormatSays() {
        let expected: [UInt8] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1d, 0x3a, 0x74, 0xe8, 0xcd, 0x87, 0x13, 0x26]
        #expect(Array(GF256.exp[0..<16]) == expected)
        #expect(GF256.inv(0x02) == 0x8e)
    }

    @Test func inverseAndLogAreConsistent() {
        for a in 1...255 {
            let x = UInt8(a)
            #expect(GF256.mul(x, GF256.inv(x)) == 1)
            #expect(GF256.exp[Int(GF256.log[a])] == x)
            #expect(GF256.mul(x, 2) == GF256.mul2(x))
        }
    }

    @Test func multiplicationMatchesCarrylessReference() {
        for a in stride(from: 0, through: 255, by: 7) {
            for b in 0...255 {
                #expect(GF256.mul(UInt8(a), UInt8(b)) == GF256Reference.mul(UInt8(a), UInt8(b)))
            }
        }
    }
}

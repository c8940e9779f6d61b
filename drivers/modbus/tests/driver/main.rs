//! Tests of the Modbus TCP driver: `harness` against a scripted device in virtual time
//! (exact frames, every bad-input case), `live` in the real engine over real TCP
//! sockets against a real pymodbus server and the in-process simulator.

mod harness;
mod live;

/// A Modbus TCP ADU, written out independently of the driver's own encoder.
pub fn mbap(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let length = (pdu.len() + 1) as u16;
    let mut out = vec![
        (transaction >> 8) as u8,
        transaction as u8,
        0,
        0,
        (length >> 8) as u8,
        length as u8,
        unit,
    ];
    out.extend_from_slice(pdu);
    out
}

/// A read request (unit 1).
pub fn read(transaction: u16, function: u8, address: u16, count: u16) -> Vec<u8> {
    let [a0, a1] = address.to_be_bytes();
    let [c0, c1] = count.to_be_bytes();
    mbap(transaction, 1, &[function, a0, a1, c0, c1])
}

/// A register read's reply (unit 1).
pub fn registers(transaction: u16, function: u8, values: &[u16]) -> Vec<u8> {
    let mut pdu = vec![function, (values.len() * 2) as u8];
    for v in values {
        pdu.extend_from_slice(&v.to_be_bytes());
    }
    mbap(transaction, 1, &pdu)
}

/// A bit read's reply (unit 1): the packed bytes, bit 0 first.
pub fn bits(transaction: u16, function: u8, packed: &[u8]) -> Vec<u8> {
    let mut pdu = vec![function, packed.len() as u8];
    pdu.extend_from_slice(packed);
    mbap(transaction, 1, &pdu)
}

/// An exception reply (unit 1).
pub fn exception(transaction: u16, function: u8, code: u8) -> Vec<u8> {
    mbap(transaction, 1, &[function | 0x80, code])
}

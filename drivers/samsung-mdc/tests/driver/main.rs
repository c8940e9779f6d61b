//! The Samsung MDC driver's tests, in two tiers:
//!
//! - `harness`: the component against a scripted display in virtual time, with exact
//!   bytes (checksums computed here, independently of the driver) and every bad-input
//!   case (garbage, bad checksums, split and coalesced replies, NAKs, silence, the
//!   secured-protocol banner);
//! - `live`: the component in the real engine against `lintel_simulators::samsung_mdc`
//!   served on a real loopback TCP port.

mod harness;
mod live;

/// The sum of `bytes` modulo 256, computed the long way (not with the driver's code).
pub fn sum(bytes: &[u8]) -> u8 {
    (bytes.iter().map(|&b| u32::from(b)).sum::<u32>() % 256) as u8
}

/// A command frame: `0xAA cmd id len data.. checksum`.
pub fn command(cmd: u8, id: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0xAA, cmd, id, data.len() as u8];
    f.extend_from_slice(data);
    f.push(sum(&f[1..]));
    f
}

/// An ACK reply: `0xAA 0xFF id len 'A' rcmd values.. checksum`.
pub fn ack(id: u8, rcmd: u8, values: &[u8]) -> Vec<u8> {
    let mut f = vec![0xAA, 0xFF, id, values.len() as u8 + 2, b'A', rcmd];
    f.extend_from_slice(values);
    f.push(sum(&f[1..]));
    f
}

/// A NAK reply with an error code.
pub fn nak(id: u8, rcmd: u8, code: u8) -> Vec<u8> {
    let mut f = vec![0xAA, 0xFF, id, 3, b'N', rcmd, code];
    f.push(sum(&f[1..]));
    f
}

/// `frame` with its checksum off by one.
pub fn corrupt(mut frame: Vec<u8>) -> Vec<u8> {
    let last = frame.len() - 1;
    frame[last] = frame[last].wrapping_add(1);
    frame
}

//! Tests of the BACnet/IP driver: `harness` against a scripted device in virtual time
//! (exact datagrams, every bad-input case), `live` in the real engine over real UDP
//! sockets against a real bacpypes3 device (`lintel_testkit::bacnet::BacnetDevice`).

mod harness;
mod live;

/// Object types used in the tests (ASHRAE 135 `BACnetObjectType`).
pub const ANALOG_INPUT: u32 = 0;
pub const ANALOG_VALUE: u32 = 2;
pub const BINARY_INPUT: u32 = 3;
pub const DEVICE: u32 = 8;
pub const MULTI_STATE_VALUE: u32 = 19;
/// Properties used in the tests.
pub const PRESENT_VALUE: u8 = 85;
pub const OBJECT_NAME: u8 = 77;

/// A BVLL Original-Unicast-NPDU around `npdu`, written out independently of the driver.
pub fn bvll(npdu: &[u8]) -> Vec<u8> {
    let length = (npdu.len() + 4) as u16;
    let mut out = vec![0x81, 0x0A, (length >> 8) as u8, length as u8];
    out.extend_from_slice(npdu);
    out
}

fn oid(kind: u32, instance: u32) -> [u8; 4] {
    ((kind << 22) | instance).to_be_bytes()
}

/// The driver's ReadProperty request: NPDU expecting a reply, Confirmed-Request, max APDU
/// 1476, `invoke`, readProperty (12), [0] object, [1] property (one octet).
pub fn read_request(invoke: u8, kind: u32, instance: u32, property: u8) -> Vec<u8> {
    let o = oid(kind, instance);
    bvll(&[
        0x01, 0x04, 0x00, 0x05, invoke, 12, 0x0C, o[0], o[1], o[2], o[3], 0x19, property,
    ])
}

/// A ReadProperty Complex-ACK carrying `value` (application-tagged octets).
pub fn ack(invoke: u8, kind: u32, instance: u32, property: u8, value: &[u8]) -> Vec<u8> {
    let o = oid(kind, instance);
    let mut npdu = vec![
        0x01, 0x00, 0x30, invoke, 12, 0x0C, o[0], o[1], o[2], o[3], 0x19, property, 0x3E,
    ];
    npdu.extend_from_slice(value);
    npdu.push(0x3F);
    bvll(&npdu)
}

/// An Error PDU for readProperty.
pub fn error_pdu(invoke: u8, class: u8, code: u8) -> Vec<u8> {
    bvll(&[0x01, 0x00, 0x50, invoke, 12, 0x91, class, 0x91, code])
}

/// A Reject PDU.
pub fn reject(invoke: u8, reason: u8) -> Vec<u8> {
    bvll(&[0x01, 0x00, 0x60, invoke, reason])
}

/// An Abort PDU from the server.
pub fn abort(invoke: u8, reason: u8) -> Vec<u8> {
    bvll(&[0x01, 0x00, 0x71, invoke, reason])
}

/// Application-tagged values.
pub fn real(v: f32) -> Vec<u8> {
    let mut out = vec![0x44];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

pub fn double(v: f64) -> Vec<u8> {
    let mut out = vec![0x55, 8];
    out.extend_from_slice(&v.to_be_bytes());
    out
}

pub fn unsigned(v: u16) -> Vec<u8> {
    if v < 256 {
        vec![0x21, v as u8]
    } else {
        vec![0x22, (v >> 8) as u8, v as u8]
    }
}

pub fn signed(v: i8) -> Vec<u8> {
    vec![0x31, v as u8]
}

pub fn enumerated(v: u8) -> Vec<u8> {
    vec![0x91, v]
}

pub fn boolean(v: bool) -> Vec<u8> {
    vec![if v { 0x11 } else { 0x10 }]
}

/// A CharacterString in UTF-8 (character set 0).
pub fn text(s: &str) -> Vec<u8> {
    let len = s.len() + 1;
    let mut out = if len <= 4 {
        vec![0x70 | len as u8]
    } else {
        vec![0x75, len as u8]
    };
    out.push(0);
    out.extend_from_slice(s.as_bytes());
    out
}

/// The driver's ReadPropertyMultiple request (service 14): one read access specification
/// per (type, instance, property).
pub fn rpm_request(invoke: u8, asked: &[(u32, u32, u8)]) -> Vec<u8> {
    let mut npdu = vec![0x01, 0x04, 0x00, 0x05, invoke, 14];
    for (kind, instance, property) in asked {
        npdu.push(0x0C);
        npdu.extend_from_slice(&oid(*kind, *instance));
        npdu.extend_from_slice(&[0x1E, 0x09, *property, 0x1F]);
    }
    bvll(&npdu)
}

/// One result of a ReadPropertyMultiple-ACK: type, instance, property and a value
/// (application-tagged octets) or an error (class, code).
pub type RpmResult = (u32, u32, u8, Result<Vec<u8>, (u8, u8)>);

/// A ReadPropertyMultiple-ACK.
pub fn rpm_ack(invoke: u8, results: &[RpmResult]) -> Vec<u8> {
    let mut npdu = vec![0x01, 0x00, 0x30, invoke, 14];
    for (kind, instance, property, result) in results {
        npdu.push(0x0C);
        npdu.extend_from_slice(&oid(*kind, *instance));
        npdu.extend_from_slice(&[0x1E, 0x29, *property]);
        match result {
            Ok(value) => {
                npdu.push(0x4E);
                npdu.extend_from_slice(value);
                npdu.push(0x4F);
            }
            Err((class, code)) => npdu.extend_from_slice(&[0x5E, 0x91, *class, 0x91, *code, 0x5F]),
        }
        npdu.push(0x1F);
    }
    bvll(&npdu)
}

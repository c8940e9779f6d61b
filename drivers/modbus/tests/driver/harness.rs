//! Harness tier: the driver against a scripted Modbus TCP device in virtual time.

use crate::{bits, exception, mbap, read, registers};
use lintel_driver_harness::{Harness, LogLevel, Value, json};
use std::time::Duration;

/// 2026-01-01T00:00Z: the harness's virtual clock at start, in Unix ms.
const VIRTUAL_EPOCH_MS: u64 = 1_767_225_600_000;

fn start(settings: Value) -> Harness {
    Harness::builder(lintel_bundled_drivers::MODBUS.component.to_vec())
        .settings(settings)
        .start()
        .expect("the driver starts")
}

/// The driver with `settings`, connected to a device answering `script` in order.
fn connected_with(settings: Value, script: &[(Vec<u8>, Vec<u8>)]) -> Harness {
    let mut h = start(settings);
    for (request, reply) in script {
        h.expect(request).respond(reply);
    }
    h.connect();
    h.assert_script_done();
    h
}

/// The first poll of the default room sensor: 21.5 °C, 45.0 %, 612 ppm, occupied.
fn first_poll() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (read(1, 0x04, 0, 3), registers(1, 0x04, &[215, 450, 612])),
        (read(2, 0x02, 0, 1), bits(2, 0x02, &[0x01])),
    ]
}

fn connected() -> Harness {
    connected_with(json!({}), &first_poll())
}

fn warned(h: &mut Harness, needle: &str) -> bool {
    h.logs()
        .iter()
        .any(|l| matches!(l.level, LogLevel::Warn | LogLevel::Error) && l.message.contains(needle))
}

fn last_error(h: &Harness) -> String {
    match h.status("last_error") {
        Some(Value::String(s)) => s,
        other => panic!("last_error is {other:?}, expected an error"),
    }
}

#[test]
fn polls_the_default_room_sensor_on_connect() {
    let mut h = start(json!({}));
    // Exact frames: read input registers 0..=2 of unit 1, then discrete input 0.
    h.expect(&[0, 1, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 3])
        .respond(&[0, 1, 0, 0, 0, 9, 1, 0x04, 6, 0, 215, 1, 0xC2, 2, 0x64]);
    h.expect(&[0, 2, 0, 0, 0, 6, 1, 0x02, 0, 0, 0, 1])
        .respond(&[0, 2, 0, 0, 0, 4, 1, 0x02, 1, 1]);
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("humidity"), Some(json!(45.0)));
    assert_eq!(h.status("co2"), Some(json!(612)));
    assert_eq!(h.status("occupancy"), Some(json!(true)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("last_read"), Some(json!(VIRTUAL_EPOCH_MS)));
    assert_eq!(
        h.status("units"),
        Some(json!({"temperature": "°C", "humidity": "%", "co2": "ppm"}))
    );
    assert_eq!(h.error(), None);
}

#[test]
fn polls_every_period_and_stops_when_disconnected() {
    let mut h = connected_with(json!({"poll_every_ms": 2000}), &first_poll());
    h.advance(Duration::from_millis(1999));
    assert_eq!(h.written().len(), 2, "no poll before its period");
    h.expect(&read(3, 0x04, 0, 3))
        .respond(&registers(3, 0x04, &[0xFFEC, 451, 700]));
    h.expect(&read(4, 0x02, 0, 1)).respond(&bits(4, 0x02, &[0]));
    h.advance(Duration::from_millis(1));
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(-2.0)));
    assert_eq!(h.status("co2"), Some(json!(700)));
    assert_eq!(h.status("occupancy"), Some(json!(false)));
    assert_eq!(h.status("last_read"), Some(json!(VIRTUAL_EPOCH_MS + 2000)));

    h.disconnect();
    h.advance(Duration::from_millis(20_000));
    assert_eq!(h.written().len(), 4, "no polls while disconnected");
}

#[test]
fn decodes_signed_32_bit_float_word_order_scale_and_offset() {
    let points = json!([
        {"key": "neg", "table": "holding", "address": 0, "type": "i16", "scale": 0.1},
        {"key": "big32", "table": "holding", "address": 1, "type": "u32"},
        {"key": "little32", "table": "holding", "address": 3, "type": "u32", "word_order": "little"},
        {"key": "i32", "table": "holding", "address": 5, "type": "i32"},
        {"key": "f32", "table": "holding", "address": 7, "type": "f32"},
        {"key": "f32le", "table": "holding", "address": 9, "type": "f32", "word_order": "little"},
        {"key": "offset", "table": "holding", "address": 11, "scale": 0.5, "offset": -40}
    ]);
    let regs = [
        0xFFC9, 0x0001, 0x0002, 0x0002, 0x0001, 0xFFFF, 0xFFFE, 0x41AC, 0x0000, 0x0000, 0x41AC, 130,
    ];
    // Unit 17; the seven points are read together: 12 holding registers from 0.
    let h = connected_with(
        json!({"unit_id": 17, "points": points}),
        &[(
            mbap(1, 17, &[0x03, 0, 0, 0, 12]),
            mbap(1, 17, &{
                let mut pdu = vec![0x03, 24];
                regs.iter()
                    .for_each(|r: &u16| pdu.extend_from_slice(&r.to_be_bytes()));
                pdu
            }),
        )],
    );
    assert_eq!(h.status("neg"), Some(json!(-5.5)));
    assert_eq!(h.status("big32"), Some(json!(65538)));
    assert_eq!(h.status("little32"), Some(json!(65538)));
    assert_eq!(h.status("i32"), Some(json!(-2)));
    assert_eq!(h.status("f32"), Some(json!(21.5)));
    assert_eq!(h.status("f32le"), Some(json!(21.5)));
    assert_eq!(h.status("offset"), Some(json!(25.0)));
    assert_eq!(h.status("units"), Some(json!({})));
}

#[test]
fn reads_coils_and_discrete_inputs_bit_by_bit() {
    let points = json!([
        {"key": "window", "table": "discrete", "address": 10},
        {"key": "relay", "table": "coil", "address": 3},
        {"key": "door", "table": "discrete", "address": 9, "type": "bool"}
    ]);
    let h = connected_with(
        json!({"points": points}),
        &[
            (read(1, 0x01, 3, 1), bits(1, 0x01, &[0x01])),
            (read(2, 0x02, 9, 2), bits(2, 0x02, &[0b10])),
        ],
    );
    assert_eq!(h.status("relay"), Some(json!(true)));
    assert_eq!(h.status("door"), Some(json!(false)));
    assert_eq!(h.status("window"), Some(json!(true)));
}

#[test]
fn exception_replies_are_clear_errors_and_the_queue_moves_on() {
    let mut h = connected_with(
        json!({}),
        &[
            (read(1, 0x04, 0, 3), exception(1, 0x04, 0x02)),
            (read(2, 0x02, 0, 1), bits(2, 0x02, &[0x01])),
        ],
    );
    let e = last_error(&h);
    assert!(
        e.contains("unit 1 refused to read input registers 0..=2 (temperature, humidity, co2)")
            && e.contains("exception 2 (illegal data address)"),
        "{e}"
    );
    assert!(warned(&mut h, "exception 2 (illegal data address)"));
    assert_eq!(h.status("temperature"), None);
    assert_eq!(
        h.status("occupancy"),
        Some(json!(true)),
        "the next read went out"
    );

    // A gateway exception answers the call with the reason.
    h.expect(&read(3, 0x04, 2, 1))
        .respond(&exception(3, 0x04, 0x0B));
    let e = h.exec("read", json!(["co2"])).unwrap_err();
    assert!(
        e.contains("exception 11 (gateway target device failed to respond)"),
        "{e}"
    );
    assert_eq!(last_error(&h), e);
    h.assert_script_done();
}

#[test]
fn a_reply_with_a_wrong_transaction_id_is_ignored_and_the_request_resent() {
    let mut h = start(json!({}));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(99, 0x04, &[1, 2, 3]));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(1, 0x04, &[215, 450, 612]));
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    assert_eq!(h.status("temperature"), None, "the stray reply is not used");
    assert!(warned(&mut h, "transaction id 99 (waiting for: 1)"));
    h.advance(Duration::from_millis(1000)); // the timeout: resent
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn a_wrong_protocol_id_is_garbage_dropped_and_asked_again() {
    let mut h = start(json!({}));
    let mut bad = registers(1, 0x04, &[215, 450, 612]);
    bad[3] = 1; // protocol id 1
    h.expect(&read(1, 0x04, 0, 3)).respond(&bad);
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(1, 0x04, &[215, 450, 612]));
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.assert_script_done(); // resent at once, no timeout needed
    assert_eq!(h.now_ms(), 0);
    assert!(warned(
        &mut h,
        "garbage from the device: protocol id 1 is not 0 (Modbus); dropped 15 bytes"
    ));
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    // The poll that followed succeeded in full: the error is cleared.
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn garbage_until_the_retries_run_out_fails_the_read_with_the_reason() {
    let mut h = start(json!({"retries": 1}));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    h.expect(&read(1, 0x04, 0, 3))
        .respond(b"\xff\xff\xff\xff\xff\xff\xff\xff");
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.assert_script_done();
    let e = last_error(&h);
    assert!(
        e.starts_with("read input registers 0..=2 (temperature, humidity, co2) failed: ")
            && e.contains("after 2 attempt(s)")
            && e.contains("garbage from the device: protocol id 65535 is not 0"),
        "{e}"
    );
    assert!(warned(&mut h, "protocol id 21584 is not 0")); // "TP" of "HTTP"
    assert_eq!(
        h.status("occupancy"),
        Some(json!(true)),
        "not a stuck queue"
    );
    assert_eq!(h.error(), None, "no trap");
}

#[test]
fn length_mismatches_and_wrong_functions_are_malformed_replies() {
    let mut h = start(json!({}));
    // The MBAP length frames 6 data bytes but the byte count says 4.
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&mbap(1, 1, &[0x04, 4, 0, 215, 1, 0xC2, 2, 0x64]));
    // Two registers instead of three.
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(1, 0x04, &[215, 450]));
    // A holding-register reply to an input-register read.
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(1, 0x03, &[215, 450, 612]));
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.assert_script_done();
    assert!(warned(
        &mut h,
        "6 data bytes for 3 registers (byte count 4), expected 6"
    ));
    assert!(warned(
        &mut h,
        "4 data bytes for 3 registers (byte count 4), expected 6"
    ));
    assert!(warned(
        &mut h,
        "the reply's function 0x03 is not the request's 0x04"
    ));
    let e = last_error(&h);
    assert!(
        e.contains("failed: the driver asked to retry after 3 attempt(s)")
            && e.contains("last problem: malformed reply"),
        "{e}"
    );
    assert_eq!(h.status("temperature"), None);
}

#[test]
fn a_frame_split_across_reads_is_reassembled() {
    let reply = registers(1, 0x04, &[215, 450, 612]);
    let mut h = start(json!({}));
    h.expect(&read(1, 0x04, 0, 3)).respond(&reply[..3]); // inside the header
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    assert_eq!(h.written().len(), 1, "still waiting for the rest");
    h.device_sends(&reply[3..9]);
    assert_eq!(h.status("temperature"), None);
    h.device_sends(&reply[9..]);
    h.assert_script_done();
    assert_eq!(h.status("co2"), Some(json!(612)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn two_frames_in_one_read_are_both_framed() {
    // A late reply to an earlier request and the answer, in one read.
    let mut both = registers(7, 0x04, &[1, 2, 3]);
    both.extend_from_slice(&registers(1, 0x04, &[215, 450, 612]));
    // Then the next answer arrives together with the first bytes of a stray frame.
    let mut next = bits(2, 0x02, &[1]);
    next.extend_from_slice(&registers(9, 0x04, &[1, 2, 3])[..5]);
    let mut h = connected_with(
        json!({}),
        &[(read(1, 0x04, 0, 3), both), (read(2, 0x02, 0, 1), next)],
    );
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("occupancy"), Some(json!(true)));
    assert!(warned(&mut h, "transaction id 7"));
    // The stray partial frame is dropped after half the timeout.
    h.advance(Duration::from_millis(500));
    assert!(last_error(&h).contains("incomplete frame from the device: 5 bytes"));
}

#[test]
fn an_incomplete_frame_is_dropped_and_the_request_resent() {
    let reply = registers(1, 0x04, &[215, 450, 612]);
    let mut h = start(json!({"timeout_ms": 1000}));
    h.expect(&read(1, 0x04, 0, 3)).respond(&reply[..9]);
    h.expect(&read(1, 0x04, 0, 3)).respond(&reply);
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.advance(Duration::from_millis(499));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    h.advance(Duration::from_millis(1));
    let e = last_error(&h);
    assert!(
        e.contains("incomplete frame from the device: 9 bytes (00 01 00 00 00 09 01 04 06) not completed within 500 ms; dropped"),
        "{e}"
    );
    h.advance(Duration::from_millis(500)); // the timeout: resent, answered in full
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn a_silent_device_times_out_then_recovers() {
    let mut h = start(json!({"timeout_ms": 1000, "retries": 2}));
    for _ in 0..3 {
        h.expect(&read(1, 0x04, 0, 3)).silently();
    }
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.advance(Duration::from_millis(2999));
    assert_eq!(h.written().len(), 3, "sent and resent twice");
    assert_eq!(h.status("last_error"), Some(Value::Null));
    h.advance(Duration::from_millis(1));
    h.assert_script_done();
    let e = last_error(&h);
    assert_eq!(
        e,
        "read input registers 0..=2 (temperature, humidity, co2) failed: no answer within 1000 ms after 3 attempt(s)"
    );
    assert!(warned(&mut h, "no answer within 1000 ms"));
    assert_eq!(
        h.status("occupancy"),
        Some(json!(true)),
        "the queue moved on"
    );

    // The device answers again at the next poll (5 s after connecting).
    h.expect(&read(3, 0x04, 0, 3))
        .respond(&registers(3, 0x04, &[215, 450, 612]));
    h.expect(&read(4, 0x02, 0, 1)).respond(&bits(4, 0x02, &[0]));
    h.advance(Duration::from_millis(2000));
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn a_poll_is_not_queued_twice_while_the_last_one_waits() {
    let mut h = start(json!({"poll_every_ms": 100, "timeout_ms": 1000, "retries": 0}));
    h.expect(&read(1, 0x04, 0, 3)).silently();
    h.connect();
    // Ten periods pass while the first read waits: no pile-up of reads.
    h.advance(Duration::from_millis(999));
    assert_eq!(h.written().len(), 1);
    h.assert_script_done();
}

#[test]
fn the_frame_length_is_bounded() {
    let mut h = start(json!({}));
    // The longest ADU (260 bytes, MBAP length 254) is framed: a malformed read reply.
    let longest = mbap(1, 1, &[vec![0x04, 250], vec![0; 251]].concat());
    assert_eq!(longest.len(), 260);
    h.expect(&read(1, 0x04, 0, 3)).respond(&longest);
    // One byte longer is not Modbus TCP.
    let mut too_long = mbap(1, 1, &[vec![0x04, 250], vec![0; 252]].concat());
    assert_eq!(&too_long[4..6], &[0, 255]);
    too_long.truncate(20);
    h.expect(&read(1, 0x04, 0, 3)).respond(&too_long);
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(1, 0x04, &[215, 450, 612]));
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.assert_script_done();
    assert!(warned(
        &mut h,
        "251 data bytes for 3 registers (byte count 250)"
    ));
    assert!(warned(
        &mut h,
        "garbage from the device: MBAP length 255 is outside 2..=254; dropped 20 bytes"
    ));
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
}

/// The engine delivers up to 64 KiB of a raw stream at once.
const MAX_READ: usize = 64 * 1024;

/// Frames of `frame(i)` as many as fit in one 64 KiB read with `room` bytes left over.
fn burst(room: usize, frame: impl Fn(u16) -> Vec<u8>) -> (Vec<u8>, usize) {
    let size = frame(0).len();
    let n = (MAX_READ - room) / size;
    let bytes: Vec<u8> = (0..n).flat_map(|i| frame(i as u16)).collect();
    (bytes, n)
}

fn warnings(h: &mut Harness) -> Vec<String> {
    h.logs()
        .iter()
        .filter(|l| matches!(l.level, LogLevel::Warn | LogLevel::Error))
        .map(|l| l.message.clone())
        .collect()
}

#[test]
fn a_64_kib_read_of_small_stale_frames_is_handled_in_one_pass() {
    let reply = registers(1, 0x04, &[215, 450, 612]);
    // The shortest frames (MBAP length 2: a unit id and a function code) with transaction
    // ids that answer nothing, then the awaited reply, all in one read.
    let (mut read_bytes, n) = burst(reply.len(), |i| mbap(1000 + i, 1, &[0x04]));
    read_bytes.extend_from_slice(&reply);
    assert!(read_bytes.len() <= MAX_READ && n > 8000, "{n} frames");
    let mut h = connected_with(
        json!({}),
        &[
            (read(1, 0x04, 0, 3), read_bytes),
            (read(2, 0x02, 0, 1), bits(2, 0x02, &[1])),
        ],
    );
    assert_eq!(h.error(), None, "no trap (the time budget held)");
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("occupancy"), Some(json!(true)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    // One line for the whole read, not one per frame.
    let w = warnings(&mut h);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        w[0],
        format!(
            "ignored {n} replies that answer no waiting request (transaction ids 1000, 1001, 1002, 1003, …; waiting for: 1); the first: 03 e8 00 00 00 02 01 04"
        )
    );
    // Nothing is left over: the next poll is framed from a clean buffer.
    h.expect(&read(3, 0x04, 0, 3))
        .respond(&registers(3, 0x04, &[220, 450, 612]));
    h.expect(&read(4, 0x02, 0, 1)).respond(&bits(4, 0x02, &[1]));
    h.advance(Duration::from_millis(5000));
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(22.0)));
}

#[test]
fn a_64_kib_read_of_malformed_replies_is_one_retry_and_two_log_lines() {
    // Replies to the waiting request with the wrong function code, a whole read of them.
    let (read_bytes, n) = burst(0, |_| registers(1, 0x03, &[215, 450, 612]));
    let mut h = start(json!({}));
    h.expect(&read(1, 0x04, 0, 3)).respond(&read_bytes);
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(1, 0x04, &[215, 450, 612]));
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.assert_script_done(); // asked again once, at once
    assert_eq!(h.now_ms(), 0);
    assert_eq!(h.error(), None);
    let w = warnings(&mut h);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("malformed reply to read input registers 0..=2 (temperature, humidity, co2): the reply's function 0x03 is not the request's 0x04"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with(&format!(
            "{} more refused replies to the same request in one read; the latest: malformed reply",
            n - 1
        )),
        "{w:?}"
    );
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn a_later_frame_in_the_same_read_does_not_override_an_answer() {
    // A good answer, then a malformed duplicate with the same transaction id: the answer
    // stands (no resend) and the duplicate is ignored.
    let mut read_bytes = registers(1, 0x04, &[215, 450, 612]);
    read_bytes.extend_from_slice(&registers(1, 0x04, &[1, 2]));
    let mut h = connected_with(
        json!({}),
        &[
            (read(1, 0x04, 0, 3), read_bytes),
            (read(2, 0x02, 0, 1), bits(2, 0x02, &[1])),
        ],
    );
    assert_eq!(h.written().len(), 2, "not resent");
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert!(warned(
        &mut h,
        "ignored a reply with transaction id 1 (waiting for: 1)"
    ));

    // An exception, then a good reply with the same id: the failure stands.
    let mut read_bytes = exception(3, 0x04, 0x02);
    read_bytes.extend_from_slice(&registers(3, 0x04, &[9]));
    h.expect(&read(3, 0x04, 2, 1)).respond(&read_bytes);
    let e = h.exec("read", json!(["co2"])).unwrap_err();
    assert!(e.contains("exception 2 (illegal data address)"), "{e}");
    assert_eq!(
        h.status("co2"),
        Some(json!(612)),
        "the late reply is not used"
    );
    assert_eq!(last_error(&h), e);
    h.assert_script_done();
}

#[test]
fn busy_and_acknowledge_exceptions_are_asked_again() {
    let mut h = start(json!({}));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&exception(1, 0x04, 0x06));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&exception(1, 0x04, 0x05));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&registers(1, 0x04, &[215, 450, 612]));
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.assert_script_done();
    assert_eq!(h.now_ms(), 0, "asked again at once");
    assert!(warned(
        &mut h,
        "unit 1 could not read input registers 0..=2 (temperature, humidity, co2) yet: exception 6 (server device busy); asking again"
    ));
    assert!(warned(&mut h, "exception 5 (acknowledge); asking again"));
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));

    // Busy until the retries run out: the call fails with the reason.
    let mut h = start(json!({"retries": 1}));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&exception(1, 0x04, 0x06));
    h.expect(&read(1, 0x04, 0, 3))
        .respond(&exception(1, 0x04, 0x06));
    h.expect(&read(2, 0x02, 0, 1)).respond(&bits(2, 0x02, &[1]));
    h.connect();
    h.assert_script_done();
    let e = last_error(&h);
    assert_eq!(
        e,
        "read input registers 0..=2 (temperature, humidity, co2) failed: the driver asked to retry after 2 attempt(s) (last problem: unit 1 could not read input registers 0..=2 (temperature, humidity, co2) yet: exception 6 (server device busy); asking again)"
    );
}

fn writable_settings() -> Value {
    json!({"points": [
        {"key": "co2", "table": "input", "address": 2},
        {"key": "setpoint", "table": "holding", "address": 10, "type": "i16", "scale": 0.1, "unit": "°C", "writable": true},
        {"key": "limit", "table": "holding", "address": 20, "type": "f32", "writable": true},
        {"key": "relay", "table": "coil", "address": 0, "writable": true}
    ]})
}

fn connected_writable() -> Harness {
    connected_with(
        writable_settings(),
        &[
            (read(1, 0x04, 2, 1), registers(1, 0x04, &[612])),
            (read(2, 0x03, 10, 1), registers(2, 0x03, &[210])),
            (read(3, 0x03, 20, 2), registers(3, 0x03, &[0x41AC, 0])),
            (read(4, 0x01, 0, 1), bits(4, 0x01, &[0])),
        ],
    )
}

#[test]
fn read_answers_a_fresh_value() {
    let mut h = connected_writable();
    assert_eq!(h.status("setpoint"), Some(json!(21.0)));
    h.expect(&read(5, 0x04, 2, 1))
        .respond(&registers(5, 0x04, &[640]));
    assert_eq!(h.exec("read", json!(["co2"])), Ok(json!(640)));
    assert_eq!(h.status("co2"), Some(json!(640)));
    let e = h.exec("read", json!(["nope"])).unwrap_err();
    assert_eq!(e, "no point `nope` in the register map");
    h.assert_script_done();
}

#[test]
fn write_sends_exact_frames_and_answers_once_confirmed() {
    let mut h = connected_writable();
    // 22.5 °C at scale 0.1: 225 with function 0x06.
    let w = mbap(5, 1, &[0x06, 0, 10, 0, 225]);
    h.expect(&w).respond(&w);
    assert_eq!(h.exec("write", json!(["setpoint", 22.5])), Ok(json!(22.5)));
    assert_eq!(h.status("setpoint"), Some(json!(22.5)));
    // An f32 takes two registers: function 0x10.
    h.expect(&mbap(6, 1, &[0x10, 0, 20, 0, 2, 4, 0x41, 0xC8, 0, 0]))
        .respond(&mbap(6, 1, &[0x10, 0, 20, 0, 2]));
    assert_eq!(h.exec("write", json!(["limit", 25])), Ok(json!(25.0)));
    // A coil: function 0x05 with 0xFF00.
    let c = mbap(7, 1, &[0x05, 0, 0, 0xFF, 0]);
    h.expect(&c).respond(&c);
    assert_eq!(h.exec("write", json!(["relay", true])), Ok(json!(true)));
    assert_eq!(h.status("relay"), Some(json!(true)));
    h.assert_script_done();
}

#[test]
fn write_refusals_reach_no_device() {
    let mut h = connected_writable();
    let before = h.written().len();
    let cases = [
        (json!(["co2", 5]), "point `co2` is not writable"),
        (json!(["nope", 5]), "no point `nope` in the register map"),
        (
            json!(["setpoint", 4000]),
            "`setpoint`: 4000 is out of range",
        ),
        (
            json!(["setpoint", true]),
            "`setpoint` is a register: write a number",
        ),
        (
            json!(["relay", 2]),
            "`relay` is a coil: write true or false, not 2",
        ),
    ];
    for (args, want) in cases {
        let e = h.exec("write", args.clone()).unwrap_err();
        assert!(e.contains(want), "{args}: {e}");
    }
    let e = h.exec("write", json!(["setpoint", "hot"])).unwrap_err();
    assert!(e.contains("value"), "{e}");
    assert_eq!(h.written().len(), before);
    h.assert_script_done();
}

#[test]
fn a_write_that_is_not_echoed_is_resent_and_an_exception_fails_it() {
    let mut h = connected_writable();
    let w = mbap(5, 1, &[0x06, 0, 10, 0, 200]);
    h.expect(&w).respond(&mbap(5, 1, &[0x06, 0, 10, 0, 201]));
    h.expect(&w).respond(&w);
    assert_eq!(h.exec("write", json!(["setpoint", 20])), Ok(json!(20.0)));
    assert!(warned(&mut h, "it does not echo the request"));

    h.expect(&mbap(6, 1, &[0x06, 0, 10, 1, 44]))
        .respond(&exception(6, 0x06, 0x03));
    let e = h.exec("write", json!(["setpoint", 30])).unwrap_err();
    assert_eq!(
        e,
        "unit 1 refused to write holding registers 10 (`setpoint`): exception 3 (illegal data value)"
    );
    assert_eq!(h.status("setpoint"), Some(json!(20.0)), "unchanged");
    h.assert_script_done();
}

#[test]
fn a_disconnect_answers_waiting_calls_and_keeps_last_error_for_the_device() {
    let mut h = connected();
    h.expect(&read(3, 0x04, 2, 1)).silently();
    let mut pending = h.exec_later("read", json!(["co2"])).unwrap();
    h.disconnect();
    assert_eq!(pending.result(), Err("the device disconnected".into()));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    h.advance(Duration::from_millis(20_000));
    assert_eq!(h.written().len(), 3);
    assert_eq!(h.error(), None);

    // Reconnected: polling starts again with fresh transaction ids.
    h.expect(&read(4, 0x04, 0, 3))
        .respond(&registers(4, 0x04, &[220, 450, 612]));
    h.expect(&read(5, 0x02, 0, 1)).respond(&bits(5, 0x02, &[1]));
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(22.0)));
}

#[test]
fn poll_now_reads_every_point() {
    let mut h = connected();
    h.expect(&read(3, 0x04, 0, 3))
        .respond(&registers(3, 0x04, &[230, 450, 612]));
    h.expect(&read(4, 0x02, 0, 1)).respond(&bits(4, 0x02, &[0]));
    assert_eq!(h.exec("poll_now", json!([])), Ok(json!(2)));
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(23.0)));
    assert_eq!(h.status("occupancy"), Some(json!(false)));
}

#[test]
fn settings_are_validated_with_errors_naming_the_point() {
    let p = |extra: Value| {
        let mut point = json!({"key": "t", "table": "input", "address": 0});
        point
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        point
    };
    let many: Vec<Value> = (0..33)
        .map(|i| json!({"key": format!("p{i}"), "table": "input", "address": i}))
        .collect();
    let cases = [
        (json!({"unit_id": 256}), "unit_id must be 0..=255, got 256"),
        (
            json!({"poll_every_ms": 10}),
            "poll_every_ms must be 100..=3600000, got 10",
        ),
        (
            json!({"timeout_ms": 10}),
            "timeout_ms must be 50..=60000, got 10",
        ),
        (json!({"retries": 11}), "retries must be 0..=10, got 11"),
        (
            json!({"points": []}),
            "points must hold 1..=32 points, got 0",
        ),
        (
            json!({"points": many}),
            "points must hold 1..=32 points, got 33",
        ),
        (
            json!({"points": [p(json!({})), p(json!({"address": 1}))]}),
            "point 1 (`t`): the key `t` is used twice",
        ),
        (
            json!({"points": [p(json!({"address": 70000}))]}),
            "point 0 (`t`): address must be 0..=65535, got 70000",
        ),
        (
            json!({"points": [p(json!({"address": -1}))]}),
            "point 0 (`t`): address must be 0..=65535, got -1",
        ),
        (
            json!({"points": [p(json!({"address": 65535, "type": "u32"}))]}),
            "point 0 (`t`): a u32 at address 65535 runs past address 65535",
        ),
        (
            json!({"points": [p(json!({"table": "coil", "type": "u16"}))]}),
            "point 0 (`t`): coils hold single bits: the type must be `bool`",
        ),
        (
            json!({"points": [p(json!({"type": "bool"}))]}),
            "point 0 (`t`): input registers hold 16-bit words",
        ),
        (
            json!({"points": [p(json!({"writable": true}))]}),
            "point 0 (`t`): input registers are read-only",
        ),
        (
            json!({"points": [p(json!({"table": "inputs"}))]}),
            "point 0 (`t`): unknown variant `inputs`",
        ),
        (
            json!({"points": [p(json!({"adress": 3}))]}),
            "point 0 (`t`): unknown field `adress`",
        ),
        (
            json!({"points": [p(json!({"key": "last_error"}))]}),
            "point 0 (`last_error`): key `last_error` is reserved",
        ),
        (
            json!({"points": [p(json!({"key": "room temp"}))]}),
            "point 0 (`room temp`): key may hold only letters",
        ),
        (
            json!({"points": [p(json!({"scale": 0}))]}),
            "point 0 (`t`): scale must be a finite, non-zero number, got 0",
        ),
        (
            json!({"points": [{"table": "input", "address": 0}]}),
            "point 0: missing field `key`",
        ),
    ];
    for (settings, want) in cases {
        let e = Harness::builder(lintel_bundled_drivers::MODBUS.component.to_vec())
            .settings(settings.clone())
            .start()
            .err()
            .unwrap_or_else(|| panic!("{settings} was accepted"));
        assert!(e.contains(want), "{settings}: {e}");
    }
}

#[test]
fn metadata_declares_the_functions_and_default_map() {
    let h = start(json!({}));
    let info = h.info();
    assert_eq!(info.module_name, "Modbus");
    let names: Vec<&str> = info.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["read", "write", "poll_now"]);
    assert!(info.functions.iter().all(|f| !f.description.is_empty()));
    let write = &info.functions[1];
    let params: Vec<&str> = write.parameters.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, ["key", "value"]);
    let d = &info.default_settings;
    assert_eq!(
        (
            &d["unit_id"],
            &d["poll_every_ms"],
            &d["timeout_ms"],
            &d["retries"]
        ),
        (&json!(1), &json!(5000), &json!(1000), &json!(2))
    );
    assert_eq!(
        d["points"][0],
        json!({"key": "temperature", "table": "input", "address": 0, "type": "i16",
               "word_order": "big", "scale": 0.1, "unit": "°C"})
    );
    assert_eq!(d["points"].as_array().map(Vec::len), Some(4));
    let schema = info.settings_schema.to_string();
    for word in ["unit_id", "word_order", "discrete", "f32", "writable"] {
        assert!(schema.contains(word), "{word} missing from {schema}");
    }
}

#[test]
fn a_settings_update_keeps_a_half_received_reply_and_polls_the_new_map() {
    let mut h = connected();
    let map = |poll: u64| {
        json!({"poll_every_ms": poll, "points": [
            {"key": "t", "table": "input", "address": 0, "type": "i16"}
        ]})
    };
    assert!(
        h.update_settings(json!({"poll_every_ms": 1}))
            .unwrap_err()
            .contains("poll_every_ms must be 100..=3600000, got 1")
    );
    // The new map is read at once; its reply arrives in two pieces, with another settings
    // update in between (which must not throw the first piece away).
    h.expect(&read(3, 0x04, 0, 1)).silently();
    assert_eq!(h.update_settings(map(20_000)), Ok(()));
    let reply = registers(3, 0x04, &[216]);
    h.device_sends(&reply[..5]);
    h.expect(&read(4, 0x04, 0, 1))
        .respond(&registers(4, 0x04, &[217]));
    assert_eq!(h.update_settings(map(30_000)), Ok(()));
    h.device_sends(&reply[5..]);
    h.assert_script_done();
    assert_eq!(h.status("t"), Some(json!(217)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert!(!warned(&mut h, "garbage"), "{:?}", h.logs());
}

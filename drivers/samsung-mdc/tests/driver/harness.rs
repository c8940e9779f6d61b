//! Harness tier: a scripted display in virtual time.

use super::{ack, command, corrupt, nak};
use lintel_driver_harness::{Harness, LogLevel, Value, json};
use std::time::Duration;

const STATUS: u8 = 0x00;
const POWER: u8 = 0x11;
const VOLUME: u8 = 0x12;
const MUTE: u8 = 0x13;
const INPUT: u8 = 0x14;
const VOLUME_CHANGE: u8 = 0x62;
const MODEL: u8 = 0x8A;
const SERIAL: u8 = 0x0B;
const FIRMWARE: u8 = 0x0E;

/// The default reply timeout and retries (1500 ms, 2 resends).
const TIMEOUT: Duration = Duration::from_millis(1500);

/// Status values: power, volume, mute, input, aspect, N time NF, F time NF.
fn status_values(power: bool, volume: u8, mute: bool, input: u8) -> [u8; 7] {
    [u8::from(power), volume, u8::from(mute), input, 0x10, 0, 0]
}

fn start(settings: Value) -> Harness {
    Harness::builder(lintel_bundled_drivers::SAMSUNG_MDC.component.to_vec())
        .settings(settings)
        .start()
        .expect("the driver starts")
}

/// Script the four queries sent on connect, for display `id`.
fn script_connect(h: &mut Harness, id: u8) {
    h.expect(&command(STATUS, id, &[])).respond(&ack(
        id,
        STATUS,
        &status_values(false, 30, false, 0x21),
    ));
    h.expect(&command(MODEL, id, &[]))
        .respond(&ack(id, MODEL, b"QM55R\0\0"));
    h.expect(&command(SERIAL, id, &[]))
        .respond(&ack(id, SERIAL, b"0ABC123456"));
    h.expect(&command(FIRMWARE, id, &[]))
        .respond(&ack(id, FIRMWARE, b"S-KTM2ELAC-1000.5"));
}

/// The driver with `settings`, connected to display 1 (off, HDMI1, volume 30).
fn connected(settings: Value) -> Harness {
    let mut h = start(settings);
    script_connect(&mut h, 1);
    h.connect();
    h.assert_script_done();
    h
}

fn logged(h: &mut Harness, level: LogLevel, needle: &str) -> bool {
    h.logs()
        .iter()
        .any(|l| l.level == level && l.message.contains(needle))
}

fn last_error(h: &Harness) -> Value {
    h.status("last_error").unwrap_or(Value::Null)
}

#[test]
fn exact_bytes_of_queries_and_commands() {
    // Checksums worked out by hand: the sum of every byte after 0xAA, modulo 256.
    assert_eq!(command(STATUS, 1, &[]), [0xAA, 0x00, 0x01, 0x00, 0x01]);
    assert_eq!(command(MODEL, 1, &[]), [0xAA, 0x8A, 0x01, 0x00, 0x8B]);
    assert_eq!(
        command(POWER, 1, &[1]),
        [0xAA, 0x11, 0x01, 0x01, 0x01, 0x14]
    );
    assert_eq!(
        ack(1, STATUS, &status_values(false, 30, false, 0x21)),
        [
            0xAA, 0xFF, 0x01, 0x09, 0x41, 0x00, 0x00, 0x1E, 0x00, 0x21, 0x10, 0x00, 0x00, 0x99
        ]
    );
    assert_eq!(
        nak(1, POWER, 1),
        [0xAA, 0xFF, 0x01, 0x03, 0x4E, 0x11, 0x01, 0x63]
    );

    let mut h = start(json!({}));
    h.expect(&[0xAA, 0x00, 0x01, 0x00, 0x01]).respond(&ack(
        1,
        STATUS,
        &status_values(false, 30, false, 0x21),
    ));
    h.expect(&[0xAA, 0x8A, 0x01, 0x00, 0x8B])
        .respond(&ack(1, MODEL, b"QM55R\0\0"));
    h.expect(&[0xAA, 0x0B, 0x01, 0x00, 0x0C])
        .respond(&ack(1, SERIAL, b"0ABC123456"));
    h.expect(&[0xAA, 0x0E, 0x01, 0x00, 0x0F])
        .respond(&ack(1, FIRMWARE, b"S-KTM2ELAC-1000.5"));
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(false)));
    assert_eq!(h.status("volume"), Some(json!(30)));
    assert_eq!(h.status("mute"), Some(json!(false)));
    assert_eq!(h.status("input"), Some(json!("HDMI1")));
    assert_eq!(h.status("model"), Some(json!("QM55R")));
    assert_eq!(h.status("serial"), Some(json!("0ABC123456")));
    assert_eq!(h.status("firmware"), Some(json!("S-KTM2ELAC-1000.5")));
    assert_eq!(h.status("last_error"), Some(Value::Null));

    let cases: [(&str, Value, [u8; 6], Vec<u8>); 7] = [
        (
            "power",
            json!([true]),
            [0xAA, 0x11, 0x01, 0x01, 0x01, 0x14],
            ack(1, POWER, &[1]),
        ),
        (
            "power",
            json!([false]),
            [0xAA, 0x11, 0x01, 0x01, 0x00, 0x13],
            ack(1, POWER, &[0]),
        ),
        (
            "volume",
            json!([40]),
            [0xAA, 0x12, 0x01, 0x01, 0x28, 0x3C],
            ack(1, VOLUME, &[40]),
        ),
        (
            "mute",
            json!([true]),
            [0xAA, 0x13, 0x01, 0x01, 0x01, 0x16],
            ack(1, MUTE, &[1]),
        ),
        (
            "mute",
            json!([false]),
            [0xAA, 0x13, 0x01, 0x01, 0x00, 0x15],
            ack(1, MUTE, &[0]),
        ),
        (
            "switch_to",
            json!(["HDMI2"]),
            [0xAA, 0x14, 0x01, 0x01, 0x23, 0x39],
            ack(1, INPUT, &[0x23]),
        ),
        (
            "switch_to",
            json!(["DisplayPort"]),
            [0xAA, 0x14, 0x01, 0x01, 0x25, 0x3B],
            ack(1, INPUT, &[0x25]),
        ),
    ];
    for (function, args, bytes, reply) in cases {
        h.expect(&bytes).respond(&reply);
        assert_eq!(
            h.exec(function, args.clone()),
            Ok(Value::Null),
            "{function} {args}"
        );
        h.assert_script_done();
    }
    assert_eq!(h.status("power"), Some(json!(false)));
    assert_eq!(h.status("volume"), Some(json!(40)));
    assert_eq!(h.status("mute"), Some(json!(false)));
    assert_eq!(h.status("input"), Some(json!("DisplayPort")));
}

#[test]
fn every_input_code() {
    let mut h = connected(json!({}));
    for (name, code) in [
        ("PC", 0x14),
        ("DVI", 0x18),
        ("AV", 0x0C),
        ("Component", 0x08),
        ("MagicInfo", 0x20),
        ("HDMI1", 0x21),
        ("HDMI1_PC", 0x22),
        ("HDMI2", 0x23),
        ("HDMI2_PC", 0x24),
        ("DisplayPort", 0x25),
        ("DisplayPort2", 0x26),
        ("DisplayPort3", 0x27),
        ("HDMI3", 0x31),
        ("HDMI3_PC", 0x32),
        ("HDMI4", 0x33),
        ("HDMI4_PC", 0x34),
        ("HDBaseT", 0x55),
    ] {
        h.expect(&command(INPUT, 1, &[code]))
            .respond(&ack(1, INPUT, &[code]));
        assert_eq!(
            h.exec("switch_to", json!([name])),
            Ok(Value::Null),
            "{name}"
        );
        assert_eq!(h.status("input"), Some(json!(name)));
    }
    h.assert_script_done();
    // A code the driver has no name for is shown in hex.
    h.device_sends(&ack(1, INPUT, &[0x62]));
    assert_eq!(h.status("input"), Some(json!("0x62")));
    // Arguments outside the schemas never reach the display.
    assert!(h.exec("switch_to", json!(["VGA"])).is_err());
    assert!(h.exec("volume", json!([101])).is_err());
    assert!(h.exec("power", json!(["on"])).is_err());
    h.assert_script_done();
}

#[test]
fn display_id_and_broadcast() {
    let mut h = start(json!({"display_id": 10}));
    script_connect(&mut h, 10);
    h.connect();
    h.assert_script_done();
    assert_eq!(
        command(POWER, 10, &[1]),
        [0xAA, 0x11, 0x0A, 0x01, 0x01, 0x1D]
    );
    // A reply from another display does not answer; display 10's does.
    let mut reply = ack(3, POWER, &[0]);
    reply.extend(ack(10, POWER, &[1]));
    h.expect(&command(POWER, 10, &[1])).respond(&reply);
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    assert_eq!(h.status("power"), Some(json!(true)));
    assert!(logged(&mut h, LogLevel::Debug, "reply from display 3"));

    // 254 (0xFE) addresses every display: whichever answers is taken.
    let mut h = start(json!({"display_id": 254}));
    h.expect(&[0xAA, 0x00, 0xFE, 0x00, 0xFE]).respond(&ack(
        7,
        STATUS,
        &status_values(true, 12, true, 0x23),
    ));
    h.connect();
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(h.status("volume"), Some(json!(12)));
    assert_eq!(h.status("mute"), Some(json!(true)));
    assert_eq!(h.status("input"), Some(json!("HDMI2")));
}

#[test]
fn settings_are_checked_on_load() {
    for (settings, want) in [
        (
            json!({"display_id": 255}),
            "display_id must be 0..=254, got 255",
        ),
        (
            json!({"poll_every_ms": 100}),
            "poll_every_ms must be 500..=3600000, got 100",
        ),
        (
            json!({"reply_timeout_ms": 40000}),
            "reply_timeout_ms must be 100..=30000, got 40000",
        ),
        (json!({"retries": 11}), "retries must be 0..=10, got 11"),
    ] {
        let e = Harness::builder(lintel_bundled_drivers::SAMSUNG_MDC.component.to_vec())
            .settings(settings)
            .start()
            .err()
            .expect("refused");
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn polls_status_every_period() {
    let mut h = connected(json!({"poll_every_ms": 2000}));
    h.advance(Duration::from_millis(1999));
    assert_eq!(h.written().len(), 4, "no poll before its period");
    h.expect(&command(STATUS, 1, &[])).respond(&ack(
        1,
        STATUS,
        &status_values(true, 55, true, 0x25),
    ));
    h.advance(Duration::from_millis(1));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(h.status("volume"), Some(json!(55)));
    assert_eq!(h.status("mute"), Some(json!(true)));
    assert_eq!(h.status("input"), Some(json!("DisplayPort")));
    h.expect(&command(STATUS, 1, &[])).respond(&ack(
        1,
        STATUS,
        &status_values(false, 55, true, 0x25),
    ));
    h.advance(Duration::from_millis(2000));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(false)));
    // No polling while disconnected.
    h.disconnect();
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
}

#[test]
fn a_new_poll_period_applies_at_once_while_connected() {
    let mut h = connected(json!({"poll_every_ms": 2000}));
    let written = h.written().len();
    assert!(
        h.update_settings(json!({"poll_every_ms": 100}))
            .unwrap_err()
            .contains("poll_every_ms must be 500..=3600000, got 100")
    );
    assert_eq!(h.update_settings(json!({"poll_every_ms": 10_000})), Ok(()));
    // The old period passes without a poll; the new one brings it.
    h.advance(Duration::from_millis(9_999));
    assert_eq!(h.written().len(), written, "no poll before the new period");
    h.expect(&command(STATUS, 1, &[])).respond(&ack(
        1,
        STATUS,
        &status_values(true, 55, true, 0x25),
    ));
    h.advance(Duration::from_millis(1));
    h.assert_script_done();
}

#[test]
fn query_status_and_volume_steps() {
    let mut h = connected(json!({}));
    h.expect(&command(STATUS, 1, &[])).respond(&ack(
        1,
        STATUS,
        &status_values(true, 20, false, 0x31),
    ));
    assert_eq!(
        h.exec("query_status", json!([])),
        Ok(json!({"power": true, "volume": 20, "mute": false, "input": "HDMI3"}))
    );
    // A step, then the volume is read back.
    h.expect(&[0xAA, 0x62, 0x01, 0x01, 0x00, 0x64])
        .respond(&ack(1, VOLUME_CHANGE, &[21]));
    h.expect(&[0xAA, 0x12, 0x01, 0x00, 0x13])
        .respond(&ack(1, VOLUME, &[21]));
    assert_eq!(h.exec("volume_up", json!([])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("volume"), Some(json!(21)));
    h.expect(&[0xAA, 0x62, 0x01, 0x01, 0x01, 0x65])
        .respond(&ack(1, VOLUME_CHANGE, &[20]));
    h.expect(&command(VOLUME, 1, &[]))
        .respond(&ack(1, VOLUME, &[20]));
    assert_eq!(h.exec("volume_down", json!([])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("volume"), Some(json!(20)));
}

#[test]
fn nak_fails_the_command_with_its_error_code() {
    let mut h = connected(json!({}));
    h.expect(&command(POWER, 1, &[1]))
        .respond(&nak(1, POWER, 0x01));
    let e = h.exec("power", json!([true])).unwrap_err();
    assert_eq!(e, "the display refused power on (NAK, error code 0x01)");
    h.assert_script_done();
    assert_eq!(last_error(&h), json!(e));
    assert!(logged(&mut h, LogLevel::Warn, "refused power on"));
    assert_eq!(
        h.status("power"),
        Some(json!(false)),
        "a NAK changes nothing"
    );
    // Not resent, and the queue moves on.
    h.expect(&command(VOLUME, 1, &[10]))
        .respond(&ack(1, VOLUME, &[10]));
    assert_eq!(h.exec("volume", json!([10])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(last_error(&h), Value::Null, "a success clears last_error");
}

#[test]
fn bad_checksum_is_dropped_and_the_command_resent() {
    let mut h = connected(json!({}));
    h.expect(&command(POWER, 1, &[1]))
        .respond(&corrupt(ack(1, POWER, &[1])));
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, POWER, &[1]));
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        "dropped a reply with a bad checksum (0x57, expected 0x56)"
    ));
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn bad_checksums_on_every_attempt_fail_the_command() {
    let mut h = connected(json!({"retries": 1}));
    for _ in 0..2 {
        h.expect(&command(MUTE, 1, &[1]))
            .respond(&corrupt(ack(1, MUTE, &[1])));
    }
    let e = h.exec("mute", json!([true])).unwrap_err();
    h.assert_script_done();
    assert!(
        e.starts_with("mute on failed: dropped a reply with a bad checksum"),
        "{e}"
    );
    assert!(e.contains("after 2 attempt(s)"), "{e}");
    assert_eq!(last_error(&h), json!(e));
    assert_eq!(
        h.status("mute"),
        Some(json!(false)),
        "a corrupt reply is not applied"
    );
    // The display recovers.
    h.expect(&command(MUTE, 1, &[1]))
        .respond(&ack(1, MUTE, &[1]));
    assert_eq!(h.exec("mute", json!([true])), Ok(Value::Null));
    assert_eq!(h.status("mute"), Some(json!(true)));
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn reply_split_across_reads() {
    let mut h = connected(json!({}));
    let reply = ack(1, POWER, &[1]);
    h.expect(&command(POWER, 1, &[1])).respond(&reply[..3]);
    let mut pending = h.exec_later("power", json!([true])).unwrap();
    assert!(pending.result().is_err(), "not answered by half a reply");
    // The rest, one byte at a time.
    for b in &reply[3..] {
        h.device_sends(&[*b]);
    }
    assert_eq!(pending.result(), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(true)));

    // A long status reply split in two, the cut inside its values.
    let reply = ack(1, STATUS, &status_values(true, 70, false, 0x21));
    h.expect(&command(STATUS, 1, &[])).respond(&reply[..8]);
    let mut pending = h.exec_later("query_status", json!([])).unwrap();
    h.device_sends(&reply[8..]);
    assert_eq!(
        pending.result(),
        Ok(json!({"power": true, "volume": 70, "mute": false, "input": "HDMI1"}))
    );
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn two_replies_in_one_read() {
    let mut h = connected(json!({}));
    // The answer and an unsolicited status in one read: both are applied.
    let mut read = ack(1, VOLUME, &[33]);
    read.extend(ack(1, STATUS, &status_values(true, 33, true, 0x23)));
    h.expect(&command(VOLUME, 1, &[33])).respond(&read);
    assert_eq!(h.exec("volume", json!([33])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("volume"), Some(json!(33)));
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(h.status("input"), Some(json!("HDMI2")));

    // A whole unsolicited reply and the head of the answer, then its tail.
    let mut first = ack(1, MUTE, &[0]);
    let answer = ack(1, POWER, &[0]);
    first.extend_from_slice(&answer[..5]);
    h.expect(&command(POWER, 1, &[0])).respond(&first);
    let mut pending = h.exec_later("power", json!([false])).unwrap();
    assert!(
        pending.result().is_err(),
        "the unsolicited mute reply does not answer power"
    );
    assert_eq!(h.status("mute"), Some(json!(false)));
    h.device_sends(&answer[5..]);
    assert_eq!(pending.result(), Ok(Value::Null));
    assert_eq!(h.status("power"), Some(json!(false)));
}

#[test]
fn garbage_before_a_reply_is_skipped() {
    let mut h = connected(json!({}));
    let mut read = b"\x00\x13junk\r\n".to_vec();
    // A header byte not followed by 0xFF is garbage too.
    read.extend_from_slice(&[0xAA, 0x42]);
    read.extend(ack(1, POWER, &[1]));
    h.expect(&command(POWER, 1, &[1])).respond(&read);
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        "skipped 10 byte(s) that start no MDC reply"
    ));
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(last_error(&h), Value::Null, "cleared by the good reply");
}

#[test]
fn garbage_only_times_out_then_recovers() {
    let mut h = connected(json!({}));
    for _ in 0..3 {
        h.expect(&command(POWER, 1, &[1])).respond(b"ERROR\r\n");
    }
    let mut pending = h.exec_later("power", json!([true])).unwrap();
    assert!(
        last_error(&h)
            .as_str()
            .unwrap()
            .contains("skipped 7 byte(s)")
    );
    h.advance(TIMEOUT);
    h.advance(TIMEOUT);
    assert!(pending.result().is_err(), "still retrying");
    h.advance(TIMEOUT);
    let e = pending.result().unwrap_err();
    assert_eq!(
        e,
        "power on failed: no answer within 1500 ms after 3 attempt(s)"
    );
    assert_eq!(last_error(&h), json!(e));
    h.assert_script_done();
    // The display recovers: the queue is not stuck.
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, POWER, &[1]));
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn silent_display_times_out_then_recovers() {
    let mut h = connected(json!({"poll_every_ms": 10000}));
    for _ in 0..3 {
        h.expect(&command(STATUS, 1, &[])).silently();
    }
    h.advance(Duration::from_millis(10_000));
    h.advance(TIMEOUT * 3);
    h.assert_script_done();
    assert_eq!(
        last_error(&h),
        json!("the status query failed: no answer within 1500 ms after 3 attempt(s)")
    );
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        "the status query failed: no answer"
    ));
    // The display answers again at the next poll.
    h.expect(&command(STATUS, 1, &[])).respond(&ack(
        1,
        STATUS,
        &status_values(true, 30, false, 0x21),
    ));
    h.advance(Duration::from_millis(10_000) - TIMEOUT * 3);
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(last_error(&h), Value::Null);
}

#[test]
fn partial_reply_left_by_a_timeout_is_discarded() {
    let mut h = connected(json!({"retries": 0}));
    // The display starts a status reply and never finishes it.
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, STATUS, &status_values(true, 1, true, 0x21))[..6]);
    let mut pending = h.exec_later("power", json!([true])).unwrap();
    h.advance(TIMEOUT);
    assert!(
        pending
            .result()
            .unwrap_err()
            .contains("no answer within 1500 ms")
    );
    // Without discarding those 6 bytes, this reply would be read as their rest.
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, POWER, &[1]));
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(true)));
    assert_eq!(
        h.status("volume"),
        Some(json!(30)),
        "the partial reply was not applied"
    );
}

#[test]
fn malformed_reply_is_resent() {
    let mut h = connected(json!({}));
    // A good checksum, but the ack byte is neither 'A' nor 'N'.
    let mut bad = vec![0xAA, 0xFF, 0x01, 0x03, b'X', POWER, 0x01];
    bad.push(super::sum(&bad[1..]));
    h.expect(&command(POWER, 1, &[1])).respond(&bad);
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, POWER, &[1]));
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert!(logged(&mut h, LogLevel::Warn, "neither ACK nor NAK (0x58)"));
}

#[test]
fn a_flood_of_garbage_is_bounded_and_survived() {
    let mut h = connected(json!({}));
    // A header announcing 255 bytes, then 64 KiB without any header.
    h.device_sends(&[0xAA, 0xFF, 0x01, 0xFF]);
    h.device_sends(&vec![0x00; 64 * 1024]);
    assert!(h.error().is_none(), "{:?}", h.error());
    assert!(logged(&mut h, LogLevel::Warn, "bad checksum"));
    assert!(logged(&mut h, LogLevel::Warn, "skipped 65280 byte(s)"));
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, POWER, &[1]));
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
}

#[test]
fn a_reply_inside_a_bogus_frame_still_answers_the_command() {
    let mut h = connected(json!({}));
    // Junk `0xAA 0xFF 0x01 0x06` whose length byte swallows the real reply: the bogus
    // frame's checksum is wrong, and the real reply found by scanning again answers the
    // command at once (not resent).
    let mut reply = vec![0xAA, 0xFF, 0x01, 0x06];
    reply.extend_from_slice(&ack(1, POWER, &[1]));
    h.expect(&command(POWER, 1, &[1])).respond(&reply);
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(true)));
    assert!(logged(
        &mut h,
        LogLevel::Warn,
        "dropped a reply with a bad checksum"
    ));
    assert!(
        !logged(&mut h, LogLevel::Warn, "skipped"),
        "the bogus frame's bytes are not reported again as garbage"
    );
    assert_eq!(last_error(&h), Value::Null, "the good reply clears it");
}

#[test]
fn a_flood_of_bogus_headers_is_reported_once_per_read_and_survived() {
    let mut h = connected(json!({}));
    // `0xAA 0xFF 0xFF` over and over: every position starts a 260-byte bogus frame, so
    // the framer drops thousands of bad checksums in one read (within the time budget).
    // (Zeros after it complete the last bogus frames, which would otherwise wait for
    // their 255 announced bytes.)
    let mut flood: Vec<u8> = [0xAA, 0xFF, 0xFF].repeat(64 * 1024 / 3);
    flood.extend_from_slice(&[0; 260]);
    h.device_sends(&flood);
    assert!(h.error().is_none(), "{:?}", h.error());
    let bad: Vec<String> = h
        .logs()
        .iter()
        .filter(|l| l.message.contains("bad checksum"))
        .map(|l| l.message.clone())
        .collect();
    // One line per run (a bogus frame whose checksum happens to be right, then dropped as
    // malformed, ends a run), not one per frame.
    assert!(
        (1..=4).contains(&bad.len()) && bad[0].contains("replies with a bad checksum"),
        "{bad:?}"
    );
    assert!(h.logs().len() < 20, "{} log lines", h.logs().len());
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, POWER, &[1]));
    assert_eq!(h.exec("power", json!([true])), Ok(Value::Null));
    h.assert_script_done();
}

#[test]
fn disconnect_fails_the_waiting_command_and_reconnect_recovers() {
    let mut h = connected(json!({}));
    h.expect(&command(POWER, 1, &[1]))
        .respond(&ack(1, POWER, &[1])[..4]);
    let mut pending = h.exec_later("power", json!([true])).unwrap();
    h.disconnect();
    assert_eq!(
        pending.result(),
        Err("power on failed: the device disconnected".into())
    );
    assert_eq!(
        last_error(&h),
        Value::Null,
        "a disconnect is no device error"
    );
    assert!(
        h.exec("power", json!([true])).is_err(),
        "refused while disconnected"
    );
    // A fresh connection starts with an empty buffer.
    script_connect(&mut h, 1);
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(false)));
}

#[test]
fn secured_protocol_banner_is_reported() {
    // A long reply timeout: nothing is resent while the connection is held.
    let mut h = start(json!({"reply_timeout_ms": 30000}));
    h.expect(&command(STATUS, 1, &[]))
        .respond(b"MDCSTART<<TLS>>");
    h.connect();
    h.assert_script_done();
    let e = last_error(&h);
    assert!(
        e.as_str()
            .unwrap()
            .contains("secured protocol (TLS with a PIN)"),
        "{e}"
    );
    assert!(logged(&mut h, LogLevel::Error, "Secured Protocol"));
    let refused = h.exec("power", json!([true])).unwrap_err();
    assert!(refused.contains("secured protocol"), "{refused}");
    // The connection is held 2 s, then dropped; nothing else is written.
    h.advance(Duration::from_millis(1999));
    assert!(!logged(&mut h, LogLevel::Info, "dropping the connection"));
    h.advance(Duration::from_millis(1));
    assert!(logged(&mut h, LogLevel::Info, "dropping the connection"));
    h.assert_script_done();
    assert!(h.error().is_none());

    // Secured again on the next connection: held twice as long.
    h.expect(&command(STATUS, 1, &[]))
        .respond(b"MDCSTART<<TLS>>");
    h.connect();
    assert!(logged(&mut h, LogLevel::Error, "reconnecting in 4000 ms"));
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();

    // The option is turned off: the display answers and the error clears.
    script_connect(&mut h, 1);
    h.connect();
    h.assert_script_done();
    assert_eq!(last_error(&h), Value::Null);
    assert_eq!(h.status("model"), Some(json!("QM55R")));
}

#[test]
fn a_replaced_command_keeps_the_partial_reply_of_the_one_in_flight() {
    let mut h = connected(json!({"poll_every_ms": 2000}));
    let status = ack(1, STATUS, &status_values(true, 44, false, 0x21));
    h.expect(&command(STATUS, 1, &[])).respond(&status[..5]);
    h.advance(Duration::from_millis(2000));
    // Two power commands queued behind the poll: the newer replaces the older.
    let mut first = h.exec_later("power", json!([true])).unwrap();
    let mut second = h.exec_later("power", json!([false])).unwrap();
    assert_eq!(
        first.result(),
        Err("replaced by a newer `power` command".into())
    );
    h.expect(&command(POWER, 1, &[0]))
        .respond(&ack(1, POWER, &[0]));
    h.device_sends(&status[5..]);
    assert_eq!(
        h.status("volume"),
        Some(json!(44)),
        "the poll's reply was whole"
    );
    assert_eq!(second.result(), Ok(Value::Null));
    h.assert_script_done();
    assert_eq!(h.status("power"), Some(json!(false)));
    assert_eq!(last_error(&h), Value::Null);
}

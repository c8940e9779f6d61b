//! Harness tier: the driver against a scripted BACnet/IP device in virtual time.

use crate::*;
use lintel_driver_harness::{Harness, LogLevel, Value, json};
use std::time::Duration;

/// 2026-01-01T00:00Z: the harness's virtual clock at start, in Unix ms.
const VIRTUAL_EPOCH_MS: u64 = 1_767_225_600_000;

fn start(settings: Value) -> Harness {
    Harness::builder(lintel_bundled_drivers::BACNET.component.to_vec())
        .settings(settings)
        .start()
        .expect("the driver starts")
}

/// A room sensor: temperature, humidity, CO2 and occupancy.
fn room_points() -> Value {
    json!([
        {"name": "temperature", "object": "analog-input,1"},
        {"name": "humidity", "object": "analog-input,2", "property": "present-value"},
        {"name": "co2", "object": "analog-value,1"},
        {"name": "occupancy", "object": "binary-input,1"}
    ])
}

/// The room's settings, with `extra` merged in.
fn room(extra: Value) -> Value {
    let mut s =
        json!({"points": room_points(), "timeout_ms": 1000, "retries": 2, "read_multiple": false});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    s
}

/// The first poll of the room (invoke ids from `first`): 21.5 °C, 45 %, 612 ppm, occupied.
fn room_poll(first: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (
            read_request(first, ANALOG_INPUT, 1, PRESENT_VALUE),
            ack(first, ANALOG_INPUT, 1, PRESENT_VALUE, &real(21.5)),
        ),
        (
            read_request(first + 1, ANALOG_INPUT, 2, PRESENT_VALUE),
            ack(first + 1, ANALOG_INPUT, 2, PRESENT_VALUE, &real(45.0)),
        ),
        (
            read_request(first + 2, ANALOG_VALUE, 1, PRESENT_VALUE),
            ack(first + 2, ANALOG_VALUE, 1, PRESENT_VALUE, &real(612.0)),
        ),
        (
            read_request(first + 3, BINARY_INPUT, 1, PRESENT_VALUE),
            ack(first + 3, BINARY_INPUT, 1, PRESENT_VALUE, &enumerated(1)),
        ),
    ]
}

fn connected_with(settings: Value, script: &[(Vec<u8>, Vec<u8>)]) -> Harness {
    let mut h = start(settings);
    for (request, reply) in script {
        h.expect(request).respond(reply);
    }
    h.connect();
    h.assert_script_done();
    h
}

/// One point (`t`, analog-input,1), connected, its first poll answered 21.5.
fn one_point(extra: Value) -> Harness {
    let mut s = json!({"points": [{"name": "t", "object": "analog-input,1"}], "timeout_ms": 1000, "retries": 2});
    for (k, v) in extra.as_object().unwrap() {
        s[k] = v.clone();
    }
    connected_with(
        s,
        &[(
            read_request(0, ANALOG_INPUT, 1, PRESENT_VALUE),
            ack(0, ANALOG_INPUT, 1, PRESENT_VALUE, &real(21.5)),
        )],
    )
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
fn polls_the_points_on_connect_with_exact_datagrams() {
    let mut h = start(room(json!({})));
    // Byte-exact: BVLC Original-Unicast (0x81 0x0A, length 17), NPDU version 1 expecting
    // a reply, Confirmed-Request (max APDU 1476) invoke 0 readProperty analog-input,1
    // present-value.
    h.expect(&[
        0x81, 0x0A, 0x00, 0x11, 0x01, 0x04, 0x00, 0x05, 0x00, 0x0C, 0x0C, 0x00, 0x00, 0x00, 0x01,
        0x19, 0x55,
    ])
    // The Complex-ACK as bacpypes3 0.0.110 sends it (captured on loopback; its invoke id
    // was 1 there).
    .respond(&[
        0x81, 0x0A, 0x00, 0x17, 0x01, 0x00, 0x30, 0x00, 0x0C, 0x0C, 0x00, 0x00, 0x00, 0x01, 0x19,
        0x55, 0x3E, 0x44, 0x41, 0xAC, 0x00, 0x00, 0x3F,
    ]);
    for (request, reply) in &room_poll(0)[1..] {
        h.expect(request).respond(reply);
    }
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("humidity"), Some(json!(45.0)));
    assert_eq!(h.status("co2"), Some(json!(612.0)));
    assert_eq!(h.status("occupancy"), Some(json!(true)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("last_poll"), Some(json!(VIRTUAL_EPOCH_MS)));
    assert_eq!(h.error(), None);
}

#[test]
fn polls_every_period_and_stops_when_disconnected() {
    let mut h = connected_with(room(json!({"poll_every_ms": 2000})), &room_poll(0));
    h.advance(Duration::from_millis(1999));
    assert_eq!(h.written().len(), 4, "no poll before its period");
    h.expect(&read_request(4, ANALOG_INPUT, 1, PRESENT_VALUE))
        .respond(&ack(4, ANALOG_INPUT, 1, PRESENT_VALUE, &real(-2.5)));
    h.expect(&read_request(5, ANALOG_INPUT, 2, PRESENT_VALUE))
        .respond(&ack(5, ANALOG_INPUT, 2, PRESENT_VALUE, &real(22.3)));
    h.expect(&read_request(6, ANALOG_VALUE, 1, PRESENT_VALUE))
        .respond(&ack(6, ANALOG_VALUE, 1, PRESENT_VALUE, &real(700.0)));
    h.expect(&read_request(7, BINARY_INPUT, 1, PRESENT_VALUE))
        .respond(&ack(7, BINARY_INPUT, 1, PRESENT_VALUE, &enumerated(0)));
    h.advance(Duration::from_millis(1));
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(-2.5)));
    // A Real is published as the decimal it stands for, not 22.299999237060547.
    assert_eq!(h.status("humidity"), Some(json!(22.3)));
    assert_eq!(h.status("occupancy"), Some(json!(false)));
    assert_eq!(h.status("last_poll"), Some(json!(VIRTUAL_EPOCH_MS + 2000)));

    h.disconnect();
    h.advance(Duration::from_millis(20_000));
    assert_eq!(h.written().len(), 8, "no polls while disconnected");
}

#[test]
fn decodes_numbers_scale_and_bools() {
    let points = json!([
        {"name": "u", "object": "multi-state-value,1"},
        {"name": "kwh", "object": "analog-value,3", "scale": 0.001},
        {"name": "neg", "object": "analog-value,4"},
        {"name": "dbl", "object": "large-analog-value,1"},
        {"name": "oos", "object": "0,5", "property": "out-of-service"},
        {"name": "state", "object": "analog-input,6", "property": "36"}
    ]);
    let h = connected_with(
        json!({"points": points, "read_multiple": false}),
        &[
            (
                read_request(0, MULTI_STATE_VALUE, 1, PRESENT_VALUE),
                ack(0, MULTI_STATE_VALUE, 1, PRESENT_VALUE, &unsigned(2)),
            ),
            (
                read_request(1, ANALOG_VALUE, 3, PRESENT_VALUE),
                ack(1, ANALOG_VALUE, 3, PRESENT_VALUE, &unsigned(1234)),
            ),
            (
                read_request(2, ANALOG_VALUE, 4, PRESENT_VALUE),
                ack(2, ANALOG_VALUE, 4, PRESENT_VALUE, &signed(-40)),
            ),
            (
                read_request(3, 46, 1, PRESENT_VALUE),
                ack(3, 46, 1, PRESENT_VALUE, &double(1.0e10 + 0.5)),
            ),
            (
                read_request(4, ANALOG_INPUT, 5, 81),
                ack(4, ANALOG_INPUT, 5, 81, &boolean(true)),
            ),
            (
                read_request(5, ANALOG_INPUT, 6, 36),
                ack(5, ANALOG_INPUT, 6, 36, &enumerated(2)),
            ),
        ],
    );
    assert_eq!(h.status("u"), Some(json!(2)));
    assert_eq!(h.status("kwh"), Some(json!(1.234)));
    assert_eq!(h.status("neg"), Some(json!(-40)));
    assert_eq!(h.status("dbl"), Some(json!(1.0e10 + 0.5)));
    assert_eq!(h.status("oos"), Some(json!(true)));
    assert_eq!(h.status("state"), Some(json!(2)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn read_answers_any_object_and_property() {
    let mut h = one_point(json!({}));
    // Non-ASCII object-name (UTF-8, character set 0).
    h.expect(&read_request(1, ANALOG_INPUT, 1, OBJECT_NAME))
        .respond(&ack(
            1,
            ANALOG_INPUT,
            1,
            OBJECT_NAME,
            &text("Salle 1 – Température"),
        ));
    assert_eq!(
        h.exec("read", json!(["analog-input,1", "object-name"])),
        Ok(json!("Salle 1 – Température"))
    );
    // The property defaults to present-value; types by number work too.
    h.expect(&read_request(2, MULTI_STATE_VALUE, 1, PRESENT_VALUE))
        .respond(&ack(2, MULTI_STATE_VALUE, 1, PRESENT_VALUE, &unsigned(3)));
    assert_eq!(h.exec("read", json!(["19,1"])), Ok(json!(3)));
    // A binary present-value is a bool.
    h.expect(&read_request(3, BINARY_INPUT, 7, PRESENT_VALUE))
        .respond(&ack(3, BINARY_INPUT, 7, PRESENT_VALUE, &enumerated(1)));
    assert_eq!(
        h.exec("read", json!(["binary-input,7", null])),
        Ok(json!(true))
    );
    // A list (state-text, 110) is an array.
    let mut list = text("Off");
    list.extend(text("Comfort"));
    h.expect(&read_request(4, MULTI_STATE_VALUE, 1, 110))
        .respond(&ack(4, MULTI_STATE_VALUE, 1, 110, &list));
    assert_eq!(
        h.exec("read", json!(["multi-state-value,1", "state-text"])),
        Ok(json!(["Off", "Comfort"]))
    );
    // status-flags (a BitString), units (Enumerated), an object identifier, a date.
    h.expect(&read_request(5, ANALOG_INPUT, 1, 111))
        .respond(&ack(5, ANALOG_INPUT, 1, 111, &[0x82, 0x04, 0x20]));
    assert_eq!(
        h.exec("read", json!(["analog-input,1", "status-flags"])),
        Ok(json!([false, false, true, false]))
    );
    h.expect(&read_request(6, ANALOG_INPUT, 1, 117))
        .respond(&ack(6, ANALOG_INPUT, 1, 117, &enumerated(62)));
    assert_eq!(
        h.exec("read", json!(["analog-input,1", "units"])),
        Ok(json!(62))
    );
    h.expect(&read_request(7, DEVICE, 1234, 75)).respond(&ack(
        7,
        DEVICE,
        1234,
        75,
        &[0xC4, 0x02, 0x00, 0x04, 0xD2],
    ));
    assert_eq!(
        h.exec("read", json!(["device,1234", "object-identifier"])),
        Ok(json!("device,1234"))
    );
    h.expect(&read_request(8, DEVICE, 1234, 56)).respond(&ack(
        8,
        DEVICE,
        1234,
        56,
        &[0xA4, 126, 1, 31, 6],
    ));
    assert_eq!(
        h.exec("read", json!(["device,1234", "local-date"])),
        Ok(json!("2026-01-31"))
    );
    h.assert_script_done();
    // Explicit reads do not touch the points' statuses.
    assert_eq!(h.status("t"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn read_refuses_bad_arguments_before_sending() {
    let mut h = one_point(json!({}));
    let e = h.exec("read", json!(["analog-inptu,1"])).unwrap_err();
    assert!(e.contains("unknown object type `analog-inptu`"), "{e}");
    let e = h.exec("read", json!(["analog-input"])).unwrap_err();
    assert!(e.contains("must be `type,instance`"), "{e}");
    let e = h.exec("read", json!(["analog-input,4194304"])).unwrap_err();
    assert!(e.contains("instance must be 0..=4194303"), "{e}");
    let e = h
        .exec("read", json!(["analog-input,1", "presentValue"]))
        .unwrap_err();
    assert!(e.contains("unknown property `presentValue`"), "{e}");
    assert!(h.exec("read", json!([1])).is_err(), "schemas are checked");
    assert_eq!(h.written().len(), 1, "nothing sent");
}

#[test]
fn error_pdus_name_the_class_and_code_and_are_not_retried() {
    let points = json!([{"name": "temperature", "object": "analog-input,9"}]);
    let mut h = connected_with(
        json!({"points": points, "retries": 2}),
        &[(
            read_request(0, ANALOG_INPUT, 9, PRESENT_VALUE),
            error_pdu(0, 1, 31),
        )],
    );
    let e = last_error(&h);
    assert_eq!(
        e,
        "the device refused to read analog-input,9 present-value (`temperature`): unknown-object (error class object, code 31)"
    );
    assert!(warned(&mut h, "unknown-object"));
    assert_eq!(h.written().len(), 1, "an Error PDU is an answer: no retry");
    assert_eq!(h.status("temperature"), None);

    h.expect(&read_request(1, ANALOG_INPUT, 1, 200))
        .respond(&error_pdu(1, 2, 32));
    assert_eq!(
        h.exec("read", json!(["analog-input,1", "200"])),
        Err("the device refused to read analog-input,1 200: unknown-property (error class property, code 32)".into())
    );
    h.assert_script_done();
}

#[test]
fn reject_abort_and_segmented_answers_fail_the_request() {
    let mut h = one_point(json!({}));
    h.expect(&read_request(1, ANALOG_INPUT, 1, OBJECT_NAME))
        .respond(&reject(1, 9));
    assert_eq!(
        h.exec("read", json!(["analog-input,1", "object-name"])),
        Err("the device rejected the request to read analog-input,1 object-name: unrecognized-service (reason 9)".into())
    );
    h.expect(&read_request(2, ANALOG_INPUT, 1, OBJECT_NAME))
        .respond(&abort(2, 4));
    assert_eq!(
        h.exec("read", json!(["analog-input,1", "object-name"])),
        Err("the device aborted the request to read analog-input,1 object-name: segmentation-not-supported (reason 4)".into())
    );
    // A segmented Complex-ACK (SEG bit) although the request did not accept one.
    h.expect(&read_request(3, ANALOG_INPUT, 1, 76))
        .respond(&bvll(&[0x01, 0x00, 0x3C, 3, 0, 4, 12, 0x0C]));
    let e = h
        .exec("read", json!(["analog-input,1", "object-list"]))
        .unwrap_err();
    assert!(e.contains("in segments"), "{e}");
    h.assert_script_done();
    assert!(last_error(&h).contains("in segments"));
    // The next good poll clears last_error.
    h.expect(&read_request(4, ANALOG_INPUT, 1, PRESENT_VALUE))
        .respond(&ack(4, ANALOG_INPUT, 1, PRESENT_VALUE, &real(21.0)));
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("t"), Some(json!(21.0)));
}

#[test]
fn a_silent_device_times_out_after_the_retries_and_recovers() {
    let mut h = one_point(json!({"poll_every_ms": 10_000}));
    let request = read_request(1, ANALOG_INPUT, 1, PRESENT_VALUE);
    // Three attempts of the same datagram (same invoke id), 1000 ms apart.
    h.expect(&request).silently();
    h.expect(&request).silently();
    h.expect(&request).silently();
    h.advance(Duration::from_millis(10_000));
    h.advance(Duration::from_millis(999));
    assert_eq!(h.written().len(), 2, "no resend before the APDU timeout");
    h.advance(Duration::from_millis(2001));
    h.assert_script_done();
    let e = last_error(&h);
    assert!(
        e.starts_with("read analog-input,1 present-value (`t`) failed: no answer within 1000 ms after 3 attempt(s)"),
        "{e}"
    );
    assert!(warned(&mut h, "no answer within 1000 ms"));
    assert_eq!(h.status("t"), Some(json!(21.5)), "the last value is kept");
    assert_eq!(h.error(), None);

    // The device is back: the next poll reads and clears the error.
    h.expect(&read_request(2, ANALOG_INPUT, 1, PRESENT_VALUE))
        .respond(&ack(2, ANALOG_INPUT, 1, PRESENT_VALUE, &real(23.0)));
    h.advance(Duration::from_millis(7000));
    h.assert_script_done();
    assert_eq!(h.status("t"), Some(json!(23.0)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn retries_setting_bounds_the_attempts() {
    let mut h = one_point(json!({"retries": 0, "timeout_ms": 500}));
    h.expect(&read_request(1, ANALOG_INPUT, 1, OBJECT_NAME))
        .silently();
    let mut pending = h
        .exec_later("read", json!(["analog-input,1", "object-name"]))
        .unwrap();
    h.advance(Duration::from_millis(500));
    h.assert_script_done();
    let e = pending.result().unwrap_err();
    assert!(
        e.contains(
            "read analog-input,1 object-name failed: no answer within 500 ms after 1 attempt(s)"
        ),
        "{e}"
    );
}

#[test]
fn garbage_is_reported_and_the_request_asked_again() {
    let mut h = start(json!({"points": [{"name": "t", "object": "analog-input,1"}]}));
    let request = read_request(0, ANALOG_INPUT, 1, PRESENT_VALUE);
    h.expect(&request)
        .respond(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    h.expect(&request)
        .respond(&ack(0, ANALOG_INPUT, 1, PRESENT_VALUE, &real(20.0)));
    h.connect();
    h.assert_script_done();
    assert!(warned(
        &mut h,
        "garbage from the device: BVLC type 0x48 is not 0x81 (BACnet/IP); dropped 28 bytes"
    ));
    // The retry answered: the value is in and the error cleared.
    assert_eq!(h.status("t"), Some(json!(20.0)));
    assert_eq!(h.status("last_error"), Some(Value::Null));

    // Garbage while nothing waits: reported, nothing sent.
    h.device_sends(&[0x00, 0xFF, 0x13]);
    assert!(last_error(&h).starts_with("garbage from the device: BVLC type 0x00"));
    assert_eq!(h.written().len(), 2);
    assert_eq!(h.error(), None);
}

#[test]
fn truncated_and_malformed_answers_are_retried_with_a_clear_error() {
    let mut h = one_point(json!({}));
    type Case = (fn(u8) -> Vec<u8>, &'static str);
    let cases: [Case; 8] = [
        // A BVLC header and no NPDU.
        (|_| bvll(&[]), "the NPDU is 0 octets long"),
        // NPDU version 2.
        (
            |i| bvll(&[0x02, 0x00, 0x30, i, 12]),
            "NPDU version 2 is not 1",
        ),
        // An NPDU announcing a source network whose address is cut off.
        (
            |_| bvll(&[0x01, 0x08, 0x00]),
            "the NPDU header is truncated",
        ),
        // An APDU of one octet.
        (|_| bvll(&[0x01, 0x00, 0x30]), "a Complex-ACK of 1 octets"),
        // A Complex-ACK whose Real is cut off.
        (
            |i| {
                bvll(&[
                    0x01, 0x00, 0x30, i, 12, 0x0C, 0, 0, 0, 1, 0x19, 85, 0x3E, 0x44, 0x41,
                ])
            },
            "in the property value: a tag announces 4 octets, fewer remain",
        ),
        // About another object.
        (
            |i| ack(i, ANALOG_INPUT, 2, PRESENT_VALUE, &real(1.0)),
            "it is about analog-input,2, not analog-input,1",
        ),
        // A Real of 2 octets.
        (
            |i| ack(i, ANALOG_INPUT, 1, PRESENT_VALUE, &[0x42, 0, 0]),
            "a Real of 2 octets",
        ),
        // An Error PDU without its error code.
        (
            |i| bvll(&[0x01, 0x00, 0x50, i, 12, 0x91, 1]),
            "the Error PDU's error code: truncated",
        ),
    ];
    for (n, (bad, why)) in cases.iter().enumerate() {
        let invoke = 1 + n as u8;
        let request = read_request(invoke, ANALOG_INPUT, 1, PRESENT_VALUE);
        h.expect(&request).respond(&bad(invoke));
        // Asked again at once (the same invoke id), answered well this time.
        h.expect(&request)
            .respond(&ack(invoke, ANALOG_INPUT, 1, PRESENT_VALUE, &real(19.5)));
        assert_eq!(
            h.exec("read", json!(["analog-input,1"])),
            Ok(json!(19.5)),
            "{why}"
        );
        h.assert_script_done();
        assert!(
            warned(&mut h, why),
            "a warning with `{why}`: {:?}",
            h.logs()
        );
    }
    assert!(last_error(&h).contains("a Real of 2 octets") || last_error(&h).contains("Error PDU"));
    assert_eq!(h.error(), None);
}

#[test]
fn malformed_answers_to_the_last_retry_fail_with_the_last_problem() {
    let mut h = one_point(json!({"retries": 1}));
    let request = read_request(1, ANALOG_INPUT, 1, PRESENT_VALUE);
    let bad = bvll(&[0x01, 0x00, 0x30, 1]);
    h.expect(&request).respond(&bad);
    h.expect(&request).respond(&bad);
    let mut pending = h.exec_later("read", json!(["analog-input,1"])).unwrap();
    h.advance(Duration::from_millis(1000));
    h.assert_script_done();
    let e = pending.result().unwrap_err();
    assert!(
        e.starts_with("read analog-input,1 present-value failed"),
        "{e}"
    );
    assert!(
        e.contains("last problem: malformed message from the device: a Complex-ACK of 2 octets"),
        "{e}"
    );
    assert_eq!(last_error(&h), e);
}

#[test]
fn wrong_bvlc_lengths() {
    let mut h = one_point(json!({}));
    let good = ack(1, ANALOG_INPUT, 1, PRESENT_VALUE, &real(18.0));
    // A length over the limit, and one under the header: garbage.
    let mut over = good.clone();
    over[2..4].copy_from_slice(&1508u16.to_be_bytes());
    h.device_sends(&over);
    assert!(
        last_error(&h).starts_with("garbage from the device: BVLC length 1508 is outside 4..=1507")
    );
    h.device_sends(&[0x81, 0x0A, 0x00, 0x02, 0x01]);
    assert!(last_error(&h).starts_with("garbage from the device: BVLC length 2"));

    // A length longer than the datagram: held as a partial message, then dropped after
    // half the APDU timeout.
    let mut long = good.clone();
    long[3] += 10;
    h.device_sends(&long);
    h.advance(Duration::from_millis(499));
    assert!(!last_error(&h).starts_with("truncated"));
    h.advance(Duration::from_millis(1));
    assert!(
        last_error(&h).starts_with("truncated message from the device: 23 bytes"),
        "{}",
        last_error(&h)
    );
    assert!(warned(&mut h, "not completed within 500 ms; dropped"));

    // A length shorter than the datagram: what follows is not a message.
    let mut short = good.clone();
    short[3] -= 2;
    h.device_sends(&short);
    assert!(
        last_error(&h).starts_with("garbage from the device: BVLC type 0x"),
        "{}",
        last_error(&h)
    );
    assert_eq!(h.error(), None);
}

#[test]
fn a_message_split_across_reads_and_two_in_one_read() {
    let mut h = one_point(json!({}));
    let request = read_request(1, ANALOG_INPUT, 1, PRESENT_VALUE);
    let answer = ack(1, ANALOG_INPUT, 1, PRESENT_VALUE, &real(24.5));
    // Split: the first part is held, the rest completes it.
    h.expect(&request).respond(&answer[..9]);
    let mut pending = h.exec_later("read", json!(["analog-input,1"])).unwrap();
    h.advance(Duration::from_millis(1));
    assert!(pending.result().is_err(), "not answered yet");
    h.device_sends(&answer[9..]);
    assert_eq!(pending.result(), Ok(json!(24.5)));
    h.assert_script_done();

    // Two in one read (the engine joins datagrams that arrive together): an I-Am and the
    // answer.
    let i_am = bvll(&[
        0x01, 0x00, 0x10, 0x00, 0xC4, 0x02, 0x00, 0x04, 0xD2, 0x22, 0x05, 0xC4, 0x91, 0x00, 0x21,
        0x0F,
    ]);
    let mut both = i_am.clone();
    both.extend(ack(2, ANALOG_INPUT, 1, PRESENT_VALUE, &real(25.0)));
    h.expect(&read_request(2, ANALOG_INPUT, 1, PRESENT_VALUE))
        .respond(&both);
    assert_eq!(h.exec("read", json!(["analog-input,1"])), Ok(json!(25.0)));
    h.assert_script_done();
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn an_answer_for_another_invoke_id_is_ignored() {
    let mut h = one_point(json!({}));
    let request = read_request(1, ANALOG_INPUT, 1, PRESENT_VALUE);
    // A late answer for invoke id 0 and one for an id never used, then the right one.
    let mut stray = ack(0, ANALOG_INPUT, 1, PRESENT_VALUE, &real(99.0));
    stray.extend(error_pdu(77, 1, 31));
    h.expect(&request).respond(&stray);
    let mut pending = h.exec_later("read", json!(["analog-input,1"])).unwrap();
    h.advance(Duration::from_millis(1));
    assert!(pending.result().is_err(), "still waiting");
    assert!(warned(
        &mut h,
        "ignored 2 message(s) that answer no waiting request (waiting for: invoke id 1)"
    ));
    assert!(warned(&mut h, "an answer for invoke id 0"));
    assert!(warned(&mut h, "an answer for invoke id 77"));
    h.device_sends(&ack(1, ANALOG_INPUT, 1, PRESENT_VALUE, &real(21.0)));
    assert_eq!(pending.result(), Ok(json!(21.0)));
    assert_eq!(
        h.status("t"),
        Some(json!(21.5)),
        "the stray 99.0 was not taken"
    );
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn unsolicited_messages_are_not_errors() {
    let mut h = one_point(json!({}));
    // Who-Is (unconfirmed), a network layer message (Who-Is-Router-To-Network), a
    // BVLC-Result, a Forwarded-NPDU I-Am.
    h.device_sends(&bvll(&[0x01, 0x20, 0xFF, 0xFF, 0x00, 0xFF, 0x10, 0x08]));
    h.device_sends(&bvll(&[0x01, 0x80, 0x00]));
    h.device_sends(&[0x81, 0x00, 0x00, 0x06, 0x00, 0x30]);
    h.device_sends(&[
        0x81, 0x04, 0x00, 0x12, 127, 0, 0, 1, 0xBA, 0xC0, 0x01, 0x00, 0x10, 0x00, 0xC4, 0x02, 0x00,
        0x01,
    ]);
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.written().len(), 1);
}

#[test]
fn a_value_of_an_unexpected_type_is_an_error_and_the_value_is_kept() {
    let points = json!([
        {"name": "temperature", "object": "analog-input,1"},
        {"name": "occupancy", "object": "binary-input,1"}
    ]);
    let mut h = connected_with(
        json!({"points": points, "read_multiple": false}),
        &[
            (
                read_request(0, ANALOG_INPUT, 1, PRESENT_VALUE),
                ack(0, ANALOG_INPUT, 1, PRESENT_VALUE, &real(21.5)),
            ),
            (
                read_request(1, BINARY_INPUT, 1, PRESENT_VALUE),
                ack(1, BINARY_INPUT, 1, PRESENT_VALUE, &enumerated(0)),
            ),
        ],
    );
    h.expect(&read_request(2, ANALOG_INPUT, 1, PRESENT_VALUE))
        .respond(&ack(2, ANALOG_INPUT, 1, PRESENT_VALUE, &text("warm")));
    h.expect(&read_request(3, BINARY_INPUT, 1, PRESENT_VALUE))
        .respond(&ack(3, BINARY_INPUT, 1, PRESENT_VALUE, &enumerated(2)));
    h.exec("poll_now", json!([])).unwrap();
    h.assert_script_done();
    assert!(warned(
        &mut h,
        "read analog-input,1 present-value (`temperature`): the device answered a CharacterString (\"warm\"), expected a number or a boolean"
    ));
    assert_eq!(
        last_error(&h),
        "read binary-input,1 present-value (`occupancy`): the device answered 2 for a binary present-value (0 inactive or 1 active expected)"
    );
    assert_eq!(
        h.written().len(),
        4,
        "a valid answer of the wrong type is not asked again"
    );
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("occupancy"), Some(json!(false)));
}

#[test]
fn invoke_ids_wrap_after_255() {
    let mut h = one_point(json!({"poll_every_ms": 3_600_000}));
    for n in 1..=258u32 {
        let invoke = (n % 256) as u8;
        h.expect(&read_request(invoke, ANALOG_INPUT, 1, PRESENT_VALUE))
            .respond(&ack(
                invoke,
                ANALOG_INPUT,
                1,
                PRESENT_VALUE,
                &unsigned(n as u16),
            ));
        assert_eq!(h.exec("read", json!(["analog-input,1"])), Ok(json!(n)));
    }
    h.assert_script_done();
    assert_eq!(h.written()[256][8], 0, "invoke id 256 wraps to 0");
}

#[test]
fn a_disconnect_fails_a_waiting_read_and_polling_resumes_on_reconnect() {
    let mut h = one_point(json!({}));
    h.expect(&read_request(1, ANALOG_INPUT, 1, OBJECT_NAME))
        .silently();
    let mut pending = h
        .exec_later("read", json!(["analog-input,1", "object-name"]))
        .unwrap();
    h.disconnect();
    assert_eq!(pending.result(), Err("the device disconnected".into()));
    h.expect(&read_request(2, ANALOG_INPUT, 1, PRESENT_VALUE))
        .respond(&ack(2, ANALOG_INPUT, 1, PRESENT_VALUE, &real(20.5)));
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("t"), Some(json!(20.5)));
}

#[test]
fn a_poll_is_not_queued_twice_for_a_point_still_waiting() {
    let mut h = one_point(json!({"poll_every_ms": 1000, "timeout_ms": 5000, "retries": 0}));
    h.expect(&read_request(1, ANALOG_INPUT, 1, PRESENT_VALUE))
        .silently();
    h.advance(Duration::from_millis(3000));
    assert_eq!(
        h.written().len(),
        2,
        "one poll outstanding, the others skipped"
    );
    assert_eq!(h.exec("poll_now", json!([])), Ok(json!(0)));
}

#[test]
fn settings_are_checked_on_load() {
    let refused = |settings: Value| {
        Harness::builder(lintel_bundled_drivers::BACNET.component.to_vec())
            .settings(settings)
            .start()
            .err()
            .expect("refused")
    };
    let point = |p: Value| json!({"points": [p]});
    for (settings, needle) in [
        (
            json!({"poll_every_ms": 1}),
            "poll_every_ms must be 100..=3600000, got 1",
        ),
        (
            json!({"timeout_ms": 10}),
            "timeout_ms must be 50..=60000, got 10",
        ),
        (json!({"retries": 11}), "retries must be 0..=10, got 11"),
        (
            json!({"device_instance": 4194304}),
            "device_instance must be 0..=4194303, got 4194304",
        ),
        (
            point(json!({"name": "t", "object": "analog-inptu,1"})),
            "point 0 (`t`): unknown object type `analog-inptu`",
        ),
        (
            point(json!({"name": "t", "object": "analog-input"})),
            "point 0 (`t`): object `analog-input` must be `type,instance`",
        ),
        (
            point(json!({"name": "t", "object": "analog-input,1", "property": "pv"})),
            "point 0 (`t`): unknown property `pv`",
        ),
        (
            point(json!({"name": "last_error", "object": "analog-input,1"})),
            "name `last_error` is reserved",
        ),
        (
            point(json!({"name": "a b", "object": "analog-input,1"})),
            "name may hold only letters",
        ),
        (
            point(json!({"name": "t", "object": "analog-input,1", "scale": 0})),
            "scale must be a finite, non-zero number, got 0",
        ),
        (
            point(json!({"name": "t", "objekt": "analog-input,1"})),
            "point 0 (`t`): unknown field `objekt`",
        ),
        (
            json!({"points": [{"name": "t", "object": "analog-input,1"}, {"name": "t", "object": "analog-input,2"}]}),
            "point 1 (`t`): the name `t` is used twice",
        ),
    ] {
        let e = refused(settings.clone());
        assert!(e.contains(needle), "{settings}: {e}");
    }
    let many: Vec<Value> = (0..33)
        .map(|i| json!({"name": format!("p{i}"), "object": format!("analog-input,{i}")}))
        .collect();
    let e = refused(json!({"points": many}));
    assert!(
        e.contains("points must hold at most 32 points, got 33"),
        "{e}"
    );

    // The defaults: no points, nothing polled, `read` still works.
    let mut h = start(json!({}));
    h.connect();
    assert!(h.written().is_empty());
    h.expect(&read_request(0, DEVICE, 1234, OBJECT_NAME))
        .respond(&ack(0, DEVICE, 1234, OBJECT_NAME, &text("Lintel-Test")));
    assert_eq!(
        h.exec("read", json!(["device,1234", "object-name"])),
        Ok(json!("Lintel-Test"))
    );
    h.assert_script_done();
}

#[test]
fn new_settings_take_effect_at_once() {
    let mut h = one_point(json!({}));
    h.expect(&read_request(1, ANALOG_VALUE, 1, PRESENT_VALUE))
        .respond(&ack(1, ANALOG_VALUE, 1, PRESENT_VALUE, &real(600.0)));
    h.update_settings(json!({"points": [{"name": "co2", "object": "analog-value,1"}]}))
        .unwrap();
    h.assert_script_done();
    assert_eq!(h.status("co2"), Some(json!(600.0)));
    let e = h
        .update_settings(json!({"points": [{"name": "co2", "object": "nope,1"}]}))
        .unwrap_err();
    assert!(e.contains("unknown object type `nope`"), "{e}");
}

/// The room's four points in one ReadPropertyMultiple.
fn room_rpm_request(invoke: u8) -> Vec<u8> {
    rpm_request(
        invoke,
        &[
            (ANALOG_INPUT, 1, PRESENT_VALUE),
            (ANALOG_INPUT, 2, PRESENT_VALUE),
            (ANALOG_VALUE, 1, PRESENT_VALUE),
            (BINARY_INPUT, 1, PRESENT_VALUE),
        ],
    )
}

fn room_rpm_ack(invoke: u8, temperature: f32) -> Vec<u8> {
    rpm_ack(
        invoke,
        &[
            (ANALOG_INPUT, 1, PRESENT_VALUE, Ok(real(temperature))),
            (ANALOG_INPUT, 2, PRESENT_VALUE, Ok(real(45.0))),
            (ANALOG_VALUE, 1, PRESENT_VALUE, Ok(real(612.0))),
            (BINARY_INPUT, 1, PRESENT_VALUE, Ok(enumerated(1))),
        ],
    )
}

fn rpm_room() -> Value {
    json!({"points": room_points(), "timeout_ms": 1000, "retries": 2})
}

#[test]
fn read_property_multiple_polls_every_point_in_one_request() {
    let mut h = start(rpm_room());
    // Byte-exact: service 14, one specification per point.
    let request = room_rpm_request(0);
    assert_eq!(
        &request[..20],
        &[
            0x81, 0x0A, 0x00, 0x2E, 0x01, 0x04, 0x00, 0x05, 0x00, 0x0E, 0x0C, 0x00, 0x00, 0x00,
            0x01, 0x1E, 0x09, 0x55, 0x1F, 0x0C
        ]
    );
    h.expect(&request).respond(&room_rpm_ack(0, 21.5));
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("humidity"), Some(json!(45.0)));
    assert_eq!(h.status("co2"), Some(json!(612.0)));
    assert_eq!(h.status("occupancy"), Some(json!(true)));
    assert_eq!(h.status("last_error"), Some(Value::Null));

    h.expect(&room_rpm_request(1))
        .respond(&room_rpm_ack(1, 22.0));
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(22.0)));
}

#[test]
fn read_property_multiple_per_property_errors_and_bad_types() {
    let mut h = start(rpm_room());
    h.expect(&room_rpm_request(0)).respond(&rpm_ack(
        0,
        &[
            (ANALOG_INPUT, 1, PRESENT_VALUE, Ok(real(21.5))),
            (ANALOG_INPUT, 2, PRESENT_VALUE, Err((1, 31))),
            (ANALOG_VALUE, 1, PRESENT_VALUE, Ok(text("high"))),
            (BINARY_INPUT, 1, PRESENT_VALUE, Ok(enumerated(0))),
        ],
    ));
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("occupancy"), Some(json!(false)));
    assert_eq!(h.status("humidity"), None);
    assert_eq!(h.status("co2"), None);
    assert!(warned(
        &mut h,
        "the device refused to read analog-input,2 present-value (`humidity`): unknown-object (error class object, code 31)"
    ));
    assert_eq!(
        last_error(&h),
        "read analog-value,1 present-value (`co2`): the device answered a CharacterString (\"high\"), expected a number or a boolean"
    );
    assert_eq!(h.written().len(), 1, "no retry for an answered request");
    // All good again: the error clears.
    h.expect(&room_rpm_request(1))
        .respond(&room_rpm_ack(1, 21.0));
    h.advance(Duration::from_millis(10_000));
    h.assert_script_done();
    assert_eq!(h.status("last_error"), Some(Value::Null));
    assert_eq!(h.status("humidity"), Some(json!(45.0)));
}

#[test]
fn read_property_multiple_refused_falls_back_to_read_property() {
    for refusal in [reject(0, 9), error_pdu_rpm(0, 5, 29), abort(0, 4)] {
        let mut h = start(rpm_room());
        h.expect(&room_rpm_request(0)).respond(&refusal);
        // At once, one ReadProperty per point.
        for (request, reply) in room_poll(1) {
            h.expect(&request).respond(&reply);
        }
        h.connect();
        h.assert_script_done();
        assert!(h.logs().iter().any(|l| {
            l.message
                .contains("the device does not take ReadPropertyMultiple")
        }));
        assert_eq!(h.status("temperature"), Some(json!(21.5)));
        assert_eq!(h.status("occupancy"), Some(json!(true)));
        assert_eq!(h.status("last_error"), Some(Value::Null));
        // And from then on.
        for (request, reply) in room_poll(5) {
            h.expect(&request).respond(&reply);
        }
        h.advance(Duration::from_millis(10_000));
        h.assert_script_done();
    }
}

/// An Error PDU for readPropertyMultiple.
fn error_pdu_rpm(invoke: u8, class: u8, code: u8) -> Vec<u8> {
    bvll(&[0x01, 0x00, 0x50, invoke, 14, 0x91, class, 0x91, code])
}

#[test]
fn read_property_multiple_malformed_answers_are_retried() {
    let mut h = start(rpm_room());
    let request = room_rpm_request(0);
    // Three results for four properties; then results in the wrong order; then good.
    h.expect(&request).respond(&rpm_ack(
        0,
        &[
            (ANALOG_INPUT, 1, PRESENT_VALUE, Ok(real(21.5))),
            (ANALOG_INPUT, 2, PRESENT_VALUE, Ok(real(45.0))),
            (ANALOG_VALUE, 1, PRESENT_VALUE, Ok(real(612.0))),
        ],
    ));
    h.expect(&request).respond(&rpm_ack(
        0,
        &[
            (ANALOG_INPUT, 2, PRESENT_VALUE, Ok(real(45.0))),
            (ANALOG_INPUT, 1, PRESENT_VALUE, Ok(real(21.5))),
            (ANALOG_VALUE, 1, PRESENT_VALUE, Ok(real(612.0))),
            (BINARY_INPUT, 1, PRESENT_VALUE, Ok(enumerated(1))),
        ],
    ));
    h.expect(&request).respond(&room_rpm_ack(0, 21.5));
    h.connect();
    h.assert_script_done();
    assert!(warned(&mut h, "3 results for the 4 properties asked for"));
    assert!(warned(
        &mut h,
        "result 1 is about analog-input,2 present-value, not analog-input,1 present-value"
    ));
    assert_eq!(h.status("temperature"), Some(json!(21.5)));
    assert_eq!(h.status("last_error"), Some(Value::Null));
}

#[test]
fn read_property_multiple_asks_at_most_16_points_at_once() {
    let points: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("p{i}"), "object": format!("analog-value,{i}")}))
        .collect();
    let mut h = start(json!({"points": points}));
    let asked: Vec<(u32, u32, u8)> = (0..20).map(|i| (ANALOG_VALUE, i, PRESENT_VALUE)).collect();
    let answer = |invoke: u8, range: std::ops::Range<u32>| {
        let results: Vec<_> = range
            .map(|i| (ANALOG_VALUE, i, PRESENT_VALUE, Ok(unsigned(i as u16))))
            .collect();
        rpm_ack(invoke, &results)
    };
    h.expect(&rpm_request(0, &asked[..16]))
        .respond(&answer(0, 0..16));
    h.expect(&rpm_request(1, &asked[16..]))
        .respond(&answer(1, 16..20));
    h.connect();
    h.assert_script_done();
    assert_eq!(h.status("p0"), Some(json!(0)));
    assert_eq!(h.status("p15"), Some(json!(15)));
    assert_eq!(h.status("p19"), Some(json!(19)));
}

#[test]
fn read_property_multiple_timeouts_name_the_points() {
    let mut h = start(rpm_room());
    let request = room_rpm_request(0);
    h.expect(&request).silently();
    h.expect(&request).silently();
    h.expect(&request).silently();
    h.connect();
    h.advance(Duration::from_millis(3000));
    h.assert_script_done();
    assert!(
        last_error(&h).starts_with(
            "read 4 points with ReadPropertyMultiple (`temperature`, `humidity`, `co2`, `occupancy`) failed: no answer within 1000 ms after 3 attempt(s)"
        ),
        "{}",
        last_error(&h)
    );
}

#[test]
fn a_64_kib_read_of_malformed_and_stale_messages_stays_cheap() {
    let mut h = one_point(json!({}));
    // 5000 six-octet messages with NPDU version 2 (malformed), 3000 stale Reject PDUs for
    // invoke id 9, then the answer: one read of 57 KB (the engine delivers at most 64 KiB
    // at once).
    let mut burst = Vec::new();
    for _ in 0..5000 {
        burst.extend_from_slice(&bvll(&[0x02, 0x00]));
    }
    for _ in 0..3000 {
        burst.extend_from_slice(&reject(9, 0));
    }
    burst.extend(ack(1, ANALOG_INPUT, 1, PRESENT_VALUE, &real(26.5)));
    assert!(burst.len() > 56_000 && burst.len() < 65_536);
    h.expect(&read_request(1, ANALOG_INPUT, 1, PRESENT_VALUE))
        .respond(&burst);
    assert_eq!(h.exec("read", json!(["analog-input,1"])), Ok(json!(26.5)));
    h.assert_script_done();
    assert_eq!(h.error(), None, "no trap: within the time budget");
    let warnings = h
        .logs()
        .iter()
        .filter(|l| matches!(l.level, LogLevel::Warn))
        .count();
    assert!(warnings <= 3, "{warnings} warnings");
    assert!(warned(
        &mut h,
        "4999 more malformed messages in the same read"
    ));
    assert!(warned(
        &mut h,
        "ignored 3000 message(s) that answer no waiting request"
    ));
}

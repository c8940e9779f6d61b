//! WebDAV / CalDAV XML (RFC 4918, RFC 4791): the calendar-query REPORT body and its
//! 207 multistatus answer.

use quick_xml::Reader;
use quick_xml::events::Event;

/// One `<response>` of a multistatus.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Item {
    pub href: String,
    pub etag: Option<String>,
    pub calendar_data: Option<String>,
}

/// The body of a calendar-query REPORT for VEVENTs overlapping `[start, end)` (unix s),
/// asking for each object's etag and its data with recurrences expanded.
pub fn calendar_query(start: i64, end: i64) -> String {
    let (s, e) = (crate::ical::utc_stamp(start), crate::ical::utc_stamp(end));
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <C:calendar-query xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">\n\
         <D:prop><D:getetag/><C:calendar-data><C:expand start=\"{s}\" end=\"{e}\"/></C:calendar-data></D:prop>\n\
         <C:filter><C:comp-filter name=\"VCALENDAR\"><C:comp-filter name=\"VEVENT\">\
         <C:time-range start=\"{s}\" end=\"{e}\"/></C:comp-filter></C:comp-filter></C:filter>\n\
         </C:calendar-query>\n"
    )
}

/// The `<response>`s of a multistatus whose properties were found (`200` propstat).
/// Element names are matched by local name, so any namespace prefix works.
pub fn multistatus(body: &str) -> Result<Vec<Item>, String> {
    let mut reader = Reader::from_str(body);
    reader.config_mut().trim_text(false);
    let mut items = Vec::new();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut item: Option<Item> = None;
    // Inside a propstat: its etag, data and status.
    let mut prop: (Option<String>, Option<String>, Option<String>) = (None, None, None);
    let mut text = String::new();
    let mut saw_root = false;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("malformed XML at byte {}: {e}", reader.error_position()))?;
        match ev {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_vec();
                if path.is_empty() {
                    if name != b"multistatus" {
                        return Err(format!(
                            "expected a DAV multistatus, got <{}>",
                            String::from_utf8_lossy(&name)
                        ));
                    }
                    saw_root = true;
                }
                match name.as_slice() {
                    b"response" => item = Some(Item::default()),
                    b"propstat" => prop = (None, None, None),
                    _ => {}
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(e) if path.is_empty() => {
                if e.local_name().as_ref() != b"multistatus" {
                    return Err("expected a DAV multistatus, got an empty element".into());
                }
                saw_root = true;
            }
            Event::Text(t) => {
                let s = t
                    .unescape()
                    .map_err(|e| format!("malformed XML text: {e}"))?;
                text.push_str(&s);
            }
            Event::CData(c) => {
                text.push_str(&String::from_utf8_lossy(&c.into_inner()));
            }
            Event::End(_) => {
                let Some(name) = path.pop() else {
                    return Err("malformed XML: unbalanced end tag".into());
                };
                let parent = path.last().map(Vec::as_slice);
                match (name.as_slice(), parent) {
                    (b"href", Some(b"response")) => {
                        if let Some(i) = &mut item {
                            i.href = text.trim().to_owned();
                        }
                    }
                    (b"getetag", _) => prop.0 = Some(text.trim().to_owned()),
                    (b"calendar-data", _) => prop.1 = Some(std::mem::take(&mut text)),
                    (b"status", Some(b"propstat")) => prop.2 = Some(text.trim().to_owned()),
                    (b"propstat", _) => {
                        let ok = prop.2.as_deref().is_none_or(|s| s.contains(" 200"));
                        if ok && let Some(i) = &mut item {
                            if prop.0.is_some() {
                                i.etag = prop.0.take();
                            }
                            if prop.1.is_some() {
                                i.calendar_data = prop.1.take();
                            }
                        }
                    }
                    (b"response", _) => {
                        if let Some(i) = item.take()
                            && !i.href.is_empty()
                        {
                            items.push(i);
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err("malformed XML: no multistatus element".into());
    }
    if !path.is_empty() {
        return Err("malformed XML: the document ends inside an element".into());
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_multistatus() {
        let body = r#"<?xml version="1.0"?>
<multistatus xmlns="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
 <response><href>/r/cal/a.ics</href>
  <propstat><prop><getetag>"e1"</getetag><C:calendar-data>BEGIN:VCALENDAR&#13;
X:a&amp;b&#13;
END:VCALENDAR&#13;
</C:calendar-data></prop><status>HTTP/1.1 200 OK</status></propstat>
  <propstat><prop><C:other/></prop><status>HTTP/1.1 404 Not Found</status></propstat>
 </response>
 <D:response xmlns:D="DAV:"><D:href>/r/cal/b.ics</D:href><D:propstat><D:prop><D:getetag>"e2"</D:getetag>
  <C:calendar-data><![CDATA[BEGIN:VCALENDAR
END:VCALENDAR
]]></C:calendar-data></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>
</multistatus>"#;
        let items = multistatus(body).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].href, "/r/cal/a.ics");
        assert_eq!(items[0].etag.as_deref(), Some("\"e1\""));
        assert_eq!(
            items[0].calendar_data.as_deref(),
            Some("BEGIN:VCALENDAR\r\nX:a&b\r\nEND:VCALENDAR\r\n")
        );
        assert_eq!(items[1].href, "/r/cal/b.ics");
        assert!(
            items[1]
                .calendar_data
                .as_deref()
                .unwrap()
                .starts_with("BEGIN:VCALENDAR\n")
        );
    }

    #[test]
    fn refuses_what_is_not_a_multistatus() {
        assert!(multistatus("<html><body>hi</body></html>").is_err());
        assert!(multistatus("<multistatus xmlns='DAV:'><response>").is_err());
        assert!(multistatus("<multistatus><a></b></multistatus>").is_err());
        assert!(multistatus("not xml at all").is_err());
        assert_eq!(multistatus("<D:multistatus xmlns:D='DAV:'/>"), Ok(vec![]));
        assert_eq!(
            multistatus("<D:multistatus xmlns:D='DAV:'></D:multistatus>"),
            Ok(vec![])
        );
    }

    #[test]
    fn query_body_names_the_range() {
        let b = calendar_query(1_767_225_600, 1_767_312_000);
        assert!(
            b.contains(r#"<C:time-range start="20260101T000000Z" end="20260102T000000Z"/>"#),
            "{b}"
        );
        assert!(b.contains("<C:comp-filter name=\"VEVENT\">"));
        assert!(multistatus(&b).is_err());
    }
}

//! The MQTT transport: a module whose driver declares `transport = "mqtt"` connects (with
//! `rumqttc`) to the broker its address names, `mqtt://host[:port]` or
//! `mqtts://host[:port]`, and receives the messages of the topic filters its driver
//! subscribes to (`mqtt-subscribe`) as `on-event(mqtt-message)`. For sensors that publish
//! to a broker (Zigbee2MQTT, Shelly, Tasmota and the like).
//!
//! - `connected` follows the broker session (CONNACK); why it cannot connect is in the
//!   `connection_error` status, and the task retries with exponential backoff and jitter.
//! - Subscriptions are remembered and made again on every new session.
//! - A message over [`MAX_FRAME_BYTES`] is dropped and reported; a packet over
//!   [`MAX_PACKET_BYTES`] ends the session (the broker is asked again after backoff).
//! - A driver that reads slower than its broker sends stops the task reading (its event
//!   queue is bounded), so memory stays bounded; the broker keeps or drops messages by its
//!   own policy.
//!
//! The module's `mqtt` setting (an object; every key optional): `client_id` (default
//! `lintel-<module id>`), `username`, `password` (keep it in an encrypted settings level),
//! `keep_alive_secs` (5..=3600, default 30). TLS for `mqtts://` reads the `tls` setting like
//! every other transport (`tls.server_name` excepted: the broker's host name is checked).

use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Packet, QoS, Transport};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::actor::{Event, HostEvent};
use crate::state::ModuleStatus;
use crate::tls::TlsClient;
use crate::transport::{Backoff, CONNECTION_ERROR_KEY, MAX_FRAME_BYTES};

/// Largest MQTT packet read from the broker: a bigger one ends the session.
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// Most topic filters one module may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 64;
const CONNECT_TIMEOUT_SECS: u64 = 5;
const KEEP_ALIVE_DEFAULT: u64 = 30;

/// Where the broker is, from a module's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub secure: bool,
}

impl Broker {
    pub fn parse(uri: &str) -> Result<Broker, String> {
        let expected = || format!("uri `{uri}` must be mqtt://host[:port] or mqtts://host[:port]");
        let (scheme, rest) = uri.split_once("://").ok_or_else(expected)?;
        let secure = match scheme {
            "mqtt" => false,
            "mqtts" => true,
            _ => return Err(expected()),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "uri `{uri}` must be only scheme://host[:port] (credentials go in the `mqtt` setting)"
            ));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => (h, Some(p.strip_prefix(':').ok_or_else(expected)?)),
                None => return Err(expected()),
            },
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("uri `{uri}` has an invalid port"))?,
            None if secure => 8883,
            None => 1883,
        };
        if host.is_empty() {
            return Err(format!("uri `{uri}` has no host"));
        }
        Ok(Broker {
            host: host.to_string(),
            port,
            secure,
        })
    }
}

/// The session options a module's settings ask for; an error names the setting at fault.
pub(crate) fn options(
    module_id: &str,
    broker: &Broker,
    mqtt: Option<&Value>,
    tls: Option<&TlsClient>,
) -> Result<MqttOptions, String> {
    let empty = serde_json::Map::new();
    let mqtt = match mqtt {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => return Err("setting `mqtt` must be an object".into()),
    };
    let text = |key: &str| match mqtt.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("setting `mqtt.{key}` must be a string")),
    };
    let client_id = text("client_id")?.unwrap_or_else(|| format!("lintel-{module_id}"));
    if client_id.is_empty() || client_id.len() > 256 {
        return Err("setting `mqtt.client_id` must be 1..=256 bytes".into());
    }
    let keep_alive = match mqtt.get("keep_alive_secs") {
        None | Some(Value::Null) => KEEP_ALIVE_DEFAULT,
        Some(v) => v
            .as_u64()
            .filter(|s| (5..=3600).contains(s))
            .ok_or("setting `mqtt.keep_alive_secs` must be a whole number from 5 to 3600")?,
    };
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(Duration::from_secs(keep_alive))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_FRAME_BYTES + 1024);
    match (text("username")?, text("password")?) {
        (Some(u), p) => {
            o.set_credentials(u, p.unwrap_or_default());
        }
        (None, Some(_)) => return Err("setting `mqtt.password` needs `mqtt.username`".into()),
        (None, None) => {}
    }
    if broker.secure {
        let tls = tls.ok_or("no TLS configuration for an mqtts:// address")?;
        if tls.server_name.is_some() {
            return Err(
                "setting `tls.server_name` is not supported for mqtts:// (the broker's host name is checked)"
                    .into(),
            );
        }
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.config.clone()),
        ));
    }
    Ok(o)
}

/// The topic filters a module follows, shared by its links (which add them) and its
/// transport task (which makes them again on every session).
#[derive(Clone)]
pub(crate) struct Subscriptions {
    inner: Arc<Mutex<Filters>>,
    client: AsyncClient,
}

struct Filters {
    connected: bool,
    filters: BTreeSet<String>,
}

impl Subscriptions {
    /// Follow `filter` (checked by the host already) from now on.
    pub fn add(&self, filter: String) -> Result<(), String> {
        let mut f = self.inner.lock();
        if f.filters.contains(&filter) {
            return Ok(());
        }
        if f.filters.len() >= MAX_SUBSCRIPTIONS {
            return Err(format!(
                "a module may subscribe to at most {MAX_SUBSCRIPTIONS} topic filters"
            ));
        }
        // Under the lock: either the session is up and this subscribes now, or the task
        // subscribes to every filter (this one included) when it comes up.
        if f.connected {
            self.client
                .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                .map_err(|e| format!("subscribing to `{filter}`: {e}"))?;
        }
        f.filters.insert(filter);
        Ok(())
    }
}

/// Runs one module's broker session until `cancel` fires.
pub(crate) struct MqttTask {
    pub module_id: Arc<str>,
    pub broker: Broker,
    pub events: flume::Sender<Event>,
    pub status: ModuleStatus,
    pub cancel: CancellationToken,
    eventloop: EventLoop,
    subscriptions: Subscriptions,
}

impl MqttTask {
    pub fn new(
        module_id: Arc<str>,
        broker: Broker,
        options: MqttOptions,
        events: flume::Sender<Event>,
        status: ModuleStatus,
        cancel: CancellationToken,
    ) -> (MqttTask, Subscriptions) {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(network);
        let subscriptions = Subscriptions {
            inner: Arc::new(Mutex::new(Filters {
                connected: false,
                filters: BTreeSet::new(),
            })),
            client,
        };
        let task = MqttTask {
            module_id,
            broker,
            events,
            status,
            cancel,
            eventloop,
            subscriptions: subscriptions.clone(),
        };
        (task, subscriptions)
    }

    pub async fn run(mut self) {
        self.status.set("connected", Value::Bool(false));
        let mut backoff = Backoff::default();
        let mut connected = false;
        loop {
            let polled = tokio::select! {
                _ = self.cancel.cancelled() => break,
                p = self.eventloop.poll() => p,
            };
            match polled {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    connected = true;
                    tracing::info!(module = %self.module_id, host = %self.broker.host, port = self.broker.port, "MQTT broker connected");
                    self.report(None);
                    if let Err(e) = self.resubscribe() {
                        self.report(Some(e));
                    }
                    if self.events.send_async(Event::Connected).await.is_err() {
                        break;
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    if p.payload.len() > MAX_FRAME_BYTES {
                        tracing::warn!(module = %self.module_id, topic = %p.topic, bytes = p.payload.len(), "MQTT message dropped: over the frame limit");
                        self.report(Some(format!(
                            "MQTT message on `{}` dropped: {} bytes exceed the {MAX_FRAME_BYTES}-byte limit",
                            p.topic,
                            p.payload.len()
                        )));
                        continue;
                    }
                    metrics::counter!("lintel_transport_frames_total").increment(1);
                    let ev = Event::Host(HostEvent::MqttMessage(p.topic, p.payload.to_vec()));
                    // Waits while the module's event queue is full: the broker connection
                    // is not read meanwhile (bounded memory).
                    if self.events.send_async(ev).await.is_err() {
                        break;
                    }
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                    use rumqttc::SubscribeReasonCode;
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        tracing::warn!(module = %self.module_id, "the MQTT broker refused a subscription");
                        self.report(Some("the MQTT broker refused a subscription".into()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.subscriptions.inner.lock().connected = false;
                    let why = format!(
                        "MQTT broker {}:{}: {}",
                        self.broker.host,
                        self.broker.port,
                        describe(&e)
                    );
                    tracing::warn!(module = %self.module_id, error = %why, retry_in_ms = backoff.peek().as_millis() as u64, "MQTT broker unreachable");
                    self.report(Some(why));
                    if connected {
                        connected = false;
                        if self.events.send_async(Event::Disconnected).await.is_err() {
                            break;
                        }
                    }
                    let wait = backoff.wait();
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        // Dropping the event loop closes the connection; the session is clean, so the
        // broker keeps nothing of it.
    }

    /// A new session: subscribe to every filter the driver asked for.
    fn resubscribe(&self) -> Result<(), String> {
        let mut f = self.subscriptions.inner.lock();
        f.connected = true;
        if f.filters.is_empty() {
            return Ok(());
        }
        let all = f
            .filters
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        self.subscriptions
            .client
            .try_subscribe_many(all)
            .map_err(|e| format!("subscribing again: {e}"))
    }

    fn report(&self, error: Option<String>) {
        match error {
            Some(e) => self.status.set(CONNECTION_ERROR_KEY, Value::String(e)),
            None if self.status.has(CONNECTION_ERROR_KEY) => {
                self.status.set(CONNECTION_ERROR_KEY, Value::Null)
            }
            None => false,
        };
    }
}

/// Why a session failed, for the module's status: the broker's refusal in words.
fn describe(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode as C, ConnectionError as E};
    match e {
        E::ConnectionRefused(C::BadUserNamePassword) => {
            "refused: bad user name or password (check the `mqtt` setting)".into()
        }
        // What mosquitto answers to a wrong password, too.
        E::ConnectionRefused(C::NotAuthorized) => {
            "refused: not authorized (check the user name and password in the `mqtt` setting)"
                .into()
        }
        E::ConnectionRefused(C::BadClientId) => {
            "refused: client id rejected (setting `mqtt.client_id`)".into()
        }
        E::ConnectionRefused(code) => format!("refused: {code:?}"),
        E::NetworkTimeout => format!("no answer within {CONNECT_TIMEOUT_SECS} s"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse() {
        let b = |host: &str, port, secure| Broker {
            host: host.into(),
            port,
            secure,
        };
        assert_eq!(
            Broker::parse("mqtt://broker.local"),
            Ok(b("broker.local", 1883, false))
        );
        assert_eq!(
            Broker::parse("mqtts://broker.local/"),
            Ok(b("broker.local", 8883, true))
        );
        assert_eq!(
            Broker::parse("mqtt://10.0.0.5:1884"),
            Ok(b("10.0.0.5", 1884, false))
        );
        assert_eq!(
            Broker::parse("mqtts://[::1]:8884"),
            Ok(b("::1", 8884, true))
        );
        assert_eq!(Broker::parse("mqtt://[::1]"), Ok(b("::1", 1883, false)));
        for (bad, why) in [
            ("tcp://x:1", "must be mqtt://"),
            ("mqtt://", "has no host"),
            ("mqtt://x:0", "invalid port"),
            ("mqtt://x:http", "invalid port"),
            ("mqtt://user:pw@x", "credentials go in the `mqtt` setting"),
            ("mqtt://x/topic", "only scheme://host[:port]"),
        ] {
            let e = Broker::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn settings_are_checked_and_name_the_setting() {
        let broker = Broker::parse("mqtt://b:1883").unwrap();
        let o = options("mod-1", &broker, None, None).unwrap();
        assert_eq!(o.client_id(), "lintel-mod-1");
        assert_eq!(o.keep_alive(), Duration::from_secs(30));
        assert!(o.credentials().is_none());
        let o = options(
            "mod-1",
            &broker,
            Some(&serde_json::json!({"client_id": "panel-7", "username": "u", "password": "p", "keep_alive_secs": 10})),
            None,
        )
        .unwrap();
        assert_eq!(o.client_id(), "panel-7");
        assert_eq!(o.keep_alive(), Duration::from_secs(10));
        assert!(o.credentials().is_some());
        for (bad, why) in [
            (serde_json::json!("x"), "`mqtt` must be an object"),
            (
                serde_json::json!({"username": 5}),
                "`mqtt.username` must be a string",
            ),
            (
                serde_json::json!({"password": "p"}),
                "needs `mqtt.username`",
            ),
            (
                serde_json::json!({"keep_alive_secs": 1}),
                "`mqtt.keep_alive_secs`",
            ),
            (serde_json::json!({"client_id": ""}), "`mqtt.client_id`"),
        ] {
            let e = options("m", &broker, Some(&bad), None).err().unwrap();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("\"p\""), "{e}");
        }
        let secure = Broker::parse("mqtts://b").unwrap();
        let e = options("m", &secure, None, None).err().unwrap();
        assert!(e.contains("no TLS configuration"), "{e}");
        let named =
            TlsClient::from_settings(&serde_json::json!({"tls": {"server_name": "x.local"}}))
                .unwrap();
        let e = options("m", &secure, None, Some(&named)).err().unwrap();
        assert!(e.contains("tls.server_name"), "{e}");
    }
}

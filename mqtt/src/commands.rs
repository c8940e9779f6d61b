//! Inbound commands (a broker's `commands.enabled`, off by default).
//!
//! `<prefix>/command/<system>/<module>/<index>/<function>` with a JSON object payload
//! `{"id": <string|number, echoed>, "args": [<positional arguments>]}` runs the function
//! if one of the broker's rules allows it, in the broker's tenant only, with the
//! arguments checked against the function's schema. The answer goes to
//! `<prefix>/reply/<system>/<module>/<index>/<function>` (not retained):
//! `{"id":…,"time":…,"ok":true,"value":…}` or `{"id":…,"time":…,"ok":false,"code":…,
//! "error":…}`. Every command that names a system is written to the tenant's audit trail
//! (`executed`: ran, failed or refused, with the broker as the actor); malformed ones are
//! logged and counted.
//!
//! Limits: the broker's `commands.per_second` (beyond a burst of as many, refused as
//! `rate_limited`), `[mqtt] command_max_bytes`, `command_queue` (received, not yet looked
//! at; more are dropped) and `command_inflight` (running; more are answered `busy`).

use crate::Ctx;
use crate::broker::BrokerShared;
use crate::topics::CommandTopic;
use bytes::Bytes;
use governor::{Quota, RateLimiter};
use lintel_engine::EngineError;
use lintel_model::{AuditAction, Broker, CommandRule, IdKind};
use lintel_store::StoreExt;
use rumqttc::AsyncClient;
use serde_json::{Value, json};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

/// How long a reply may wait for room towards the broker.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Arguments longer than this (as JSON) are shortened in the audit trail.
const AUDIT_ARGS_BYTES: usize = 1024;

/// The event loop's side of a broker's command queue.
pub(crate) struct Inbound {
    tx: mpsc::Sender<(String, Bytes)>,
    broker: Arc<str>,
    last_warned: parking_lot::Mutex<Option<Instant>>,
}

impl Inbound {
    /// Hand a received message to the command task; dropped (and counted) when its queue
    /// is full, so a flood never holds up the connection.
    pub fn offer(&self, topic: String, payload: Bytes) {
        if self.tx.try_send((topic, payload)).is_err() {
            outcome(&self.broker, "dropped");
            let mut w = self.last_warned.lock();
            if w.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                *w = Some(Instant::now());
                tracing::warn!(broker = %self.broker, "MQTT commands arrive faster than they are handled; dropping some (see lintel_mqtt_commands_total)");
            }
        }
    }
}

fn outcome(broker: &str, what: &'static str) {
    metrics::counter!("lintel_mqtt_commands_total", "broker" => broker.to_string(), "outcome" => what)
        .increment(1);
}

/// Start a broker's command task.
pub(crate) fn start(
    ctx: Arc<Ctx>,
    tenant: Arc<str>,
    broker: &Broker,
    client: AsyncClient,
    shared: Arc<BrokerShared>,
) -> Inbound {
    let (tx, rx) = mpsc::channel(ctx.cfg.command_queue.max(1));
    let per_second = NonZeroU32::new(broker.commands.per_second).unwrap_or(NonZeroU32::MIN);
    let handler = Handler {
        limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(per_second)),
        running: Arc::new(Semaphore::new(ctx.cfg.command_inflight.max(1))),
        ctx,
        tenant,
        broker: shared.id.clone(),
        prefix: broker.topic_prefix.clone(),
        rules: Arc::new(broker.commands.allow.clone()),
        client,
        qos: shared.qos,
    };
    tokio::spawn(handler.run(rx));
    Inbound {
        tx,
        broker: shared.id.clone(),
        last_warned: parking_lot::Mutex::new(None),
    }
}

/// A command's payload.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    args: Vec<Value>,
}

struct Handler {
    ctx: Arc<Ctx>,
    tenant: Arc<str>,
    broker: Arc<str>,
    prefix: String,
    rules: Arc<Vec<CommandRule>>,
    limiter: governor::DefaultDirectRateLimiter,
    running: Arc<Semaphore>,
    client: AsyncClient,
    qos: rumqttc::QoS,
}

/// Why a command was not run: a short code for programs, and words for people.
struct Refusal(&'static str, String);

impl Handler {
    async fn run(self, mut rx: mpsc::Receiver<(String, Bytes)>) {
        let this = Arc::new(self);
        while let Some((topic, payload)) = rx.recv().await {
            this.clone().handle(topic, payload).await;
        }
    }

    async fn handle(self: Arc<Self>, topic: String, payload: Bytes) {
        let reply_to = CommandTopic::reply_topic(&self.prefix, &topic);
        if self.limiter.check().is_err() {
            outcome(&self.broker, "rate_limited");
            self.reply(
                reply_to,
                None,
                Err(Refusal(
                    "rate_limited",
                    "too many commands; try again later".into(),
                )),
            )
            .await;
            return;
        }
        let cmd = match CommandTopic::parse(&self.prefix, &topic) {
            Ok(c) => c,
            Err(e) => {
                outcome(&self.broker, "bad_topic");
                tracing::warn!(broker = %self.broker, topic = %printable(&topic), error = %e, "MQTT command refused: bad topic");
                self.reply(reply_to, None, Err(Refusal("bad_topic", e)))
                    .await;
                return;
            }
        };
        let parsed = if payload.len() > self.ctx.cfg.command_max_bytes {
            Err(format!(
                "the payload is {} bytes; the limit is {}",
                payload.len(),
                self.ctx.cfg.command_max_bytes
            ))
        } else {
            serde_json::from_slice::<Payload>(&payload).map_err(|e| {
                format!("the payload must be a JSON object {{\"id\": …, \"args\": […]}}: {e}")
            })
        };
        let p = match parsed {
            Ok(p) if p.id.as_ref().is_none_or(|i| i.is_string() || i.is_number()) => p,
            Ok(_) => {
                return self
                    .bad_payload(reply_to, &topic, "`id` must be a string or a number".into())
                    .await;
            }
            Err(e) => return self.bad_payload(reply_to, &topic, e).await,
        };
        let slug = format!("{}_{}", cmd.module, cmd.index);
        if !self
            .rules
            .iter()
            .any(|r| r.allows(&cmd.system, &cmd.module, cmd.index, &cmd.function))
        {
            outcome(&self.broker, "not_allowed");
            tracing::warn!(broker = %self.broker, system = %cmd.system, module = %slug, function = %cmd.function, "MQTT command refused: no rule of the broker allows it");
            let why = Refusal(
                "not_allowed",
                format!(
                    "no rule of this broker allows `{}` on {slug} of {}",
                    cmd.function, cmd.system
                ),
            );
            self.audit(
                IdKind::Broker,
                &self.broker,
                &cmd,
                &slug,
                &p.args,
                Err(&why),
            )
            .await;
            self.reply(reply_to, p.id, Err(why)).await;
            return;
        }
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            outcome(&self.broker, "busy");
            self.reply(
                reply_to,
                p.id,
                Err(Refusal(
                    "busy",
                    "too many commands running; try again later".into(),
                )),
            )
            .await;
            return;
        };
        // Runs on its own: a slow function does not hold up the next command.
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let engine = &this.ctx.engine;
            let module = engine.resolve(&this.tenant, &cmd.system, &slug).await;
            let result = match &module {
                Ok(m) => engine
                    .exec(&this.tenant, m, &cmd.function, p.args.clone())
                    .await
                    .map_err(|e| Refusal(code(&e), e.to_string())),
                Err(e) => Err(Refusal(code(e), e.to_string())),
            };
            outcome(
                &this.broker,
                match &result {
                    Ok(_) => "ok",
                    Err(r) => r.0,
                },
            );
            let (kind, record) = match &module {
                Ok(m) => (IdKind::Module, m.as_str()),
                Err(_) => (IdKind::Broker, &*this.broker),
            };
            this.audit(
                kind,
                record,
                &cmd,
                &slug,
                &p.args,
                result.as_ref().map(|_| ()),
            )
            .await;
            this.reply(reply_to, p.id, result).await;
        });
    }

    async fn bad_payload(&self, reply_to: Option<String>, topic: &str, e: String) {
        outcome(&self.broker, "bad_payload");
        tracing::warn!(broker = %self.broker, topic = %printable(topic), error = %e, "MQTT command refused: bad payload");
        self.reply(reply_to, None, Err(Refusal("bad_payload", e)))
            .await;
    }

    /// The command in the tenant's audit trail, with the broker as the actor.
    async fn audit(
        &self,
        kind: IdKind,
        record: &str,
        cmd: &CommandTopic,
        slug: &str,
        args: &[Value],
        result: Result<(), &Refusal>,
    ) {
        let args_text = Value::Array(args.to_vec()).to_string();
        let args = if args_text.len() <= AUDIT_ARGS_BYTES {
            Value::Array(args.to_vec())
        } else {
            Value::String(format!("<{} bytes>", args_text.len()))
        };
        let mut details = json!({
            "via": "mqtt",
            "system": cmd.system,
            "module": slug,
            "function": cmd.function,
            "args": args,
            "outcome": match result {
                Ok(()) => "ok",
                Err(Refusal("not_allowed", _)) => "refused",
                Err(_) => "error",
            },
        });
        if let Err(r) = result {
            details["error"] = json!(r.1);
            details["code"] = json!(r.0);
        }
        let actor = lintel_store::Actor::of(&self.broker);
        let event = lintel_store::Event {
            actor: &actor,
            action: AuditAction::Executed,
            kind,
            record_id: record,
            details,
        };
        if let Err(e) = self.ctx.store.record_event(&self.tenant, event).await {
            tracing::error!(broker = %self.broker, error = %e, "could not write an MQTT command to the audit trail");
        }
    }

    async fn reply(&self, to: Option<String>, id: Option<Value>, result: Result<Value, Refusal>) {
        let Some(to) = to else {
            return;
        };
        let mut body = json!({"id": id, "time": lintel_model::now_unix()});
        match result {
            Ok(v) => {
                body["ok"] = json!(true);
                body["value"] = v;
            }
            Err(Refusal(code, error)) => {
                body["ok"] = json!(false);
                body["code"] = json!(code);
                body["error"] = json!(error);
            }
        }
        let payload = Bytes::from(body.to_string());
        let sent = tokio::time::timeout(
            REPLY_TIMEOUT,
            self.client.publish_bytes(to, self.qos, false, payload),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(broker = %self.broker, "MQTT command reply not sent (the connection is busy or gone)");
        }
    }
}

/// A short code for an engine error.
fn code(e: &EngineError) -> &'static str {
    match e {
        EngineError::SystemNotFound(_)
        | EngineError::ModuleNotFound(_)
        | EngineError::FunctionNotFound { .. } => "not_found",
        EngineError::ModuleNotRunning(_) => "not_running",
        EngineError::BadArguments { .. } => "bad_arguments",
        EngineError::Driver(_) => "driver_error",
        EngineError::Timeout(_) => "timeout",
        EngineError::Busy => "busy",
        _ => "error",
    }
}

/// A topic for a log line: control characters escaped, at most 256 bytes.
fn printable(topic: &str) -> String {
    let mut s: String = topic.escape_debug().collect();
    if s.len() > 256 {
        let mut cut = 256;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

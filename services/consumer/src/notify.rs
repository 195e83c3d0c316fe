//! The notify stage (SPEC §4): delivers each notification (low stock to
//! staff; order confirmed / rejected to the customer) over every configured
//! channel — SMTP, an HMAC-signed webhook, the log — with retries and
//! exponential backoff, and records each delivery in `notifications`
//! (`_id` = `<key>/<channel>`; a notification's channels in one write,
//! after the last of them), so a redelivered or replayed event is not
//! delivered again. Only a *delivered* record counts: a failed one is
//! tried again on redelivery or re-drive.
//!
//! A permanent failure (a malformed recipient, a 4xx answer) sends the
//! message to the DLQ at once. A transient one is retried with backoff;
//! after the configured attempts the delivery is recorded as failed, the
//! message goes to the DLQ, and the channel's breaker opens: while it is
//! open, what needs the channel is tried once per batch retry and the
//! batch waits (a transient failure of the stage), so an outage costs one
//! dead letter, not the retries of every message queued behind it. The
//! first delivery that succeeds closes the breaker.
//!
//! The one window left is a crash after the receiver accepted and before
//! the record was written; a redelivery then sends again, with the same
//! `Message-ID` / `X-Orderflow-Id`, so receivers can drop the duplicate
//! (ADR 0004).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use bson::doc;
use hmac::{Hmac, KeyInit, Mac};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mongodb::{Collection, Database};
use orderflow_domain::events::{types, LowStock, OrderConfirmed, OrderRejected};
use orderflow_platform::coalesce::Coalescer;
use orderflow_platform::kafka::Received;
use orderflow_platform::mongo::documents::{bson_date, DeliveryDocument, DeliveryStatus};
use orderflow_platform::mongo::{DUPLICATE_KEY, NOTIFICATIONS};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::event::{decode_payload, event_type, find_by_ids};
use crate::runner::{Backoff, Outgoing, Transient};
use crate::stage::{Fresh, Refusal, Stage, Verdicts};

pub const SIGNATURE_HEADER: &str = "x-orderflow-signature";
pub const TIMESTAMP_HEADER: &str = "x-orderflow-timestamp";
pub const ID_HEADER: &str = "x-orderflow-id";

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Channel {
    Log,
    Smtp,
    Webhook,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Log => "log",
            Channel::Smtp => "smtp",
            Channel::Webhook => "webhook",
        }
    }
}

/// Notify's settings (environment names in the consumer's `Args`).
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub channels: Vec<Channel>,
    pub smtp_url: String,
    pub mail_from: String,
    pub staff_email: String,
    pub customer_email_domain: String,
    pub webhook_url: String,
    pub webhook_secret: String,
    pub attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    /// Notifications delivered at once.
    pub concurrency: usize,
}

/// One notification, whatever the channel.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Names the fact notified: the same on every redelivery.
    pub key: String,
    pub kind: &'static str,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub event_type: String,
}

pub struct Notify {
    db: Database,
    config: NotifyConfig,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    http: reqwest::Client,
    mail_from: Option<Mailbox>,
    /// Channels whose last delivery ran out of retries on transient
    /// failures: an outage until a delivery succeeds.
    down: Mutex<HashSet<Channel>>,
    /// NOTIFY_CONCURRENCY, shared by the partitions' lanes.
    sending: tokio::sync::Semaphore,
    /// Records deliveries, a notification's channels together: the
    /// notifications in flight share the writes.
    records: Coalescer<Vec<DeliveryDocument>, mongodb::error::Error>,
}

/// How one delivery ended.
enum Delivery {
    Delivered,
    /// Permanent, or transient with every attempt used: dead-letter it.
    Failed(String),
}

/// A failed delivery attempt; a permanent one is not retried.
#[derive(Debug)]
struct Failure {
    permanent: bool,
    error: String,
}

/// The histogram of how many delivery records each insert carried.
pub fn records_per_write() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 7))
}

impl Notify {
    /// `records_per_write` observes each insert of delivery records.
    pub fn new(
        db: &Database,
        config: NotifyConfig,
        records_per_write: Histogram,
    ) -> anyhow::Result<Self> {
        let smtp = if config.channels.contains(&Channel::Smtp) {
            Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
                    .map_err(|e| anyhow::anyhow!("SMTP_URL: {e}"))?
                    .timeout(Some(config.timeout))
                    // One pooled connection per delivery in flight: with
                    // fewer, lettre opens a connection for each delivery
                    // beyond the pool and closes it after one mail (a
                    // handshake per mail, measured at a quarter of the rate).
                    .pool_config(
                        lettre::transport::smtp::PoolConfig::new()
                            .max_size(config.concurrency.max(1) as u32),
                    )
                    .build(),
            )
        } else {
            None
        };
        let mail_from = if smtp.is_some() {
            Some(
                config
                    .mail_from
                    .parse()
                    .map_err(|e| anyhow::anyhow!("MAIL_FROM: {e}"))?,
            )
        } else {
            None
        };
        if config.channels.contains(&Channel::Webhook) {
            if config.webhook_url.is_empty() || config.webhook_secret.is_empty() {
                anyhow::bail!("the webhook channel needs WEBHOOK_URL and WEBHOOK_SECRET");
            }
            reqwest::Url::parse(&config.webhook_url)
                .map_err(|e| anyhow::anyhow!("WEBHOOK_URL: {e}"))?;
        }
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        let deliveries = db.collection::<DeliveryDocument>(NOTIFICATIONS);
        Ok(Notify {
            db: db.clone(),
            sending: tokio::sync::Semaphore::new(config.concurrency.max(1)),
            // Each notification in flight waits for its records, so a
            // write carries those of at most NOTIFY_CONCURRENCY of them.
            records: Coalescer::spawn(config.concurrency, move |records: Vec<Vec<_>>| {
                let records: Vec<DeliveryDocument> = records.into_iter().flatten().collect();
                records_per_write.observe(records.len() as f64);
                record_deliveries(deliveries.clone(), records)
            }),
            config,
            smtp,
            http,
            mail_from,
            down: Mutex::new(HashSet::new()),
        })
    }

    fn deliveries(&self) -> Collection<DeliveryDocument> {
        self.db.collection(NOTIFICATIONS)
    }

    /// Of `ids`, the deliveries that succeeded (a failed one is retried).
    async fn delivered(&self, ids: Vec<String>) -> Result<HashSet<String>, Transient> {
        let found = find_by_ids(&self.deliveries(), ids, |d| d.id.clone(), "deliveries").await?;
        Ok(found
            .into_iter()
            .filter(|(_, d)| d.status == DeliveryStatus::Delivered)
            .map(|(id, _)| id)
            .collect())
    }

    fn is_down(&self, channel: Channel) -> bool {
        self.down.lock().expect("breaker").contains(&channel)
    }

    /// Opens or closes the channel's breaker; whether this call changed it.
    fn set_down(&self, channel: Channel, down: bool) -> bool {
        let mut set = self.down.lock().expect("breaker");
        let changed = if down {
            set.insert(channel)
        } else {
            set.remove(&channel)
        };
        if changed {
            if down {
                tracing::warn!(
                    channel = channel.as_str(),
                    "channel down: deliveries wait until it answers"
                );
            } else {
                tracing::info!(channel = channel.as_str(), "channel back");
            }
        }
        changed
    }

    fn customer_address(&self, customer_id: &str) -> String {
        if customer_id.contains('@') {
            customer_id.to_owned()
        } else {
            format!("{customer_id}@{}", self.config.customer_email_domain)
        }
    }

    /// What the message asks to notify.
    fn notification(&self, msg: &Received) -> Result<Notification, Refusal> {
        let ce_type = event_type(msg).unwrap_or_default().to_owned();
        let n = match ce_type.as_str() {
            types::LOW_STOCK => {
                let e: LowStock = decode_payload(msg)?;
                Notification {
                    key: format!("low_stock:{}:{}", e.product_id, e.order_id),
                    kind: "low_stock",
                    recipient: self.config.staff_email.clone(),
                    subject: format!("Low stock: {} ({} left)", e.name, e.stock),
                    body: format!(
                        "Stock of {} ({}) fell to {} of {}, below the threshold of {}.\n",
                        e.name, e.product_id, e.stock, e.capacity, e.threshold
                    ),
                    event_type: ce_type,
                }
            }
            types::ORDER_CONFIRMED => {
                let e: OrderConfirmed = decode_payload(msg)?;
                Notification {
                    key: format!("order_confirmed:{}", e.order_id),
                    kind: "order_confirmed",
                    recipient: self.customer_address(&e.customer_id),
                    subject: format!("Your order {} is confirmed", e.order_id),
                    body: format!(
                        "Thank you! Order {} is paid and confirmed: {} {}.\n",
                        e.order_id, e.total_amount, e.currency
                    ),
                    event_type: ce_type,
                }
            }
            types::ORDER_REJECTED => {
                let e: OrderRejected = decode_payload(msg)?;
                Notification {
                    key: format!("order_rejected:{}", e.order_id),
                    kind: "order_rejected",
                    recipient: self.customer_address(&e.customer_id),
                    subject: format!("Your order {} could not be completed", e.order_id),
                    body: format!(
                        "Order {} was rejected ({}). {}\n",
                        e.order_id, e.reason, e.detail
                    ),
                    event_type: ce_type,
                }
            }
            "" => return Err(("undecodable", "no ce_type header".into())),
            other => return Err(("unexpected_event_type", format!("ce_type {other}"))),
        };
        Ok(n)
    }

    async fn send(
        &self,
        channel: Channel,
        n: &Notification,
        payload: &[u8],
    ) -> Result<(), Failure> {
        match channel {
            Channel::Log => {
                tracing::info!(
                    target: orderflow_platform::telemetry::DELIVERY_LOG,
                    key = %n.key,
                    recipient = %n.recipient,
                    subject = %n.subject,
                    "notification"
                );
                Ok(())
            }
            Channel::Smtp => self.send_mail(n).await,
            Channel::Webhook => self.post_webhook(n, payload).await,
        }
    }

    async fn send_mail(&self, n: &Notification) -> Result<(), Failure> {
        let (Some(smtp), Some(from)) = (&self.smtp, &self.mail_from) else {
            return Err(Failure {
                permanent: true,
                error: "SMTP is not configured".into(),
            });
        };
        let to: Mailbox = n.recipient.parse().map_err(|e| Failure {
            permanent: true,
            error: format!("recipient {}: {e}", n.recipient),
        })?;
        let email = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(&n.subject)
            .message_id(Some(message_id(&n.key)))
            .header(ContentType::TEXT_PLAIN)
            .body(n.body.clone())
            .map_err(|e| Failure {
                permanent: true,
                error: e.to_string(),
            })?;
        smtp.send(email).await.map(|_| ()).map_err(|e| Failure {
            permanent: e.is_permanent(),
            error: format!("smtp: {e}"),
        })
    }

    async fn post_webhook(&self, n: &Notification, payload: &[u8]) -> Result<(), Failure> {
        let data = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| RawValue::from_string(s.to_owned()).ok())
            .ok_or(Failure {
                permanent: true,
                error: "payload is not JSON".into(),
            })?;
        let body = serde_json::to_vec(&WebhookBody {
            id: &n.key,
            kind: n.kind,
            event_type: &n.event_type,
            recipient: &n.recipient,
            subject: &n.subject,
            data: &data,
        })
        .map_err(|e| Failure {
            permanent: true,
            error: e.to_string(),
        })?;
        let timestamp = OffsetDateTime::now_utc().unix_timestamp().to_string();
        let signature = sign(self.config.webhook_secret.as_bytes(), &timestamp, &body);
        let response = self
            .http
            .post(&self.config.webhook_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &n.key)
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, format!("v1={signature}"))
            .body(body)
            .send()
            .await
            .map_err(|e| Failure {
                permanent: false,
                error: format!("webhook: {e}"),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retryable = status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        Err(Failure {
            permanent: !retryable,
            error: format!("webhook answered {status}"),
        })
    }

    /// Delivers over one channel with retries; how it ended and the record
    /// to write. With the channel's breaker open, one attempt, and a failure
    /// is transient for the whole batch (nothing to record, nothing
    /// dead-lettered).
    async fn deliver(
        &self,
        channel: Channel,
        n: &Notification,
        payload: &[u8],
    ) -> Result<(Delivery, DeliveryDocument), Transient> {
        let probing = self.is_down(channel);
        let attempts_allowed = if probing {
            1
        } else {
            self.config.attempts.max(1)
        };
        let mut backoff = Backoff::starting_at(self.config.backoff, self.config.backoff * 32);
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match self.send(channel, n, payload).await {
                Ok(()) => break Ok(()),
                Err(f) if f.permanent => break Err(f.error),
                Err(f) if probing => {
                    return Err(Transient(format!(
                        "{} is down: {}",
                        channel.as_str(),
                        f.error
                    )))
                }
                Err(f) if attempts >= attempts_allowed => {
                    // Every attempt used on transient failures: an outage.
                    // The delivery that found it is dead-lettered; those
                    // that ran out of retries beside it wait.
                    if !self.set_down(channel, true) {
                        return Err(Transient(format!(
                            "{} is down: {}",
                            channel.as_str(),
                            f.error
                        )));
                    }
                    break Err(f.error);
                }
                Err(f) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(key = %n.key, channel = channel.as_str(), attempts, error = %f.error, ?wait, "delivery failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        if result.is_ok() {
            self.set_down(channel, false);
        }
        let record = DeliveryDocument {
            id: delivery_id(&n.key, channel),
            key: n.key.clone(),
            kind: n.kind.to_owned(),
            channel: channel.as_str().to_owned(),
            recipient: n.recipient.clone(),
            subject: n.subject.clone(),
            status: if result.is_ok() {
                DeliveryStatus::Delivered
            } else {
                DeliveryStatus::Failed
            },
            attempts,
            error: result.as_ref().err().cloned(),
            at: bson_date(OffsetDateTime::now_utc()),
        };
        let delivery = match result {
            Ok(()) => Delivery::Delivered,
            Err(e) => Delivery::Failed(e),
        };
        Ok((delivery, record))
    }
}

/// Writes the records of deliveries made at about the same time, in one
/// insert. A record that exists already is a failed delivery re-driven from
/// the dead-letter topic: it is overwritten.
async fn record_deliveries(
    deliveries: Collection<DeliveryDocument>,
    records: Vec<DeliveryDocument>,
) -> mongodb::error::Result<()> {
    let recorded_before: Vec<usize> = match deliveries.insert_many(&records).ordered(false).await {
        Ok(_) => return Ok(()),
        Err(e) => match e.kind.as_ref() {
            mongodb::error::ErrorKind::InsertMany(ime)
                if ime.write_concern_error.is_none()
                    && ime
                        .write_errors
                        .iter()
                        .flatten()
                        .all(|we| we.code == DUPLICATE_KEY) =>
            {
                ime.write_errors
                    .iter()
                    .flatten()
                    .map(|we| we.index)
                    .collect()
            }
            _ => return Err(e),
        },
    };
    for record in recorded_before.into_iter().filter_map(|i| records.get(i)) {
        deliveries
            .replace_one(doc! {"_id": &record.id}, record)
            .upsert(true)
            .await?;
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct WebhookBody<'a> {
    id: &'a str,
    kind: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    recipient: &'a str,
    subject: &'a str,
    data: &'a RawValue,
}

pub fn delivery_id(key: &str, channel: Channel) -> String {
    format!("{key}/{}", channel.as_str())
}

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`: what the receiver
/// recomputes to check the `X-Orderflow-Signature: v1=…` header.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A Message-ID that is the same for every send of one notification.
pub fn message_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("<{}@orderflow>", hex::encode(&digest[..16]))
}

impl Notify {
    /// Delivers one notification over every channel it has not reached
    /// yet; a refusal when a delivery failed for good.
    async fn process(
        &self,
        fresh: &Fresh<'_, Notification>,
        done: &HashSet<String>,
    ) -> Result<Result<(), Refusal>, Transient> {
        let n = fresh.input;
        let payload = rdkafka::Message::payload(fresh.message).unwrap_or_default();
        let mut failures = Vec::new();
        let mut records = Vec::new();
        let mut outage = None;
        for channel in &self.config.channels {
            if done.contains(&delivery_id(&n.key, *channel)) {
                continue;
            }
            match self
                .deliver(*channel, n, payload)
                .instrument(fresh.span.clone())
                .await
            {
                Ok((delivery, record)) => {
                    if let Delivery::Failed(e) = delivery {
                        failures.push(format!("{}: {e}", channel.as_str()));
                    }
                    records.push(record);
                }
                Err(transient) => {
                    outage = Some(transient);
                    break;
                }
            }
        }
        // One write for the channels reached, after the last of them (a
        // round trip per notification, not per channel), also when a later
        // channel's outage makes the batch wait: what was sent is not sent
        // again.
        if !records.is_empty() {
            self.records
                .submit(records)
                .await
                .map_err(|e| Transient(format!("recording deliveries: {e}")))?;
        }
        if let Some(transient) = outage {
            return Err(transient);
        }
        Ok(if failures.is_empty() {
            Ok(())
        } else {
            Err(("delivery_failed", failures.join("; ")))
        })
    }
}

impl Stage for Notify {
    type Input = Notification;
    /// Delivered on every channel.
    type Decision = ();
    type Prepared = ();

    fn decode(&self, message: &Received) -> Result<Notification, Refusal> {
        self.notification(message)
    }

    fn key<'i>(&self, n: &'i Notification) -> &'i str {
        &n.key
    }

    /// None in advance: deliveries are recorded per channel, so `decide`
    /// looks them up and delivers on the channels not reached yet.
    async fn decided(&self, _: Vec<String>) -> Result<HashMap<String, ()>, Transient> {
        Ok(HashMap::new())
    }

    async fn decide(&self, fresh: &[Fresh<'_, Notification>]) -> Result<Verdicts<()>, Transient> {
        let ids = fresh
            .iter()
            .flat_map(|f| {
                self.config
                    .channels
                    .iter()
                    .map(|c| delivery_id(&f.input.key, *c))
            })
            .collect();
        let done = self.delivered(ids).await?;
        // Notifications are independent of one another: deliver several at
        // once (NOTIFY_CONCURRENCY across the lanes).
        let runs = fresh.iter().map(|f| async {
            // The semaphore is never closed.
            let _slot = self.sending.acquire().await;
            Ok::<_, Transient>((f.input.key.clone(), self.process(f, &done).await?))
        });
        Ok(futures::future::try_join_all(runs)
            .await?
            .into_iter()
            .collect())
    }

    fn emit(&self, _: &(), _: &tracing::Span) -> Result<Vec<Outgoing>, Transient> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Expected values from Python's hmac module.
        assert_eq!(
            sign(b"secret", "1700000000", br#"{"a":1}"#),
            "49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }

    #[test]
    fn message_ids_are_stable_and_well_formed() {
        let id = message_id("low_stock:mug:o-1");
        assert_eq!(id, message_id("low_stock:mug:o-1"));
        assert_ne!(id, message_id("low_stock:mug:o-2"));
        assert!(id.starts_with('<') && id.ends_with("@orderflow>"), "{id}");
    }
}

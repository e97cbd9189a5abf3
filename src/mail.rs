//! Mail: composing what Corral sends (welcome and reminder mails), the delivery transports
//! (`.eml` files or SMTP, both lettre), and the retry policy. The mailer actor
//! (`actors::mailer`) drives these; nothing here keeps state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{MailSettings, MailTransportKind, SmtpSettings, SmtpTls};
use crate::domain::{Email, Event, MailId, MailJob, MailKind, Reminder, User};
use crate::links::Links;

/// Why the mail setup could not be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("mail.from: {0}")]
    From(String),
    #[error("mail outbox {path}: {source}")]
    Outbox {
        path: String,
        source: std::io::Error,
    },
    #[error("mail.smtp: {0}")]
    Smtp(String),
}

/// Why one delivery attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct DeliveryError {
    /// A refusal that retrying will not change (SMTP 5xx, an unusable address).
    pub permanent: bool,
    pub detail: String,
}

impl DeliveryError {
    fn permanent(detail: impl Into<String>) -> Self {
        Self {
            permanent: true,
            detail: detail.into(),
        }
    }
}

/// Renders the mails this node queues.
#[derive(Debug, Clone)]
pub struct Composer {
    from: Mailbox,
    node: String,
    links: Links,
}

impl Composer {
    pub fn new(from: &str, node: String, links: Links) -> Result<Self, MailError> {
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| MailError::From(e.to_string()))?;
        Ok(Self { from, node, links })
    }

    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn job(&self, id: MailId, kind: MailKind, to: &Email, subject: String, body: Body) -> MailJob {
        let now = Utc::now();
        MailJob {
            id,
            node: self.node.clone(),
            kind,
            to: to.clone(),
            subject,
            body: body.text,
            html: body.html,
            unsubscribe: body.unsubscribe,
            message_id: format!("<{}.{}@{}>", kind.name(), id, self.from.email.domain()),
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            created_at: now,
        }
    }

    /// The mail sent on sign-up.
    pub fn welcome(&self, user: &User) -> MailJob {
        let body = format!(
            "Hello {name},\n\nwelcome to Corral. Your account is ready: upload images, browse \
             the events near you, and set reminders so you never miss one.\n\nYour username \
             is {name}; sign in with it or with this address.\n",
            name = user.username.as_str()
        );
        self.job(
            MailId(user.id.0),
            MailKind::Welcome { user: user.id },
            &user.email,
            "Welcome to Corral".into(),
            Body {
                text: body,
                html: None,
                unsubscribe: None,
            },
        )
    }

    /// The reminder's mail: the event, its time in the recipient's zone, its place.
    pub fn reminder(&self, reminder: &Reminder, event: &Event, user: &User) -> MailJob {
        let zone = user.time_zone.0;
        let when = |t: DateTime<Utc>| {
            t.with_timezone(&zone)
                .format("%A %-d %B %Y, %H:%M %Z")
                .to_string()
        };
        let (name, starts, ends) = (
            user.username.as_str(),
            when(event.starts_at),
            when(event.ends_at),
        );
        let (event_url, cancel_url) = (
            self.links.event(event.id),
            self.links.unsubscribe(reminder.id),
        );
        let mut text = format!(
            "Hello {name},\n\nyou asked to be reminded of \"{title}\".\n\n\
             When:  {starts} ({zone})\nUntil: {ends}\nWhere: {place}\n",
            title = event.title,
            zone = user.time_zone.name(),
            place = event.location.name,
        );
        if !event.description.is_empty() {
            text.push('\n');
            text.push_str(&event.description);
            text.push('\n');
        }
        if let (Some(event_url), Some(cancel_url)) = (&event_url, &cancel_url) {
            text.push_str(&format!(
                "\nThe event: {event_url}\nRemove this reminder: {cancel_url}\n"
            ));
        }
        let mut html = format!(
            "<!doctype html><html><body><p>Hello {name},</p>\
             <p>you asked to be reminded of <strong>{title}</strong>.</p>\
             <table><tr><th align=\"left\">When</th><td>{starts} ({zone})</td></tr>\
             <tr><th align=\"left\">Until</th><td>{ends}</td></tr>\
             <tr><th align=\"left\">Where</th><td>{place}</td></tr></table>",
            name = escape(name),
            title = escape(&event.title),
            starts = escape(&starts),
            ends = escape(&ends),
            zone = escape(user.time_zone.name()),
            place = escape(&event.location.name),
        );
        if !event.description.is_empty() {
            html.push_str(&format!("<p>{}</p>", escape(&event.description)));
        }
        if let (Some(event_url), Some(cancel_url)) = (&event_url, &cancel_url) {
            html.push_str(&format!(
                "<p><a href=\"{}\">The event</a> · <a href=\"{}\">Remove this reminder</a></p>",
                escape(event_url),
                escape(cancel_url)
            ));
        }
        html.push_str("</body></html>");
        self.job(
            MailId(reminder.id.0),
            MailKind::Reminder {
                reminder: reminder.id,
                remind_at: reminder.remind_at,
            },
            &reminder.email,
            format!("Reminder: {}", event.title),
            Body {
                text,
                html: Some(html),
                unsubscribe: cancel_url,
            },
        )
    }
}

/// A mail's content before it is a job.
struct Body {
    text: String,
    html: Option<String>,
    unsubscribe: Option<String>,
}

/// Text made safe for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Where mail goes.
pub enum Transport {
    /// One `.eml` file per mail in a directory.
    File(AsyncFileTransport<Tokio1Executor>),
    Smtp(Box<SmtpPool>),
}

impl Transport {
    /// Builds the configured transport; for `file` creates the outbox directory.
    pub fn from_settings(mail: &MailSettings, outbox: &Path) -> Result<Arc<Self>, MailError> {
        Ok(Arc::new(match mail.transport {
            MailTransportKind::File => {
                std::fs::create_dir_all(outbox).map_err(|source| MailError::Outbox {
                    path: outbox.display().to_string(),
                    source,
                })?;
                Self::File(AsyncFileTransport::new(outbox))
            }
            MailTransportKind::Smtp => Self::Smtp(Box::new(SmtpPool::new(
                &mail.smtp,
                mail.helo(),
                mail.concurrency,
            )?)),
        }))
    }

    /// One delivery attempt.
    pub async fn deliver(&self, from: &Mailbox, job: &MailJob) -> Result<(), DeliveryError> {
        let to = job
            .to
            .as_str()
            .parse::<Mailbox>()
            .map_err(|e| DeliveryError::permanent(format!("bad recipient: {e}")))?;
        let mut builder = Message::builder()
            .from(from.clone())
            .to(to)
            .subject(job.subject.clone())
            .message_id(Some(job.message_id.clone()));
        // RFC 3834: an automatic mail; autoresponders must not answer it.
        let mut headers = vec![("Auto-Submitted", "auto-generated".to_owned())];
        if let Some(url) = &job.unsubscribe {
            // RFC 2369 and RFC 8058: one-click unsubscribe by a POST to the URL.
            headers.push(("List-Unsubscribe", format!("<{url}>")));
            headers.push(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into()));
        }
        for (name, value) in headers {
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(name),
                value,
            ));
        }
        let text = SinglePart::plain(job.body.clone());
        let built = match &job.html {
            Some(html) => builder.multipart(
                MultiPart::alternative()
                    .singlepart(text)
                    .singlepart(SinglePart::html(html.clone())),
            ),
            None => builder.singlepart(text),
        };
        let message =
            built.map_err(|e| DeliveryError::permanent(format!("unbuildable message: {e}")))?;
        match self {
            Self::File(t) => t.send(message).await.map(drop).map_err(|e| DeliveryError {
                permanent: false,
                detail: format!("outbox: {e}"),
            }),
            Self::Smtp(pool) => pool.send(&message).await,
        }
    }
}

/// SMTP connections kept open between mails, at most `max_idle` of them.
///
/// lettre's own pooled transport leaves Nagle's algorithm on, and it writes a message's
/// body and its closing `.` in two writes: the second then waits for the server's delayed
/// ACK, 40 ms on Linux, on every mail (22 mails/s per connection, lettre PR #1159, not yet
/// released). So this pool opens the TCP connections itself, with `TCP_NODELAY`, and
/// hands them to lettre's `AsyncSmtpConnection` for the SMTP dialogue. Implicit TLS
/// (`tls = "tls"`) still connects through lettre and keeps the stall.
pub struct SmtpPool {
    settings: SmtpSettings,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    idle: std::sync::Mutex<Vec<(AsyncSmtpConnection, std::time::Instant)>>,
    max_idle: usize,
}

/// An idle connection older than this is closed rather than reused (servers drop idle
/// clients after a few minutes).
const SMTP_IDLE: Duration = Duration::from_secs(30);

impl SmtpPool {
    fn new(s: &SmtpSettings, helo: &str, max_idle: usize) -> Result<Self, MailError> {
        let tls = match s.tls {
            SmtpTls::None => None,
            SmtpTls::Starttls | SmtpTls::Tls => Some(
                TlsParameters::new(s.host.clone()).map_err(|e| MailError::Smtp(e.to_string()))?,
            ),
        };
        Ok(Self {
            settings: s.clone(),
            tls,
            credentials: (!s.username.is_empty())
                .then(|| Credentials::new(s.username.clone(), s.password.clone())),
            hello: ClientId::Domain(helo.to_owned()),
            timeout: Duration::from_secs(s.timeout_secs),
            idle: std::sync::Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// Sends one message, on an idle connection or a new one. A connection that failed in
    /// any way is dropped, not reused.
    async fn send(&self, message: &Message) -> Result<(), DeliveryError> {
        let attempt = async {
            let mut conn = self.checkout().await?;
            match conn.send(message.envelope(), &message.formatted()).await {
                Ok(_) => {
                    self.checkin(conn);
                    Ok(())
                }
                Err(e) => {
                    conn.abort().await;
                    Err(smtp_error(e))
                }
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(DeliveryError {
                    permanent: false,
                    detail: format!("smtp: no answer within {} s", self.timeout.as_secs()),
                })
            })
    }

    /// An idle connection that still answers NOOP, or a new one. Failing to connect,
    /// greet, start TLS or authenticate is never a verdict on the mail: it is transient
    /// whatever the reply code (a 535 for a bad password must not dead-letter the queue).
    async fn checkout(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some((mut conn, since)) = idle else {
                return self.connect().await.map_err(|mut e| {
                    e.permanent = false;
                    e
                });
            };
            if since.elapsed() < SMTP_IDLE && conn.test_connected().await {
                return Ok(conn);
            }
            conn.abort().await;
        }
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push((conn, std::time::Instant::now()));
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let s = &self.settings;
        let mut conn = match (&s.tls, &self.tls) {
            (SmtpTls::Tls, Some(tls)) => AsyncSmtpConnection::connect_tokio1(
                (s.host.as_str(), s.port),
                Some(self.timeout),
                &self.hello,
                Some(tls.clone()),
                None,
            )
            .await
            .map_err(smtp_error)?,
            _ => {
                let io = |e: std::io::Error| DeliveryError {
                    permanent: false,
                    detail: format!("smtp: connecting to {}:{}: {e}", s.host, s.port),
                };
                let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
                    .await
                    .map_err(io)?;
                tcp.set_nodelay(true).map_err(io)?;
                let mut conn =
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                        .await
                        .map_err(smtp_error)?;
                if let (SmtpTls::Starttls, Some(tls)) = (&s.tls, &self.tls) {
                    conn.starttls(tls.clone(), &self.hello)
                        .await
                        .map_err(smtp_error)?;
                }
                conn
            }
        };
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials)
                .await
                .map_err(smtp_error)?;
        }
        Ok(conn)
    }
}

fn smtp_error(e: lettre::transport::smtp::Error) -> DeliveryError {
    DeliveryError {
        permanent: e.is_permanent(),
        detail: format!("smtp: {e}"),
    }
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn from_settings(mail: &MailSettings) -> Self {
        Self {
            max_attempts: mail.max_attempts,
            initial: Duration::from_millis(mail.retry_initial_ms),
            max: Duration::from_millis(mail.retry_max_ms),
        }
    }

    /// The pause after the `attempts`-th failure: initial * 2^(attempts-1), capped, then
    /// +-25 % jitter.
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1 << exp).min(self.max);
        let jitter = rand::random_range(0.75..=1.25);
        base.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for (attempts, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = p.delay(attempts).as_millis();
            assert!(
                (base * 3 / 4..=base * 5 / 4).contains(&d),
                "attempt {attempts}: {d} ms for base {base}"
            );
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| p.delay(3)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }
}

//! Typed settings: `config/default.toml` (compiled in) < `--config FILE` < environment
//! (`CORRAL_SECTION__KEY`) < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// The defaults, documented key by key.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub storage: StorageSettings,
    pub scylla: ScyllaSettings,
    pub uploads: UploadSettings,
    pub images: ImageSettings,
    pub actors: ActorSettings,
    pub accounts: AccountSettings,
    pub rate_limits: RateLimitSettings,
    pub node: NodeSettings,
    pub reminders: ReminderSettings,
    pub mail: MailSettings,
    pub ws: WsSettings,
    pub optimizer: OptimizerSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: SocketAddr,
    pub public_url: String,
    pub shutdown_grace_secs: u64,
    pub request_timeout_secs: u64,
    pub max_json_bytes: usize,
    pub cors_origins: Vec<String>,
    pub header_read_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    #[serde(deserialize_with = "nets")]
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    Scylla,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub cache_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaSettings {
    #[serde(deserialize_with = "list_or_csv")]
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    pub datacenter: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSettings {
    pub max_bytes: u64,
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_decode_bytes: u64,
    pub max_in_flight: usize,
    pub decoders: usize,
    pub process_timeout_secs: u64,
    pub max_duration_secs: u64,
    pub min_bytes_per_sec: u64,
    pub min_rate_window_secs: u64,
    pub max_in_flight_per_client: usize,
    pub allow_anonymous: bool,
    pub draft_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    pub reservoir_capacity: usize,
    pub file_cache_mib: u64,
    pub variant_sizes: Vec<u32>,
    pub variant_makers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSettings {
    pub max_restarts: u32,
    pub restart_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub session_ttl_secs: u64,
    pub cache_ttl_secs: u64,
    pub max_secondary_emails: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub reads: TokenBucket,
    pub writes: TokenBucket,
    pub uploads: TokenBucket,
    pub auth: TokenBucket,
}

/// A token bucket: refills `per_minute` tokens a minute, holds at most `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReminderSettings {
    pub lookahead_secs: u64,
    pub tick_ms: u64,
    pub lease_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsSettings {
    pub max_connections: usize,
    pub queue: usize,
    pub max_message_bytes: usize,
    pub ping_secs: u64,
    pub idle_secs: u64,
    pub feed_poll_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSettings {
    pub window: Window,
    #[serde(deserialize_with = "list_or_csv")]
    pub eager: Vec<String>,
    pub recompress: bool,
    pub batch: usize,
    pub pause_ms: u64,
    pub rest_secs: u64,
}

/// When the optimizer may work: `always`, `never`, or `HH:MM-HH:MM` in the server's time
/// zone (it may wrap past midnight: `22:00-04:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Window {
    Always,
    Never,
    /// From and until, in minutes after midnight; `from != until`.
    Daily {
        from: u16,
        until: u16,
    },
}

impl Window {
    /// Whether `time` (a wall-clock time of day) is inside.
    pub fn contains(self, time: chrono::NaiveTime) -> bool {
        use chrono::Timelike;
        let minute = (time.hour() * 60 + time.minute()) as u16;
        match self {
            Window::Always => true,
            Window::Never => false,
            Window::Daily { from, until } if from < until => (from..until).contains(&minute),
            Window::Daily { from, until } => minute >= from || minute < until,
        }
    }
}

impl TryFrom<String> for Window {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let clock = |s: &str| -> Option<u16> {
            let s = s.trim();
            let digits = s.len() == 5
                && s.bytes().enumerate().all(|(i, b)| {
                    if i == 2 {
                        b == b':'
                    } else {
                        b.is_ascii_digit()
                    }
                });
            let (h, m) = s.split_once(':')?;
            let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
            (digits && h < 24 && m < 60).then_some(h * 60 + m)
        };
        let window = match text.trim() {
            "always" => Window::Always,
            "never" => Window::Never,
            other => other
                .split_once('-')
                .and_then(|(a, b)| Some((clock(a)?, clock(b)?)))
                .filter(|(a, b)| a != b)
                .map(|(from, until)| Window::Daily { from, until })
                .ok_or_else(|| {
                    format!(
                        "{text:?} is not a window: use \"always\", \"never\" or \"HH:MM-HH:MM\" (two different times)"
                    )
                })?,
        };
        Ok(window)
    }
}

impl From<Window> for String {
    fn from(window: Window) -> String {
        match window {
            Window::Always => "always".into(),
            Window::Never => "never".into(),
            Window::Daily { from, until } => format!(
                "{:02}:{:02}-{:02}:{:02}",
                from / 60,
                from % 60,
                until / 60,
                until % 60
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransportKind {
    File,
    Smtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: only for a relay on loopback or a trusted network.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    pub transport: MailTransportKind,
    pub outbox_dir: PathBuf,
    pub from: String,
    pub link_secret: Secret,
    pub helo_name: String,
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub concurrency: usize,
    pub smtp: SmtpSettings,
}

/// A setting that must not show in logs; `Debug` prints it redacted.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: String,
    pub password: String,
    pub timeout_secs: u64,
}

impl MailSettings {
    /// The domain of `from` (`corral@example.org` or `Corral <corral@example.org>`).
    pub fn sender_domain(&self) -> &str {
        let address = self.from.trim().trim_end_matches('>');
        address
            .rsplit_once('@')
            .map_or("", |(_, domain)| domain.trim())
    }

    /// The EHLO name: `helo_name`, or the sender's domain.
    pub fn helo(&self) -> &str {
        match self.helo_name.trim() {
            "" => self.sender_domain(),
            name => name,
        }
    }
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
    pub format: LogFormat,
}

/// Values given as command-line flags; they win over every other layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl Settings {
    /// Loads every layer and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // CORRAL_ADMIN_PASSWORD belongs to `corral admin create`, not to the settings.
        figment = figment.merge(
            Env::prefixed("CORRAL_")
                .split("__")
                .ignore(&["admin_password"]),
        );
        if let Some(bind) = overrides.bind {
            figment = figment.merge(("http.bind", bind.to_string()));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(("storage.data_dir", dir));
        }
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let u = &self.uploads;
        positive("uploads.max_bytes", u.max_bytes)?;
        positive("uploads.max_width", u64::from(u.max_width))?;
        positive("uploads.max_height", u64::from(u.max_height))?;
        positive("uploads.max_pixels", u.max_pixels)?;
        positive("uploads.max_decode_bytes", u.max_decode_bytes)?;
        positive("uploads.max_in_flight", u.max_in_flight as u64)?;
        positive("uploads.process_timeout_secs", u.process_timeout_secs)?;
        positive("uploads.min_rate_window_secs", u.min_rate_window_secs)?;
        positive(
            "uploads.max_in_flight_per_client",
            u.max_in_flight_per_client as u64,
        )?;
        positive("uploads.draft_ttl_secs", u.draft_ttl_secs)?;
        if u.draft_ttl_secs > MAX_DRAFT_TTL_SECS {
            return Err(ConfigError::Invalid {
                key: "uploads.draft_ttl_secs",
                reason: format!("must be at most {MAX_DRAFT_TTL_SECS} (a year)"),
            });
        }
        let h = &self.http;
        positive("http.header_read_timeout_secs", h.header_read_timeout_secs)?;
        positive("http.idle_timeout_secs", h.idle_timeout_secs)?;
        positive("http.max_connections", h.max_connections as u64)?;
        positive(
            "images.reservoir_capacity",
            self.images.reservoir_capacity as u64,
        )?;
        let sizes = &self.images.variant_sizes;
        if sizes
            .iter()
            .any(|&n| n == 0 || n > u.max_width.max(u.max_height))
        {
            return Err(ConfigError::Invalid {
                key: "images.variant_sizes",
                reason: format!(
                    "sizes must be 1 to {} pixels (the largest upload side)",
                    u.max_width.max(u.max_height)
                ),
            });
        }
        positive(
            "actors.restart_window_secs",
            self.actors.restart_window_secs,
        )?;
        let ks = &self.scylla.keyspace;
        let ks_ok = !ks.is_empty()
            && ks.len() <= 48
            && ks.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ks_ok {
            return Err(ConfigError::Invalid {
                key: "scylla.keyspace",
                reason: "use 1 to 48 letters, digits or '_'".into(),
            });
        }
        if self.storage.backend == Backend::Scylla && self.scylla.nodes.is_empty() {
            return Err(ConfigError::Invalid {
                key: "scylla.nodes",
                reason: "the scylla backend needs at least one node".into(),
            });
        }
        let r = &self.reminders;
        positive("reminders.lookahead_secs", r.lookahead_secs)?;
        positive("reminders.tick_ms", r.tick_ms)?;
        positive("reminders.lease_secs", r.lease_secs)?;
        let w = &self.ws;
        positive("ws.max_connections", w.max_connections as u64)?;
        positive("ws.queue", w.queue as u64)?;
        positive("ws.max_message_bytes", w.max_message_bytes as u64)?;
        positive("ws.ping_secs", w.ping_secs)?;
        if !(1..=60_000).contains(&w.feed_poll_ms) {
            return Err(ConfigError::Invalid {
                key: "ws.feed_poll_ms",
                reason: "must be from 1 to 60000 (the push feed keeps notices five minutes)".into(),
            });
        }
        if w.idle_secs <= w.ping_secs {
            return Err(ConfigError::Invalid {
                key: "ws.idle_secs",
                reason: format!(
                    "must be longer than ws.ping_secs ({}), or every connection times out",
                    w.ping_secs
                ),
            });
        }
        // A lease is renewed at the first tick in its second half, so ticks must come
        // more often than that; and a bucket must be loaded before its first minute.
        if r.tick_ms >= r.lease_secs * 500 {
            return Err(ConfigError::Invalid {
                key: "reminders.tick_ms",
                reason: "must be less than half of reminders.lease_secs".into(),
            });
        }
        if r.tick_ms > r.lookahead_secs * 1000 {
            return Err(ConfigError::Invalid {
                key: "reminders.tick_ms",
                reason: "must not exceed reminders.lookahead_secs".into(),
            });
        }
        let m = &self.mail;
        positive("mail.max_attempts", u64::from(m.max_attempts))?;
        positive("mail.retry_initial_ms", m.retry_initial_ms)?;
        positive("mail.concurrency", m.concurrency as u64)?;
        positive("mail.smtp.timeout_secs", m.smtp.timeout_secs)?;
        if m.retry_max_ms < m.retry_initial_ms {
            return Err(ConfigError::Invalid {
                key: "mail.retry_max_ms",
                reason: "must not be less than mail.retry_initial_ms".into(),
            });
        }
        if m.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ConfigError::Invalid {
                key: "mail.from",
                reason: format!(
                    "{:?} is not a mailbox such as \"Corral <corral@example.com>\"",
                    m.from
                ),
            });
        }
        let id = &self.node.id;
        if id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::Invalid {
                key: "node.id",
                reason: "use at most 64 letters, digits, '-', '_' or '.'".into(),
            });
        }
        if self.mail.transport == MailTransportKind::Smtp {
            let domain = self.mail.sender_domain();
            if !domain.contains('.') || domain == "localhost" || domain.ends_with(".localhost") {
                return Err(ConfigError::Invalid {
                    key: "mail.from",
                    reason: format!(
                        "with mail.transport = \"smtp\" the sender must be on a real domain, not {domain:?}: set mail.from (e.g. CORRAL_MAIL__FROM='Corral <corral@example.org>')"
                    ),
                });
            }
        }
        let o = &self.optimizer;
        positive("optimizer.batch", o.batch as u64)?;
        // 0 would start a pass again at once, every few milliseconds on an idle store.
        positive("optimizer.rest_secs", o.rest_secs)?;
        self.eager_variants()?;
        let url = &self.http.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "http.public_url",
                reason: "must be empty or start with http:// or https://".into(),
            });
        }
        Ok(())
    }

    /// Where the file mail transport writes: `mail.outbox_dir`, or `<data_dir>/outbox`.
    pub fn outbox_dir(&self) -> PathBuf {
        if self.mail.outbox_dir.as_os_str().is_empty() {
            self.storage.data_dir.join("outbox")
        } else {
            self.mail.outbox_dir.clone()
        }
    }

    /// Uploads decoded at once: the configured number, or cores less one (at least one).
    pub fn upload_decoders(&self) -> usize {
        per_core_less_one(self.uploads.decoders)
    }

    /// `optimizer.eager`, parsed (against `images.variant_sizes`).
    pub fn eager_variants(&self) -> Result<Vec<crate::media::Asked>, ConfigError> {
        self.optimizer
            .eager
            .iter()
            .map(|query| {
                crate::media::Asked::from_query(query, &self.images.variant_sizes).map_err(
                    |reason| ConfigError::Invalid {
                        key: "optimizer.eager",
                        reason: format!("{query:?}: {reason}"),
                    },
                )
            })
            .collect()
    }

    /// Variants made at once (`images.variant_makers`; 0: one per core, less one).
    pub fn variant_makers(&self) -> usize {
        per_core_less_one(self.images.variant_makers)
    }
}

/// `n`, or for 0 one per core less one (at least one).
fn per_core_less_one(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
        n => n,
    }
}

/// The longest a draft may wait to be attached (`uploads.draft_ttl_secs`): a year.
const MAX_DRAFT_TTL_SECS: u64 = 365 * 24 * 3600;

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            key,
            reason: "must be greater than 0".into(),
        });
    }
    Ok(())
}

/// Accepts `["a", "b"]` from a file or `"a,b"` from the environment.
/// Networks as CIDRs (`10.0.0.0/8`) or single addresses (`127.0.0.1`), in a list or one
/// comma-separated string (for environment variables).
fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    list_or_csv(d)?
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not an address or a network (CIDR, like 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Nodes {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Nodes::deserialize(d)? {
        Nodes::List(list) => list,
        Nodes::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_may_wrap_past_midnight() {
        let at = |h, m| chrono::NaiveTime::from_hms_opt(h, m, 0).unwrap();
        let night = Window::try_from("02:00-05:00".to_owned()).unwrap();
        assert!(night.contains(at(2, 0)) && night.contains(at(4, 59)));
        assert!(!night.contains(at(5, 0)) && !night.contains(at(1, 59)));
        let late = Window::try_from("22:30-04:00".to_owned()).unwrap();
        assert!(late.contains(at(23, 0)) && late.contains(at(3, 0)));
        assert!(!late.contains(at(12, 0)) && !late.contains(at(22, 29)));
        assert_eq!(String::from(late), "22:30-04:00");
        assert!(
            Window::try_from("always".to_owned())
                .unwrap()
                .contains(at(12, 0))
        );
        assert!(
            !Window::try_from("never".to_owned())
                .unwrap()
                .contains(at(12, 0))
        );
        for bad in [
            "2:00-5:00",
            "02:00-02:00",
            "25:00-01:00",
            "02:00",
            "nightly",
            "",
            "+2:00-05:00",
        ] {
            assert!(Window::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn eager_variants_must_be_allowed_and_name_their_format() {
        let mut settings = Settings::load(None, &Overrides::default()).unwrap();
        assert_eq!(settings.eager_variants().unwrap().len(), 2);
        for bad in [
            "w=300&format=webp",
            "w=256&format=auto",
            "w=256&q=80",
            "format=webp",
            "w=256&w=512",
            "w=+256",
        ] {
            settings.optimizer.eager = vec![bad.into()];
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains("optimizer.eager"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_compiled_in_defaults_load_and_validate() {
        let settings: Settings = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        settings.validate().unwrap();
        assert_eq!(settings.storage.backend, Backend::Embedded);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let toml = format!("{DEFAULT_TOML}\n[extra]\n");
        let bad = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[uploads]\nmax_bytes = \"lots\""))
            .extract::<Settings>()
            .unwrap_err();
        assert!(bad.to_string().contains("max_bytes"), "{bad}");
        assert!(
            Figment::from(Toml::string(&toml))
                .extract::<Settings>()
                .is_err()
        );
        let mut zero: Settings = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        zero.uploads.max_in_flight = 0;
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("uploads.max_in_flight")
        );
        // A draft lifetime past a year would put expiry dates out of RFC 3339's range.
        let mut forever: Settings = Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        forever.uploads.draft_ttl_secs = u64::MAX;
        let e = forever.validate().unwrap_err().to_string();
        assert!(e.contains("uploads.draft_ttl_secs"), "{e}");
    }
}

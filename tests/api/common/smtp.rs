//! A real SMTP server on loopback for the mail tests: it speaks enough SMTP for lettre
//! (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), keeps every accepted message, refuses
//! chosen recipients with 550, and can be stopped (connections dropped, port closed) and
//! started again on the same port to play "the mail server is down".

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    pub at: Instant,
}

impl Received {
    /// A header's value (first occurrence, unfolded lines not needed for ours).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    rejected: Mutex<HashSet<String>>,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let server = Some(tokio::spawn(serve(listener, shared.clone())));
        Self {
            addr,
            shared,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answers 550 to `RCPT TO` for this address from now on.
    pub fn reject(&self, address: &str) {
        self.shared
            .rejected
            .lock()
            .unwrap()
            .insert(address.to_lowercase());
    }

    /// Closes the port and drops every open connection.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Listens on the same port again.
    pub async fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind smtp on {}: {e}", self.addr),
            }
        };
        self.server = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many messages match, without copying them.
    pub fn count(&self, matches: impl Fn(&Received) -> bool) -> usize {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| matches(m))
            .count()
    }

    /// Messages to `address`.
    pub fn to(&self, address: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// Waits until some message matches, and returns it.
    pub async fn wait_for(
        &self,
        within: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.received().into_iter().find(|m| matches(m)) {
                return Some(m);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections until aborted; aborting also drops the connections (they run in a
/// JoinSet owned by this task).
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(session(stream, shared.clone()));
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg.rfind('>').unwrap_or(arg.len());
    arg[start..end].trim().to_lowercase()
}

async fn reply(w: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> bool {
    w.write_all(format!("{text}\r\n").as_bytes()).await.is_ok()
}

async fn session(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if !reply(&mut write, "220 sink ESMTP").await {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let answer = match verb.as_str() {
            "EHLO" => "250-sink\r\n250 8BITMIME".to_owned(),
            "HELO" | "NOOP" => "250 ok".to_owned(),
            "RSET" => {
                (from, to) = (String::new(), Vec::new());
                "250 ok".to_owned()
            }
            "MAIL" => {
                from = address(&command[4..]);
                to.clear();
                "250 ok".to_owned()
            }
            "RCPT" => {
                let rcpt = address(&command[4..]);
                if shared.rejected.lock().unwrap().contains(&rcpt) {
                    "550 5.1.1 no such mailbox".to_owned()
                } else {
                    to.push(rcpt);
                    "250 ok".to_owned()
                }
            }
            "DATA" => {
                if to.is_empty() {
                    "554 no valid recipients".to_owned()
                } else {
                    if !reply(&mut write, "354 go ahead").await {
                        return;
                    }
                    let mut data = String::new();
                    loop {
                        line.clear();
                        match lines.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == ".\r\n" || line == ".\n" {
                            break;
                        }
                        let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                        data.push_str(unstuffed);
                    }
                    shared.received.lock().unwrap().push(Received {
                        from: from.clone(),
                        to: std::mem::take(&mut to),
                        data,
                        at: Instant::now(),
                    });
                    "250 queued".to_owned()
                }
            }
            "QUIT" => {
                let _ = reply(&mut write, "221 bye").await;
                return;
            }
            _ => "502 command not implemented".to_owned(),
        };
        if !reply(&mut write, &answer).await {
            return;
        }
    }
}

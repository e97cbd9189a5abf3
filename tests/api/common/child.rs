//! The real `corral` process (the binary Cargo built for these tests) on a loopback port,
//! for tests that must stop the process itself: SIGKILL in the middle of a write, SIGTERM,
//! a restart on the same data dir. Configuration goes in as `CORRAL_<SECTION>__<KEY>`
//! variables, as an operator would set it.
//!
//! A [`Corral`] owns a directory holding the data dir (`<root>/data`) and the log
//! (`<root>/corral.log`, every start's stdout and stderr appended, each start headed by a
//! line). If the test panics while the `Corral` is alive, the log's tail is printed.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take to answer `/readyz` 200 (2 shared cores, a store to reopen).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Attempts at finding a free port (another process may take the one picked meanwhile).
const BIND_ATTEMPTS: usize = 5;
/// Lines of the log printed when a test fails.
const LOG_TAIL: usize = 120;

/// How to run `corral` on one data dir; start it as often as needed.
pub struct Corral {
    data_dir: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    starts: usize,
}

/// A running `corral serve`. Dropping it kills the process (SIGKILL).
pub struct Running {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    child: Child,
}

impl Corral {
    /// A server whose data dir will be `<root>/data`; `root` must exist.
    pub fn new(root: &Path) -> Self {
        Self {
            data_dir: root.join("data"),
            log: root.join("corral.log"),
            // Plain logs, quiet enough to read, whatever the environment says.
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
                // No variants made in the background unless a test asks for it.
                ("CORRAL_OPTIMIZER__WINDOW".into(), "never".into()),
            ],
            starts: 0,
        }
    }

    /// Sets (or replaces) a variable for every later start and CLI run
    /// (`CORRAL_SECTION__KEY=value`).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `corral --data-dir <data> <args>` to completion with the configured
    /// variables plus `extra` (a CLI command such as `admin create`). Its output is
    /// appended to the log too.
    pub fn cli(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut command = self.command();
        command.args(args);
        command.envs(extra.iter().copied());
        let output = command.output().expect("run the corral binary");
        self.append_log(&format!(
            "----- corral {} ({}) -----\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        ));
        output
    }

    /// Starts `corral serve` on a free loopback port and waits until `/readyz` answers
    /// 200. Panics (with the log) if it exits or is not ready in time.
    pub async fn start(&mut self) -> Running {
        for attempt in 1..=BIND_ATTEMPTS {
            let addr = free_port();
            self.starts += 1;
            let header = format!("----- start {} on {addr} -----\n", self.starts);
            let from = self.log_len();
            self.append_log(&header);
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("open the log");
            let mut command = self.command();
            command
                .args(["serve", "--bind", &addr.to_string()])
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log);
            let child = command.spawn().expect("spawn the corral binary");
            let mut running = Running {
                addr,
                client: client(),
                child,
            };
            match running.wait_ready(READY_WITHIN).await {
                Ok(()) => {
                    running.wait_sigterm_handled(READY_WITHIN).await;
                    return running;
                }
                Err(Exit(status)) => {
                    let said = self.log_since(from);
                    let port_taken = said.contains("in use") || said.contains("AddrInUse");
                    if port_taken && attempt < BIND_ATTEMPTS {
                        continue;
                    }
                    panic!("corral exited ({status}) before it was ready:\n{said}");
                }
                Err(NotReady) => {
                    drop(running);
                    panic!(
                        "corral was not ready within {READY_WITHIN:?}:\n{}",
                        self.log_since(from)
                    );
                }
            }
        }
        unreachable!("every attempt either returns or panics")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    fn append_log(&self, text: &str) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the log");
        log.write_all(text.as_bytes()).expect("write the log");
    }

    fn log_len(&self) -> usize {
        self.log().len()
    }

    fn log_since(&self, from: usize) -> String {
        self.log().get(from..).unwrap_or_default().to_owned()
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last {LOG_TAIL} lines of {} -----\n{}",
                self.log.display(),
                self.log_tail(LOG_TAIL)
            );
        }
    }
}

/// Why a start did not become ready.
enum NotReadyReason {
    Exit(ExitStatus),
    NotReady,
}
use NotReadyReason::{Exit, NotReady};

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the process dies wherever it is, with no chance to clean up.
    pub fn kill(mut self) -> ExitStatus {
        self.kill_now()
    }

    /// SIGTERM, then waits (at most `within`) for the orderly shutdown; panics if the
    /// process does not exit in time (it is killed first) or exits unsuccessfully.
    pub async fn stop(mut self, within: Duration) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.pid());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for corral") {
                assert!(status.success(), "corral did not stop cleanly: {status}");
                return status;
            }
            if Instant::now() >= deadline {
                self.kill_now();
                panic!("corral did not stop within {within:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/readyz` until 200, the process exits, or `within` passes.
    async fn wait_ready(&mut self, within: Duration) -> Result<(), NotReadyReason> {
        let deadline = Instant::now() + within;
        let readyz = self.url("/readyz");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for corral") {
                return Err(Exit(status));
            }
            let ready = self
                .client
                .get(&readyz)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NotReady);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the process handles SIGTERM (Linux: bit 15 of `SigCgt` in
    /// `/proc/<pid>/status`; elsewhere it returns at once). `corral serve` answers
    /// `/readyz` 200 a moment before it installs its SIGTERM handler (the shutdown future
    /// is first polled on a task of its own), and a SIGTERM in that moment kills it
    /// outright instead of stopping it in order.
    async fn wait_sigterm_handled(&mut self, within: Duration) {
        const SIGTERM_BIT: u64 = 1 << (15 - 1);
        let status = PathBuf::from(format!("/proc/{}/status", self.pid()));
        let deadline = Instant::now() + within;
        let mut waited = false;
        loop {
            let Ok(text) = std::fs::read_to_string(&status) else {
                return;
            };
            let caught = text
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
            match caught {
                None => return,
                Some(mask) if mask & SIGTERM_BIT != 0 => {
                    if waited {
                        eprintln!("note: corral answered /readyz 200 before it handled SIGTERM");
                    }
                    return;
                }
                Some(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "corral never installed a SIGTERM handler"
            );
            waited = true;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill_now(&mut self) -> ExitStatus {
        // On Unix `Child::kill` is SIGKILL. An error means it has exited already.
        let _ = self.child.kill();
        self.child.wait().expect("reap corral")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_now();
        }
    }
}

/// A loopback port nothing listens on right now (it may be taken before it is used:
/// [`Corral::start`] retries).
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

/// A client for loopback only: no proxy, bounded requests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// Runs the `corral` binary to completion with `args` and `env`, output captured; fails
/// the test if it runs for 30 s (a command that should have stopped at once).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the corral binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait for corral").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("corral {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("corral's output")
}

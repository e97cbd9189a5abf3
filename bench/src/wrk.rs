//! Closed-loop throughput measured by `wrk` (Debian's package), when it is installed: a C
//! generator with headroom, so the numbers are the servers' and not the generator's (the
//! bench's own generator tops out below what a bare handler can answer on two cores).
//! Every answer that is not 2xx or 3xx, and every socket error, counts as an error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::load::Mode;
use crate::report::Measured;
use crate::servers::{self, Server};

/// `wrk` on PATH, if it is installed.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|candidate| candidate.is_file())
}

/// Runs `wrk` against `server` for `duration` on `connections` connections, cycling
/// through `paths`; measures its CPU and the server's.
pub async fn measure(
    wrk: &std::path::Path,
    server: &Server,
    label: &str,
    connections: usize,
    duration: Duration,
    paths: &[String],
) -> anyhow::Result<Measured> {
    let dir = tempfile::TempDir::new()?;
    let script = dir.path().join("paths.lua");
    let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    std::fs::write(
        &script,
        format!(
            "local paths = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n",
            list.join(", ")
        ),
    )?;
    let secs = duration.as_secs().max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(connections);
    let mut child = tokio::process::Command::new(wrk)
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{}/", server.addr))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("start wrk")?;
    let pid = child.id().context("wrk's pid")?;
    let server_before = server.cpu_seconds();
    // wrk's CPU: read from /proc until it exits (the last reading misses at most 50 ms).
    let mut wrk_cpu = 0.0;
    let output = loop {
        tokio::select! {
            out = child.wait() => { out?; break child.wait_with_output().await?; }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                wrk_cpu = servers::proc_cpu(pid).max(wrk_cpu);
            }
        }
    };
    let server_cpu = server.cpu_seconds() - server_before;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&text, label, connections, secs as f64, server_cpu, wrk_cpu)
}

/// Reads wrk's report.
fn parse(
    text: &str,
    label: &str,
    connections: usize,
    secs: f64,
    server_cpu: f64,
    wrk_cpu: f64,
) -> anyhow::Result<Measured> {
    let number_after = |prefix: &str| -> Option<f64> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let percentile = |p: &str| -> Option<f64> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|rest| millis(rest.trim()))
    };
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .context("wrk printed no request count")?;
    let non_2xx = number_after("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    let socket_errors: u64 = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let max_ms = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("Latency "))
        .and_then(|rest| rest.split_whitespace().nth(2))
        .and_then(millis)
        .unwrap_or(0.0);
    let errors = non_2xx + socket_errors;
    Ok(Measured {
        target: format!("{label} (wrk)"),
        mode: Mode::Closed { connections },
        requests,
        ok: requests.saturating_sub(non_2xx),
        unavailable: 0,
        errors,
        rps: number_after("Requests/sec:").context("wrk printed no Requests/sec")?,
        p50_ms: percentile("50%").unwrap_or(0.0),
        p90_ms: percentile("90%").unwrap_or(0.0),
        p99_ms: percentile("99%").unwrap_or(0.0),
        max_ms,
        server_cpu_pct: 100.0 * server_cpu / secs,
        generator_cpu_pct: 100.0 * wrk_cpu / secs,
    })
}

/// `812.00us`, `3.20ms`, `1.02s` or `1.50m`, in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  512.33us  20.12ms   90.12%
    Req/Sec    32.12k     2.01k   36.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.50ms
     99%    3.20ms
  640000 requests in 10.00s, 3.00GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  64000.50
Transfer/sec:    300.00MB
";

    #[test]
    fn wrk_reports_are_read() {
        let m = parse(SAMPLE, "corral", 64, 10.0, 5.0, 3.0).unwrap();
        assert_eq!(m.requests, 640_000);
        assert_eq!(m.errors, 15);
        assert_eq!(m.ok, 639_988);
        assert!((m.rps - 64000.5).abs() < 1e-9);
        assert!((m.p50_ms - 0.812).abs() < 1e-9);
        assert!((m.p99_ms - 3.2).abs() < 1e-9);
        assert!((m.max_ms - 20.12).abs() < 1e-9);
        assert!((m.server_cpu_pct - 50.0).abs() < 1e-9);
        assert!((m.generator_cpu_pct - 30.0).abs() < 1e-9);
    }
}

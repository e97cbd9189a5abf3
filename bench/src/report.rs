//! Results: a table on stdout, a JSON file and an SVG chart under `bench/results/`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::load::{Mode, Run};

/// One target's figures in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub target: String,
    pub mode: Mode,
    pub requests: u64,
    pub ok: u64,
    /// 503 answers (load shed), counted apart from errors.
    pub unavailable: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU used, in % of one core, by the server process and by this generator.
    pub server_cpu_pct: f64,
    pub generator_cpu_pct: f64,
}

impl Measured {
    pub fn of(
        target: &str,
        mode: Mode,
        run: &Run,
        server_cpu_s: f64,
        generator_cpu_s: f64,
    ) -> Self {
        let h = &run.tally.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        let requests = run.tally.ok + run.tally.unavailable + run.tally.errors;
        Self {
            target: target.to_owned(),
            mode,
            requests,
            ok: run.tally.ok,
            unavailable: run.tally.unavailable,
            errors: run.tally.errors,
            rps: requests as f64 / secs,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            server_cpu_pct: 100.0 * server_cpu_s / secs,
            generator_cpu_pct: 100.0 * generator_cpu_s / secs,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub started_at: String,
    pub machine: String,
    pub command: String,
    pub results: Vec<Measured>,
    /// Named ratios, e.g. "corral / bare axum handler (req/s)".
    pub ratios: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

/// A one-line description of this machine: cores and CPU model.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores, {model}, {mem_gib:.0} GiB")
}

impl Report {
    pub fn print(&self) {
        println!("\n== {} ({}) ==", self.scenario, self.machine);
        println!(
            "{:<28} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>8} {:>8}",
            "target",
            "requests",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "errors",
            "503s",
            "srv cpu",
            "gen cpu"
        );
        for m in &self.results {
            println!(
                "{:<28} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>7} {:>6} {:>7.0}% {:>7.0}%",
                m.target,
                m.requests,
                m.rps,
                m.p50_ms,
                m.p90_ms,
                m.p99_ms,
                m.max_ms,
                m.errors,
                m.unavailable,
                m.server_cpu_pct,
                m.generator_cpu_pct
            );
        }
        for (name, ratio) in &self.ratios {
            println!("{name}: {ratio:.2}");
        }
        for note in &self.notes {
            println!("note: {note}");
        }
    }

    /// Writes `<dir>/<scenario>.json` and `<dir>/<scenario>.svg`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)?;
        let svg = dir.join(format!("{}.svg", self.scenario));
        self.chart(&svg)?;
        Ok((json, svg))
    }

    /// Latency at each percentile, one line per target, throughput in the legend.
    fn chart(&self, path: &Path) -> anyhow::Result<()> {
        const LABELS: [&str; 4] = ["p50", "p90", "p99", "max"];
        let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let top = self
            .results
            .iter()
            .map(|m| m.max_ms)
            .fold(1.0_f64, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: latency by percentile ({})",
                    self.scenario, self.machine
                ),
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..3usize, (0.01f64..top * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(4)
            .x_label_formatter(&|i| LABELS.get(*i).copied().unwrap_or("").to_owned())
            .y_desc("latency, ms (log scale)")
            .draw()?;
        for (k, m) in self.results.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let points: Vec<(usize, f64)> = [m.p50_ms, m.p90_ms, m.p99_ms, m.max_ms]
                .iter()
                .enumerate()
                .map(|(i, v)| (i, v.max(0.01)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(format!(
                    "{}: {:.0} req/s, {} errors",
                    m.target, m.rps, m.errors
                ))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(PointSeries::of_element(points, 4, color, &|c, s, st| {
                Circle::new(c, s, st.filled())
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

//! Every scenario that exists starts its servers, seeds, runs and stops, and writes its
//! table, JSON and chart (tiny sizes; the figures mean nothing here).

use std::process::Command;

#[test]
fn every_scenario_runs_end_to_end() {
    let out = tempfile::TempDir::new().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_corral-bench"))
        .args(["run", "--smoke", "--out"])
        .arg(out.path())
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for scenario in [
        "random",
        "files",
        "events",
        "uploads",
        "reminders",
        "ws",
        "scale",
        "variants",
    ] {
        let json = std::fs::read_to_string(out.path().join(format!("{scenario}.json")))
            .unwrap_or_else(|e| panic!("{scenario}.json: {e}\n{stdout}"));
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        for result in report["results"].as_array().unwrap() {
            assert!(result["ok"].as_u64().unwrap() > 0, "{scenario}: {result}");
            assert_eq!(result["errors"], 0, "{scenario}: {result}");
        }
        if scenario == "variants" {
            // Too short for wrk: the first request (the making) is what the smoke shows.
            let notes = report["notes"].to_string();
            assert!(notes.contains("; 0 errors"), "{notes}");
        }
        let svg = std::fs::read_to_string(out.path().join(format!("{scenario}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{scenario}.svg");
    }
}

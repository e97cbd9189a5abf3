//! A 64 MiB upload is streamed to disk, never buffered whole. The measurement runs alone
//! in a child process (this test binary again, running only the ignored
//! `measured_alone`), so the process's peak RSS belongs to it alone.
//!
//! The upload is a valid 1x1 PNG carrying a 64 MiB private ancillary chunk, which decoders
//! skip without buffering: so decode memory stays tiny and what is measured is the body path.

use crate::common::{TestApp, png, png_chunk};

const BODY_MIB: usize = 64;
const CHUNK: usize = 64 * 1024;
/// Peak RSS growth allowed while the upload runs: buffers of a fixed size (socket, hyper,
/// tokio's file buffer, the client's chunk) fit easily; a buffered body (64 MiB) does not.
const ALLOWED_GROWTH: u64 = 24 << 20;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

/// The private chunk's data, generated on the fly: byte `i` is `i % 251`.
fn filler(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn a_64_mib_upload_never_buffers_more_than_a_fixed_chunk() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "upload_memory::measured_alone",
            "--ignored",
            "--test-threads=1",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the measurement in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the measurement failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The measurement itself; run by the test above in a process of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run alone, in a child process, by a_64_mib_upload_never_buffers_more_than_a_fixed_chunk"]
async fn measured_alone() {
    let app = TestApp::spawn_with(|s| s.uploads.max_bytes = ((BODY_MIB + 1) << 20) as u64).await;
    app.upload_png(png(8, 8, 1)).await; // warm up lazily allocated state

    // Head: the PNG signature and IHDR; tail: its IDAT and IEND. Between them, one chunk.
    let small = png(1, 1, 2);
    let (head, tail) = (small[..33].to_vec(), small[33..].to_vec());
    let data_len = BODY_MIB << 20;
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"prVt");
    for offset in (0..data_len).step_by(CHUNK) {
        crc.update(&filler(offset, CHUNK.min(data_len - offset)));
    }
    let crc = crc.finalize();
    let mut chunk_head = (data_len as u32).to_be_bytes().to_vec();
    chunk_head.extend_from_slice(b"prVt");
    assert_eq!(
        png_chunk(b"prVt", &[]).len(),
        12,
        "chunk framing is length + type + data + crc"
    );

    let parts = std::iter::once(head.clone())
        .chain(std::iter::once(chunk_head))
        .chain(
            (0..data_len)
                .step_by(CHUNK)
                .map(move |o| filler(o, CHUNK.min(data_len - o))),
        )
        .chain(std::iter::once(crc.to_be_bytes().to_vec()))
        .chain(std::iter::once(tail.clone()));
    let total = head.len() + 8 + data_len + 4 + tail.len();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        parts.map(Ok::<_, std::io::Error>),
    ));

    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = if reset {
        status_kib("VmRSS:")
    } else {
        status_kib("VmHWM:")
    };
    let response = app.upload_body(body).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let image: serde_json::Value = response.json().await.unwrap();
    assert_eq!(image["bytes"], total);
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(1), Some(1))
    );

    let growth = (status_kib("VmHWM:").saturating_sub(before)) << 10;
    assert!(
        growth < ALLOWED_GROWTH,
        "peak RSS grew by {} MiB during a {BODY_MIB} MiB upload",
        growth >> 20
    );
    let stored = app
        .files_under("images")
        .into_iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max();
    assert_eq!(stored, Some(total as u64));
}

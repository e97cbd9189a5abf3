//! One conformance suite for every storage backend, written once against the traits.
//! It runs on `embedded` always, and on Scylla when `CORRAL_SCYLLA__NODES` names a node.

use std::collections::HashSet;
use std::io::Write;

use chrono::{TimeZone, Utc};
use corral::domain::{Image, ImageFormat, ImageId, Tags};
use corral::store::scylla::{ScyllaTarget, migrate};
use corral::store::{EmbeddedStore, ImageStore, ScyllaStore, Store};

fn image(sha1: &str, n: u32) -> Image {
    Image {
        id: ImageId::new(),
        name: format!("{sha1}.png"),
        sha1: sha1.to_owned(),
        format: ImageFormat::Png,
        width: 10 + n,
        height: 20 + n,
        bytes: 1000 + u64::from(n),
        tags: Tags::parse_csv("llama,test").unwrap(),
        // Millisecond precision: what both backends keep.
        created_at: Utc
            .timestamp_millis_opt(1_700_000_000_000 + i64::from(n))
            .unwrap(),
    }
}

async fn conformance(store: &dyn Store) {
    store.ping().await.expect("ping");
    let shared = "a".repeat(40);
    let mut written = Vec::new();
    for n in 0..25 {
        let sha1 = if n < 3 {
            shared.clone()
        } else {
            format!("{:040x}", n)
        };
        let img = image(&sha1, n);
        store.insert_image(&img).await.expect("insert");
        written.push(img);
    }

    // Point reads return exactly what was written; unknown ids are None.
    for img in &written {
        assert_eq!(store.get_image(img.id).await.unwrap().as_ref(), Some(img));
    }
    assert_eq!(store.get_image(ImageId::new()).await.unwrap(), None);

    // Paged scans visit every image exactly once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_images(after, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.into_iter().map(|i| i.id));
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(seen.len(), unique.len(), "a scan repeated an image");
    assert_eq!(unique, written.iter().map(|i| &i.id).collect());

    // Shared content is counted per record.
    assert_eq!(store.count_images_with_sha1(&shared).await.unwrap(), 3);
    assert_eq!(
        store
            .count_images_with_sha1(&format!("{:040x}", 5))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.count_images_with_sha1(&"0".repeat(40)).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn the_embedded_store_conforms_and_keeps_its_data_across_a_reopen() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance(&store).await;
    let some = store.scan_images(None, 1).await.unwrap().remove(0);
    store.close().await.unwrap();
    assert!(store.ping().await.is_err(), "a closed store refuses calls");

    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(reopened.get_image(some.id).await.unwrap(), Some(some));
}

#[tokio::test]
async fn the_scylla_store_conforms() {
    let Some(nodes) = std::env::var("CORRAL_SCYLLA__NODES")
        .ok()
        .filter(|n| !n.trim().is_empty())
    else {
        // Written straight to stderr so the reason shows even though the test passes.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the_scylla_store_conforms: CORRAL_SCYLLA__NODES is not set, so there is no Scylla node to test against"
        );
        return;
    };
    let target = ScyllaTarget {
        nodes: nodes.split(',').map(|n| n.trim().to_owned()).collect(),
        keyspace: format!("corral_test_{}", uuid::Uuid::now_v7().simple()),
        replication_factor: 1,
    };
    migrate(&target).await.expect("schema applies");
    migrate(&target)
        .await
        .expect("schema applies twice (idempotent)");
    let store = ScyllaStore::connect(&target).await.expect("connect");
    conformance(&store).await;
}

//! No acknowledgement without durability (issue 12 §1). A full disk must never cost an
//! acknowledged run: below `storage.min_free_disk_mb` new work is refused up front with 507
//! `insufficient_storage` and `Retry-After`; a write that hits ENOSPC anyway fails with the same
//! code, leaves no transaction open in the pool, and the server accepts writes again as soon
//! as space is back, without a restart. Every run answered 202 must survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN_TOKEN, Db, TestDb, TestServer, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A tmpfs of `size_kib` mounted for the test (root only), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size_kib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k")])
            .arg("tmpfs")
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// 60 KiB of text that does not repeat much (SQLite does not compress, but keep it honest).
fn big_body(n: usize) -> String {
    (0..6_000)
        .map(|i| format!("{:09}\n", (i * 7919 + n * 104_729) % 1_000_000_007))
        .collect()
}

/// Starts the server on `db` with the data directory `data` and the floor `floor_mb`.
async fn serve(db: TestDb, data: &Path, floor_mb: &str) -> TestServer {
    let data = data.display().to_string();
    TestServer::start_with(
        db,
        &[
            ("ATLASIA_STORAGE__DATA_DIR", data.as_str()),
            ("ATLASIA_STORAGE__MIN_FREE_DISK_MB", floor_mb),
            ("ATLASIA_DATABASE__MIN_IDLE", "0"),
        ],
    )
    .await
}

/// The SQLite database of this test on a real 4 MiB tmpfs (root), with 1 MiB of ballast the
/// test deletes to give space back. Without root — or with `ATLASIA_TEST_FULL_DISK=pages` — a
/// full disk is emulated with SQLite's `max_page_count` (4 MiB of pages): the same SQLITE_FULL,
/// but space cannot come back, so that variant checks durability across the restart only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_loses_no_acknowledged_run_and_recovers_without_restart() {
    let forced = std::env::var("ATLASIA_TEST_FULL_DISK").is_ok_and(|v| v == "pages");
    let disk = if forced {
        None
    } else {
        SmallDisk::mount(4 * 1024)
    };
    let scratch = tempfile::tempdir().unwrap();
    let (data, url, ballast) = match &disk {
        Some(disk) => {
            eprintln!(
                "full-disk test: real 4 MiB tmpfs at {}",
                disk.path().display()
            );
            let ballast = disk.path().join("ballast");
            std::fs::write(&ballast, vec![0u8; 1024 * 1024]).unwrap();
            let url = format!("sqlite://{}/atlasia.db", disk.path().display());
            (disk.path().to_owned(), url, Some(ballast))
        }
        None => {
            eprintln!(
                "full-disk test: EMULATED with SQLite max_page_count=1024 (no tmpfs: not root, or \
                 ATLASIA_TEST_FULL_DISK=pages); recovery without restart not exercised"
            );
            let url = format!(
                "sqlite://{}/atlasia.db?max_page_count=1024",
                scratch.path().display()
            );
            (scratch.path().to_owned(), url, None)
        }
    };
    let db = TestDb {
        kind: Db::Sqlite,
        url,
        dir: tempfile::tempdir().unwrap(),
    };
    // Floor 0: the disk really fills (the floor is tested below).
    let mut srv = serve(db, &data, "0").await;

    let mut acknowledged: Vec<String> = Vec::new();
    let mut refused = 0;
    let mut n = 0;
    while refused < 5 {
        n += 1;
        assert!(n < 400, "the 4 MiB disk never filled");
        let body = json!({"repo": "acme/disk", "title": format!("run {n}"), "body": big_body(n)});
        let (status, v, headers) = srv
            .call(
                reqwest::Method::POST,
                "/api/runs",
                Some(ADMIN_TOKEN),
                Some(&body),
            )
            .await;
        match status {
            StatusCode::ACCEPTED => {
                acknowledged.push(v["id"].as_str().unwrap().to_owned());
                // Once the disk was full, nothing is accepted while it stays full.
                assert_eq!(refused, 0, "202 after ENOSPC with the disk still full: {v}");
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                assert_eq!(v["error"]["code"], json!("insufficient_storage"), "{v}");
                assert!(headers.contains_key("retry-after"), "{headers:?}");
                refused += 1;
            }
            other => panic!("run {n}: {other} {v}"),
        }
    }
    assert!(
        acknowledged.len() > 5,
        "only {} runs fit",
        acknowledged.len()
    );
    let metrics = srv.metrics().await;
    assert!(
        metrics.contains("db_errors_total{kind=\"disk_full\"}"),
        "{metrics}"
    );

    // Space comes back: writes succeed again without a restart.
    let mut recovery = None;
    if let Some(ballast) = &ballast {
        std::fs::remove_file(ballast).unwrap();
        let freed = std::time::Instant::now();
        let after = eventually(Duration::from_secs(20), || async {
            let body = json!({"repo": "acme/disk", "title": "after space returned"});
            let (s, v) = srv.post("/api/runs", ADMIN_TOKEN, &body).await;
            (s == StatusCode::ACCEPTED).then(|| v["id"].as_str().unwrap().to_owned())
        })
        .await;
        recovery = Some(freed.elapsed());
        acknowledged.push(after);
    }

    // Every acknowledged run survives a restart of the binary.
    srv.terminate(Duration::from_secs(30)).await;
    let db = srv.db.same_database();
    let srv2 = serve(db, &data, "0").await;
    for id in &acknowledged {
        let (s, v) = srv2.get(&format!("/api/runs/{id}"), ADMIN_TOKEN).await;
        assert_eq!(s, StatusCode::OK, "acknowledged run {id} lost: {v}");
    }
    let (s, v) = srv2.get("/api/runs?limit=200", ADMIN_TOKEN).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["items"].as_array().map(Vec::len),
        Some(acknowledged.len()),
        "the store holds runs that were never acknowledged: {}",
        v["items"].as_array().map(Vec::len).unwrap_or(0)
    );
    eprintln!(
        "chaos: disk full (SQLite, {}): lost 0 of {} acknowledged runs across a restart; {}",
        if ballast.is_some() {
            "real tmpfs"
        } else {
            "emulated: max_page_count"
        },
        acknowledged.len(),
        recovery.map_or_else(
            || "space cannot come back in the emulation".to_owned(),
            |d| format!("a write accepted {d:?} after space came back, no restart")
        )
    );
    drop(srv2);
    drop(srv);
}

/// Below the floor, new work is refused before anything is written, on both backends: 507
/// `insufficient_storage` with `Retry-After`, and `storage_refusals_total` counts it.
async fn floor_refuses_new_work(kind: Db) {
    let db = TestDb::new(kind).await;
    let data: PathBuf = db.dir.path().to_owned();
    let srv = serve(db, &data, "1000000000").await;
    let (s, v, h) = srv
        .call(
            reqwest::Method::POST,
            "/api/runs",
            Some(ADMIN_TOKEN),
            Some(&json!({"repo": "acme/floor", "title": "one too many"})),
        )
        .await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_eq!(v["error"]["code"], json!("insufficient_storage"), "{v}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    let (_, list) = srv.get("/api/runs", ADMIN_TOKEN).await;
    assert_eq!(list["items"], Value::Array(vec![]), "nothing may be stored");
    let metrics = srv.metrics().await;
    assert!(metrics.contains("storage_refusals_total 1"), "{metrics}");
}

on_both! {
    floor => floor_refuses_new_work;
}

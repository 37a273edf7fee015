//! `atlasia backup create | verify | restore` through the real binary on both backends: a
//! backup taken while a server serves, verified, refused when truncated or altered, restored
//! into a fresh database that a fresh server then serves, retention that spares foreign files,
//! and the refusal of a non-empty target.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A finished CLI call: exit code, stdout, stderr.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn backup(dir: &Path, db: &TestDb, args: &[&str]) -> Out {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    let data = db.dir.path().to_str().unwrap();
    let o = cli(
        dir,
        &all,
        &[("DB_URL", &db.url), ("ATLASIA_STORAGE__DATA_DIR", data)],
    );
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl Out {
    fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The single `error:` line of a refusal.
    fn error_line(&self) -> &str {
        let errs: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errs.len(), 1, "one error line; stderr:\n{}", self.stderr);
        errs[0]
    }
}

/// Every run (as listed) and each run's events.
async fn snapshot(srv: &TestServer) -> (Value, Vec<Value>) {
    let (s, list) = srv.get("/api/runs?limit=200", ADMIN_TOKEN).await;
    assert_eq!(s, 200, "{list}");
    let mut events = Vec::new();
    for run in list["items"].as_array().unwrap() {
        let id = run["id"].as_str().unwrap();
        let (s, ev) = srv
            .get(&format!("/api/runs/{id}/events?after=0"), ADMIN_TOKEN)
            .await;
        assert_eq!(s, 200, "{ev}");
        events.push(ev);
    }
    (list, events)
}

/// Our backups in `dir`, oldest first (none while `dir` does not exist yet).
fn ours_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("atlasia-backup-2") && n.ends_with(".jsonl.gz")
        })
        .collect();
    v.sort();
    v
}

async fn create_verify_restore(db: Db) {
    let mut srv = TestServer::start(db).await;
    for i in 0..3 {
        srv.create_run(json!({"repo": "acme/widgets", "title": format!("run {i}")}))
            .await;
    }
    let viewer = srv.token("backup-viewer", "viewer").await;
    let before = snapshot(&srv).await;
    assert_eq!(before.0["items"].as_array().unwrap().len(), 3);

    // Three backups while the server serves; --keep 2 keeps the newest two and never touches
    // a file that is not ours.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let foreign = dir.join("atlasia-backup-notes.jsonl.gz");
    std::fs::write(&foreign, "not ours").unwrap();
    let mut made = Vec::new();
    for _ in 0..3 {
        let out = backup(
            work.path(),
            &srv.db,
            &["create", "--to", dir.to_str().unwrap(), "--keep", "2"],
        );
        out.expect(0);
        made.push(PathBuf::from(out.stdout.trim()));
        assert!(out.stderr.contains("workflow_runs 3"), "{}", out.stderr);
    }
    assert_eq!(ours_in(&dir), made[1..].to_vec());
    assert!(foreign.exists());
    let file = made[2].clone();
    let file_s = file.to_str().unwrap();

    let ok = backup(work.path(), &srv.db, &["verify", file_s]);
    ok.expect(0);
    assert!(ok.stdout.contains("is good"), "{}", ok.stdout);
    assert!(ok.stdout.contains("workflow_runs 3"), "{}", ok.stdout);
    assert!(ok.stdout.contains("api_tokens 1"), "{}", ok.stdout);

    // A truncated and an altered copy fail with one line, exit 2.
    let bytes = std::fs::read(&file).unwrap();
    let cut = work.path().join("cut.jsonl.gz");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let flipped = work.path().join("flipped.jsonl.gz");
    let mut b = bytes.clone();
    let mid = b.len() * 2 / 3;
    b[mid] ^= 0xff;
    std::fs::write(&flipped, &b).unwrap();
    // Rows changed inside intact compression: only the manifest's checksum can tell.
    let altered = work.path().join("altered.jsonl.gz");
    {
        use std::io::{Read, Write};
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.contains("run 1"));
        let text = text.replacen("run 1", "run X", 1);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(&altered, gz.finish().unwrap()).unwrap();
    }
    let out = backup(work.path(), &srv.db, &["verify", altered.to_str().unwrap()]);
    out.expect(2);
    assert!(
        out.error_line().contains("checksum mismatch"),
        "{}",
        out.stderr
    );
    for bad in [&cut, &flipped] {
        let out = backup(work.path(), &srv.db, &["verify", bad.to_str().unwrap()]);
        out.expect(2);
        let line = out.error_line();
        assert!(line.contains("is damaged"), "{line}");
    }
    srv.terminate(std::time::Duration::from_secs(30)).await;

    // Restore into a fresh database; an altered file is refused before anything is written.
    let fresh = TestDb::new(db).await;
    let out = backup(work.path(), &fresh, &["restore", flipped.to_str().unwrap()]);
    out.expect(2);
    assert!(out.error_line().contains("is damaged"));
    backup(work.path(), &fresh, &["restore", file_s]).expect(0);
    // Now it holds rows: a second restore is refused without --force, allowed with it.
    let out = backup(work.path(), &fresh, &["restore", file_s]);
    out.expect(2);
    let line = out.error_line();
    assert!(
        line.contains("not empty") && line.contains("--force"),
        "{line}"
    );
    backup(work.path(), &fresh, &["restore", file_s, "--force"]).expect(0);

    // A fresh server on the restored database serves the same runs, events and tokens.
    let restored = TestServer::start_with(fresh, &[]).await;
    assert_eq!(snapshot(&restored).await, before);
    let (s, _) = restored.get("/api/runs", &viewer).await;
    assert_eq!(s, 200, "the restored token authenticates");
    // New runs and LLM-call ids carry on after the restored ones.
    restored
        .create_run(json!({"repo": "acme/widgets", "title": "after restore"}))
        .await;
}

/// A backup taken while runs are being created is one snapshot: every run it holds has all its
/// events and no event lacks its run (otherwise the restore would fail its foreign keys or
/// the sequence check below), and the manifest's counts match the rows.
async fn consistent_under_writes(db: Db) {
    let srv = std::sync::Arc::new(TestServer::start(db).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (srv, stop) = (srv.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                srv.create_run(json!({"repo": "acme/widgets", "title": format!("w{n}")}))
                    .await;
                n += 1;
            }
            n
        })
    };
    // Writes are under way before and during each backup.
    eventually(std::time::Duration::from_secs(30), || async {
        let (_, v) = srv.get("/api/runs?limit=5", ADMIN_TOKEN).await;
        (v["items"].as_array().map_or(0, Vec::len) >= 3).then_some(())
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for _ in 0..3 {
        let (dir, db) = (work.path().to_owned(), srv.db.url.clone());
        let data = srv.db.dir.path().to_owned();
        let out = tokio::task::spawn_blocking(move || {
            cli(
                &dir,
                &["backup", "create", "--to", dir.to_str().unwrap()],
                &[
                    ("DB_URL", &db),
                    ("ATLASIA_STORAGE__DATA_DIR", data.to_str().unwrap()),
                ],
            )
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.await.unwrap() > 3);
    for file in &files {
        backup(work.path(), &srv.db, &["verify", file]).expect(0);
        let fresh = TestDb::new(db).await;
        backup(work.path(), &fresh, &["restore", file]).expect(0);
        let broken = fresh.sql_cli(
            "SELECT COUNT(*) FROM workflow_runs r WHERE r.last_event_seq <> \
             (SELECT COALESCE(MAX(e.seq), 0) FROM run_events e WHERE e.run_id = r.id)",
        );
        assert_eq!(
            broken.trim(),
            "0",
            "runs whose events are cut off in {file}"
        );
    }
}

/// A backup of either backend restores into the other (the format is logical).
async fn crosses_backends(db: Db) {
    if skip_postgres() {
        return;
    }
    let other = match db {
        Db::Sqlite => Db::Postgres,
        Db::Postgres => Db::Sqlite,
    };
    let mut srv = TestServer::start(db).await;
    srv.create_run(json!({"repo": "acme/widgets", "title": "crossing", "priority": 7}))
        .await;
    let before = snapshot(&srv).await;
    let work = tempfile::tempdir().unwrap();
    let out = backup(
        work.path(),
        &srv.db,
        &["create", "--to", work.path().to_str().unwrap()],
    );
    out.expect(0);
    srv.terminate(std::time::Duration::from_secs(30)).await;
    let target = TestDb::new(other).await;
    backup(work.path(), &target, &["restore", out.stdout.trim()]).expect(0);
    let restored = TestServer::start_with(target, &[]).await;
    assert_eq!(snapshot(&restored).await, before);
}

/// `[backup] interval_secs` makes `serve` back up on its own: files appear, the success
/// gauge moves, the failure counter stays 0 (both exposed from start), and a backup verifies.
async fn scheduled_in_serve(db: Db) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("scheduled");
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[
            ("ATLASIA_BACKUP__INTERVAL_SECS", "1"),
            ("ATLASIA_BACKUP__DIR", dir.to_str().unwrap()),
            ("ATLASIA_BACKUP__KEEP", "2"),
        ],
    )
    .await;
    let m = srv.metrics().await;
    assert_eq!(sample(&m, "backup_failures_total", &[]), Some(0.0), "{m}");
    assert!(sample(&m, "backup_last_success_timestamp_seconds", &[]).is_some());
    srv.create_run(json!({"repo": "acme/widgets", "title": "scheduled"}))
        .await;
    let newest = eventually(std::time::Duration::from_secs(60), || async {
        let m = srv.metrics().await;
        let ok = sample(&m, "backup_last_success_timestamp_seconds", &[])?;
        let files = ours_in(&dir);
        // Taken after the run existed, and retention has kept at most two.
        (ok > 0.0 && files.len() == 2).then(|| files[1].clone())
    })
    .await;
    let m = srv.metrics().await;
    assert_eq!(sample(&m, "backup_failures_total", &[]), Some(0.0), "{m}");
    let out = backup(work.path(), &srv.db, &["verify", newest.to_str().unwrap()]);
    out.expect(0);
    assert!(out.stdout.contains("workflow_runs 1"), "{}", out.stdout);
}

/// A scheduled backup that cannot be written is counted and logged; the server keeps serving.
async fn scheduled_failure_is_counted(db: Db) {
    let work = tempfile::tempdir().unwrap();
    let not_a_dir = work.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let srv = TestServer::start_with(
        TestDb::new(db).await,
        &[
            ("ATLASIA_BACKUP__INTERVAL_SECS", "1"),
            ("ATLASIA_BACKUP__DIR", not_a_dir.to_str().unwrap()),
        ],
    )
    .await;
    eventually(std::time::Duration::from_secs(30), || async {
        let m = srv.metrics().await;
        (sample(&m, "backup_failures_total", &[])? >= 1.0).then_some(())
    })
    .await;
    let m = srv.metrics().await;
    assert_eq!(
        sample(&m, "backup_last_success_timestamp_seconds", &[]),
        Some(0.0)
    );
    assert!(
        srv.log().contains("scheduled backup failed"),
        "{}",
        srv.log()
    );
    let (s, _) = srv.get("/api/runs", ADMIN_TOKEN).await;
    assert_eq!(s, 200);
}

on_both! {
    scheduled_in_serve => scheduled_in_serve;
    scheduled_failure_is_counted => scheduled_failure_is_counted;
    create_verify_restore => create_verify_restore;
    crosses_backends => crosses_backends;
    consistent_under_writes => consistent_under_writes;
}

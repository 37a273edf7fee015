//! Per-command overhead of the sandbox (run by `bench/sandbox`): `true` and a Python unittest
//! run of `examples/py-inventory`, without a sandbox, with bubblewrap and with the in-process
//! backend, `N` runs each, interleaved so machine noise hits every side alike; prints medians,
//! the differences and the ratios.
//!
//! Usage: `sandbox_bench [N]` (default 50); `BENCH_PYTHON` names the interpreter (default
//! `/usr/bin/python3`). A backend that does not work here is reported and skipped; exits 1 when
//! neither works.

use atlasia_engine::sandbox::{Backend, CommandSpec, Mode, Sandbox, SandboxConfig, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_name() == "__pycache__" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(&path, to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    let mid = v.len() / 2;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match (v.get(mid), mid.checked_sub(1).and_then(|i| v.get(i))) {
        (Some(a), Some(b)) if v.len().is_multiple_of(2) => (ms(*a) + ms(*b)) / 2.0,
        (Some(a), _) => ms(*a),
        _ => f64::NAN,
    }
}

async fn time(sandbox: &Sandbox, spec: &CommandSpec) -> Result<Duration, String> {
    let started = Instant::now();
    let out = sandbox
        .run(spec, Duration::from_secs(120), 4096)
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!(
            "`{}` failed: {}",
            spec.command_line, out.output_tail
        ));
    }
    Ok(started.elapsed())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| {
            a.parse()
                .map_err(|_| format!("N must be a number, not {a}"))
        })
        .transpose()?
        .unwrap_or(50);
    let mut sandboxes = Vec::new();
    for backend in [Backend::Bwrap, Backend::InProcess] {
        let sb = Sandbox::start(SandboxConfig {
            backend,
            ..SandboxConfig::default()
        })
        .await;
        match sb.status() {
            Status::Enabled => sandboxes.push((backend.as_str(), sb)),
            other => println!("{} backend skipped: {other:?}", backend.as_str()),
        }
    }
    if sandboxes.is_empty() {
        return Err("no sandbox backend works here".to_owned());
    }
    let none = Sandbox::new(SandboxConfig {
        mode: Mode::None,
        ..SandboxConfig::default()
    });
    let scratch =
        std::env::temp_dir().join(format!("atlasia-sandbox-bench-{}", std::process::id()));
    let project: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/py-inventory");
    copy_tree(&project, &scratch).map_err(|e| format!("copying {}: {e}", project.display()))?;
    // The same interpreter on every side: the host's PATH may put a slower shim (pyenv) first,
    // which the sandbox does not show.
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned());
    let mut unittest = CommandSpec::new(format!("{python} -m unittest -q"), &scratch);
    unittest.env_set = vec![("PYTHONDONTWRITEBYTECODE".into(), "1".into())];
    let cases = [
        ("true", CommandSpec::new("true", &scratch)),
        ("python3 -m unittest", unittest),
    ];

    println!(
        "| command | backend | runs | median without (ms) | median with (ms) | added (ms) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut worst_added = 0.0_f64;
    for (name, spec) in &cases {
        // One warm-up each (page cache, first namespace).
        time(&none, spec).await?;
        for (_, sb) in &sandboxes {
            time(sb, spec).await?;
        }
        let mut without = Vec::with_capacity(n);
        let mut with: Vec<Vec<Duration>> =
            sandboxes.iter().map(|_| Vec::with_capacity(n)).collect();
        for i in 0..n {
            // Alternate which goes first, so no side always runs on a warmer cache.
            if i.is_multiple_of(2) {
                without.push(time(&none, spec).await?);
            }
            for ((_, sb), times) in sandboxes.iter().zip(with.iter_mut()) {
                times.push(time(sb, spec).await?);
            }
            if !i.is_multiple_of(2) {
                without.push(time(&none, spec).await?);
            }
        }
        let a = median(without);
        for ((label, _), times) in sandboxes.iter().zip(with) {
            let b = median(times);
            worst_added = worst_added.max(b - a);
            println!(
                "| `{name}` | {label} | {n} | {a:.1} | {b:.1} | {:.1} | {:.2}× |",
                b - a,
                b / a
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let verdict = if worst_added <= 20.0 {
        "MET"
    } else {
        "NOT MET"
    };
    println!("\ntarget ≤ 20 ms added per command: {verdict} (worst: {worst_added:.1} ms)");
    Ok(())
}

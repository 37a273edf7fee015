//! Per-command overhead of the sandbox (run by `bench/sandbox`): `true` and a Python unittest
//! run of `examples/py-inventory`, with and without bubblewrap, `N` runs each, interleaved so
//! machine noise hits both sides alike; prints medians, the difference and the ratio.
//!
//! Usage: `sandbox_bench [N]` (default 50); `BENCH_PYTHON` names the interpreter (default
//! `/usr/bin/python3`). Exits 1 when the sandbox does not work here.

use atlasia_engine::sandbox::{CommandSpec, Mode, Sandbox, SandboxConfig, Status};
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
    let bwrap = Sandbox::start(SandboxConfig::default()).await;
    if let Status::Unavailable(why) = bwrap.status() {
        return Err(format!("sandbox unavailable: {why}"));
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
    // The same interpreter on both sides: the host's PATH may put a slower shim (pyenv) first,
    // which the sandbox does not show.
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_owned());
    let mut unittest = CommandSpec::new(format!("{python} -m unittest -q"), &scratch);
    unittest.env_set = vec![("PYTHONDONTWRITEBYTECODE".into(), "1".into())];
    let cases = [
        ("true", CommandSpec::new("true", &scratch)),
        ("python3 -m unittest", unittest),
    ];

    println!(
        "| command | runs | median without (ms) | median with bwrap (ms) | added (ms) | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    let mut worst_added = 0.0_f64;
    for (name, spec) in &cases {
        // One warm-up each (page cache, first bwrap).
        time(&none, spec).await?;
        time(&bwrap, spec).await?;
        let (mut without, mut with) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            // Alternate which goes first, so neither side always runs on a warmer cache.
            if i.is_multiple_of(2) {
                without.push(time(&none, spec).await?);
                with.push(time(&bwrap, spec).await?);
            } else {
                with.push(time(&bwrap, spec).await?);
                without.push(time(&none, spec).await?);
            }
        }
        let (a, b) = (median(without), median(with));
        worst_added = worst_added.max(b - a);
        println!(
            "| `{name}` | {n} | {a:.1} | {b:.1} | {:.1} | {:.2}× |",
            b - a,
            b / a
        );
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

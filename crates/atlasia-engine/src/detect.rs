//! The repository's own test command, found from its files when neither `.atlasia.toml` nor the
//! work plan names verify commands: a bolt's tests must really run.
//!
//! The rules, first match wins (the repository's root only; nothing is executed here):
//!
//! | found at the root | command | why |
//! |---|---|---|
//! | `Makefile` / `makefile` / `GNUmakefile` with a `test:` target | `make test` | the owner's own entry point |
//! | the same with a `check:` target | `make check` | idem |
//! | `Cargo.toml` | `cargo test` | Rust |
//! | `go.mod` | `go test ./...` | Go |
//! | `package.json` whose `scripts.test` is set (and not npm's placeholder) | `npm test` | Node |
//! | `mvnw` with `pom.xml` | `./mvnw test` | Maven wrapper |
//! | `gradlew` | `./gradlew test` | Gradle wrapper |
//! | `pyproject.toml`, `setup.py`, `setup.cfg`, `tox.ini`, `pytest.ini`, `conftest.py`, a `tests`/`test` folder or any `*.py` file | `python3 -m pytest` when pytest is importable, else `python3 -m unittest` | Python |
//!
//! A Makefile target comes first because it is what the repository itself says "run the tests"
//! means (it usually wraps one of the others with the right flags). Whether pytest is importable
//! is asked of the sandbox by the caller ([`Found::Python`]), since that is where tests run.

use std::path::Path;

/// A detected test command and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The command line, run from the repository root.
    pub command: String,
    /// Which files made it the choice.
    pub why: String,
}

/// What the repository's files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// This command.
    Command(Detected),
    /// A Python project: pytest or unittest, depending on whether pytest is importable where
    /// the tests run ([`python`]). `why` names the files.
    Python { why: String },
}

/// The probe the caller runs to decide between pytest and unittest.
pub const PYTEST_PROBE: &str = "python3 -c 'import pytest'";

/// npm's placeholder when `npm init` was not given a test command: it always fails.
const NPM_PLACEHOLDER: &str = "no test specified";

/// The Python command for a [`Found::Python`] project.
pub fn python(why: &str, pytest_importable: bool) -> Detected {
    if pytest_importable {
        Detected {
            command: "python3 -m pytest -q".into(),
            why: format!("{why}; pytest is importable"),
        }
    } else {
        Detected {
            command: "python3 -m unittest".into(),
            why: format!("{why}; pytest is not importable, so the standard library's unittest"),
        }
    }
}

/// What the files under `root` say the test command is; `None` when nothing fits. The places
/// looked at are listed in [`LOOKED_FOR`].
pub fn detect(root: &Path) -> Option<Found> {
    let has = |name: &str| root.join(name).is_file();
    let command = |command: &str, why: String| {
        Some(Found::Command(Detected {
            command: command.into(),
            why,
        }))
    };
    for makefile in ["GNUmakefile", "makefile", "Makefile"] {
        let Ok(text) = std::fs::read_to_string(root.join(makefile)) else {
            continue;
        };
        for target in ["test", "check"] {
            if make_target(&text, target) {
                return command(
                    &format!("make {target}"),
                    format!("{makefile} has a `{target}` target"),
                );
            }
        }
    }
    if has("Cargo.toml") {
        return command("cargo test", "Cargo.toml: a Rust package".into());
    }
    if has("go.mod") {
        return command("go test ./...", "go.mod: a Go module".into());
    }
    if let Ok(text) = std::fs::read_to_string(root.join("package.json"))
        && let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(script) = doc
            .get("scripts")
            .and_then(|s| s.get("test"))
            .and_then(serde_json::Value::as_str)
        && !script.trim().is_empty()
        && !script.contains(NPM_PLACEHOLDER)
    {
        return command("npm test", "package.json has a `test` script".into());
    }
    if has("mvnw") && has("pom.xml") {
        return command("./mvnw test", "mvnw and pom.xml: a Maven project".into());
    }
    if has("gradlew") {
        return command("./gradlew test", "gradlew: a Gradle project".into());
    }
    python_marker(root).map(|why| Found::Python { why })
}

/// What was looked for, for a `not_run` report.
pub const LOOKED_FOR: &str = "a Makefile `test`/`check` target, Cargo.toml, go.mod, a package.json \
    `test` script, mvnw + pom.xml, gradlew, Python files";

/// Why `root` looks like a Python project, if it does.
fn python_marker(root: &Path) -> Option<String> {
    for name in [
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "tox.ini",
        "pytest.ini",
        "conftest.py",
    ] {
        if root.join(name).is_file() {
            return Some(format!("{name}: a Python project"));
        }
    }
    for dir in ["tests", "test"] {
        if has_py(&root.join(dir)) {
            return Some(format!("{dir}/ holds Python files"));
        }
    }
    has_py(root).then(|| "Python files at the repository root".to_owned())
}

/// Whether `dir` directly holds a `.py` file.
fn has_py(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.path().extension().is_some_and(|x| x == "py")
                && e.file_type().is_ok_and(|t| t.is_file())
        })
    })
}

/// Whether a Makefile's text defines `target` (a rule line `target:` or `target other:`; not
/// a variable assignment `target := …`).
fn make_target(text: &str, target: &str) -> bool {
    text.lines().any(|line| {
        if line.starts_with(['\t', ' ', '#']) {
            return false;
        }
        let Some((names, rest)) = line.split_once(':') else {
            return false;
        };
        if rest.starts_with('=') {
            return false;
        }
        names.split_whitespace().any(|n| n == target)
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    fn command(files: &[(&str, &str)]) -> Option<String> {
        match detect(repo(files).path())? {
            Found::Command(d) => Some(d.command),
            Found::Python { why } => Some(format!("python ({why})")),
        }
    }

    #[test]
    fn each_ecosystem_has_its_command() {
        assert_eq!(
            command(&[("Cargo.toml", "[package]")]).as_deref(),
            Some("cargo test")
        );
        assert_eq!(
            command(&[("go.mod", "module x")]).as_deref(),
            Some("go test ./...")
        );
        assert_eq!(
            command(&[("package.json", r#"{"scripts": {"test": "jest"}}"#)]).as_deref(),
            Some("npm test")
        );
        assert_eq!(
            command(&[("mvnw", ""), ("pom.xml", "<project/>")]).as_deref(),
            Some("./mvnw test")
        );
        assert_eq!(
            command(&[("gradlew", "")]).as_deref(),
            Some("./gradlew test")
        );
        assert_eq!(
            command(&[("Makefile", "all:\n\tcc x.c\n\ncheck: all\n\t./t\n")]).as_deref(),
            Some("make check")
        );
    }

    #[test]
    fn a_makefile_target_wins_and_test_comes_before_check() {
        let mk = "check:\n\t./c\ntest: build\n\t./t\n";
        assert_eq!(
            command(&[("Makefile", mk), ("Cargo.toml", "")]).as_deref(),
            Some("make test")
        );
        // No such target: the language's command.
        assert_eq!(
            command(&[("Makefile", "build:\n\tcc\n"), ("Cargo.toml", "")]).as_deref(),
            Some("cargo test")
        );
    }

    #[test]
    fn makefile_targets_are_rules_not_variables_or_recipes() {
        assert!(make_target("test:\n", "test"));
        assert!(make_target("lint test: deps\n", "test"));
        assert!(!make_target("test := 1\n", "test"));
        assert!(!make_target("\ttest: x\n", "test"));
        assert!(!make_target("# test:\n", "test"));
        assert!(!make_target("tests:\n", "test"));
    }

    #[test]
    fn npm_placeholder_and_missing_scripts_are_not_tests() {
        let placeholder = r#"{"scripts": {"test": "echo \"Error: no test specified\" && exit 1"}}"#;
        assert_eq!(command(&[("package.json", placeholder)]), None);
        assert_eq!(command(&[("package.json", r#"{"name": "x"}"#)]), None);
        assert_eq!(command(&[("package.json", "not json")]), None);
    }

    #[test]
    fn python_projects_are_recognised_by_markers_or_files() {
        for files in [
            &[("pyproject.toml", "")][..],
            &[("setup.py", "")][..],
            &[("tests/test_x.py", "")][..],
            &[("calc.py", ""), ("test_calc.py", "")][..],
        ] {
            assert!(
                matches!(detect(repo(files).path()), Some(Found::Python { .. })),
                "{files:?}"
            );
        }
        assert_eq!(command(&[("README.md", "# hi"), ("src/a.txt", "")]), None);
    }

    #[test]
    fn python_picks_pytest_only_when_importable() {
        let with = python("setup.py: a Python project", true);
        assert_eq!(with.command, "python3 -m pytest -q");
        assert!(with.why.contains("pytest is importable"), "{}", with.why);
        let without = python("setup.py: a Python project", false);
        assert_eq!(without.command, "python3 -m unittest");
        assert!(without.why.starts_with("setup.py"), "{}", without.why);
    }
}

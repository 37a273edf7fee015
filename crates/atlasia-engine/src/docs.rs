//! The writer's file changes: `docs_update` changelog entries merged into `CHANGELOG.md`'s
//! Unreleased section (Keep a Changelog), and an optional README section added or replaced.
//! Both go through the path policy like any other write.

use crate::policy::PathPolicy;
use serde_json::Value;
use std::path::Path;

const CHANGELOG: &str = "CHANGELOG.md";
const README: &str = "README.md";
const UNRELEASED: &str = "## [Unreleased]";

/// The files the Writer owns: a developer iteration that changes only these changed nothing
/// (the engine's "no change, no DONE" rule).
pub const WRITER_FILES: [&str; 2] = [CHANGELOG, README];

/// Whether `path` (repository-relative) is one of the Writer's files.
pub fn writer_owned(path: &str) -> bool {
    let p = path.trim_start_matches("./");
    WRITER_FILES.iter().any(|w| p.eq_ignore_ascii_case(w))
}

/// The Keep-a-Changelog buckets, in the order they appear.
const BUCKETS: [&str; 6] = [
    "added",
    "changed",
    "deprecated",
    "removed",
    "fixed",
    "security",
];

/// Applies `docs` (a valid `docs_update`) under `root`; returns each file tried with the
/// outcome (`Err` says why it was not written; the bolt goes on either way).
pub async fn apply(
    root: &Path,
    policy: &PathPolicy,
    docs: &Value,
) -> Vec<(String, Result<(), String>)> {
    let mut done = Vec::new();
    let entries: Vec<(String, String)> = docs["changelog"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((
                        e["category"].as_str()?.to_owned(),
                        e["text"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if !entries.is_empty() {
        let old = tokio::fs::read_to_string(root.join(CHANGELOG))
            .await
            .unwrap_or_default();
        let new = changelog(&old, &entries);
        done.push((
            CHANGELOG.to_owned(),
            write(root, policy, CHANGELOG, &new).await,
        ));
    }
    if let (Some(heading), Some(content)) = (
        docs["readme_update"]["heading"].as_str(),
        docs["readme_update"]["content"].as_str(),
    ) {
        let old = tokio::fs::read_to_string(root.join(README))
            .await
            .unwrap_or_default();
        let new = readme(&old, heading, content);
        done.push((README.to_owned(), write(root, policy, README, &new).await));
    }
    done
}

async fn write(root: &Path, policy: &PathPolicy, rel: &str, content: &str) -> Result<(), String> {
    let path = policy
        .check_write(root, rel, content.as_bytes())
        .map_err(|e| e.to_string())?;
    tokio::fs::write(&path, content)
        .await
        .map_err(|e| format!("writing {rel}: {e}"))
}

/// `old` with `entries` added under `## [Unreleased]` in their `### Bucket` subsections
/// (created when missing); a file without a changelog gets the standard header.
pub fn changelog(old: &str, entries: &[(String, String)]) -> String {
    let mut lines: Vec<String> = if old.trim().is_empty() {
        vec![
            "# Changelog".into(),
            String::new(),
            "All notable changes to this project are documented in this file.".into(),
            String::new(),
        ]
    } else {
        old.lines().map(str::to_owned).collect()
    };
    let unreleased = match lines
        .iter()
        .position(|l| l.trim().eq_ignore_ascii_case(UNRELEASED))
    {
        Some(i) => i,
        None => {
            // Before the first release section, or at the end.
            let at = lines
                .iter()
                .position(|l| l.starts_with("## "))
                .unwrap_or(lines.len());
            lines.splice(at..at, [UNRELEASED.to_owned(), String::new()]);
            at
        }
    };
    for bucket in BUCKETS {
        let items: Vec<String> = entries
            .iter()
            .filter(|(c, _)| c == bucket)
            .map(|(_, t)| format!("- {}", t.trim()))
            .collect();
        if items.is_empty() {
            continue;
        }
        let title = format!("### {}{}", bucket[..1].to_uppercase(), &bucket[1..]);
        let end = lines
            .iter()
            .skip(unreleased + 1)
            .position(|l| l.starts_with("## "))
            .map_or(lines.len(), |p| unreleased + 1 + p);
        match lines[unreleased..end]
            .iter()
            .position(|l| l.trim() == title)
        {
            Some(p) => {
                let head = unreleased + p;
                // After the subsection's last item.
                let mut at = head + 1;
                while at < end && lines[at].starts_with("- ") {
                    at += 1;
                }
                lines.splice(at..at, items);
            }
            None => {
                // Before the first later bucket, else at the end of the section (buckets keep
                // Keep a Changelog's order).
                let rank = |l: &str| {
                    BUCKETS
                        .iter()
                        .position(|b| l.trim().eq_ignore_ascii_case(&format!("### {b}")))
                };
                let me = BUCKETS.iter().position(|b| *b == bucket).unwrap_or(0);
                let mut at = (unreleased + 1..end)
                    .find(|&i| rank(&lines[i]).is_some_and(|r| r > me))
                    .unwrap_or(end);
                while at > unreleased + 1 && lines[at - 1].is_empty() {
                    at -= 1;
                }
                let mut block = vec![String::new(), title];
                block.extend(items);
                block.push(String::new());
                lines.splice(at..at, block);
            }
        }
    }
    // One blank line between blocks, none at the end.
    let mut tidy: Vec<String> = Vec::with_capacity(lines.len());
    for l in lines {
        if l.is_empty() && tidy.last().is_none_or(String::is_empty) {
            continue;
        }
        tidy.push(l);
    }
    while tidy.last().is_some_and(String::is_empty) {
        tidy.pop();
    }
    let mut out = tidy.join("\n");
    out.push('\n');
    out
}

/// `old` with the `## heading` section's body replaced by `content`, or the section appended.
pub fn readme(old: &str, heading: &str, content: &str) -> String {
    let lines: Vec<&str> = old.lines().collect();
    let is_heading = |l: &str| {
        let t = l.trim_start_matches('#');
        l.starts_with('#') && t.trim() == heading.trim()
    };
    let mut out = Vec::new();
    match lines.iter().position(|l| is_heading(l)) {
        Some(i) => {
            let level = lines[i].chars().take_while(|c| *c == '#').count();
            let end = lines
                .iter()
                .skip(i + 1)
                .position(|l| {
                    let n = l.chars().take_while(|c| *c == '#').count();
                    n > 0 && n <= level && l.chars().nth(n) == Some(' ')
                })
                .map_or(lines.len(), |p| i + 1 + p);
            out.extend(lines[..=i].iter().map(|l| (*l).to_owned()));
            out.push(String::new());
            out.push(content.trim_end().to_owned());
            out.push(String::new());
            out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
        }
        None => {
            out.extend(lines.iter().map(|l| (*l).to_owned()));
            if !out.last().is_none_or(|l| l.is_empty()) {
                out.push(String::new());
            }
            out.push(format!("## {}", heading.trim()));
            out.push(String::new());
            out.push(content.trim_end().to_owned());
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changelog_and_readme_at_the_root_are_the_writers() {
        assert!(writer_owned("CHANGELOG.md") && writer_owned("./README.md"));
        assert!(!writer_owned("docs/README.md") && !writer_owned("calc.py"));
    }

    fn e(c: &str, t: &str) -> (String, String) {
        (c.to_owned(), t.to_owned())
    }

    #[test]
    fn a_new_changelog_gets_header_and_buckets() {
        let out = changelog(
            "",
            &[
                e("fixed", "Overflow in add."),
                e("added", "A mul function."),
            ],
        );
        let added = out.find("### Added").unwrap_or(usize::MAX);
        let fixed = out.find("### Fixed").unwrap_or(0);
        assert!(out.starts_with("# Changelog"), "{out}");
        assert!(out.contains("## [Unreleased]"), "{out}");
        assert!(added < fixed, "{out}");
        assert!(out.contains("- Overflow in add."), "{out}");
    }

    #[test]
    fn entries_join_existing_subsections_above_releases() {
        let old = "# Changelog\n\n## [Unreleased]\n\n### Added\n- Old thing.\n\n## [1.0.0]\n\n### Added\n- First.\n";
        let out = changelog(old, &[e("added", "New thing.")]);
        let unreleased = &out[..out.find("## [1.0.0]").unwrap_or(0)];
        assert!(unreleased.contains("- Old thing.\n- New thing."), "{out}");
        assert_eq!(out.matches("New thing").count(), 1, "{out}");
        assert!(out.contains("## [1.0.0]\n\n### Added\n- First."), "{out}");
    }

    #[test]
    fn changelog_without_unreleased_gets_one_before_releases() {
        let out = changelog(
            "# Changelog\n\n## [1.0.0]\n- First.\n",
            &[e("fixed", "Bug.")],
        );
        let u = out.find("## [Unreleased]").unwrap_or(usize::MAX);
        let r = out.find("## [1.0.0]").unwrap_or(0);
        assert!(u < r, "{out}");
    }

    #[test]
    fn readme_sections_are_replaced_or_appended() {
        let old = "# Tool\n\nIntro.\n\n## Usage\n\nold usage\n\n## License\n\nMIT\n";
        let out = readme(old, "Usage", "new usage");
        assert!(out.contains("## Usage\n\nnew usage\n\n## License"), "{out}");
        assert!(!out.contains("old usage"), "{out}");
        let out = readme(old, "Config", "set X");
        assert!(out.ends_with("MIT\n\n## Config\n\nset X\n"), "{out}");
    }
}

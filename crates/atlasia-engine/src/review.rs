//! The REVIEW step's rules: the verdict a set of findings implies and the merge of the four
//! persona reviews into one. Whether a "changes required" loops back is the pipeline's state
//! machine's call (`atlasia_core::pipeline`, its bound per edge).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How bad a finding is. Declared from least to most severe so `Ord` ranks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Nice to fix.
    Low,
    /// Should fix.
    Medium,
    /// Wrong or unsafe: must be fixed before merging.
    High,
    /// Exploitable or data-losing: the change must not merge as it is.
    Critical,
}

/// A review's outcome. Declared from best to worst so `Ord` ranks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No findings.
    Approved,
    /// Only medium or low findings: go on, the developer may address them later.
    ApprovedWithMinorIssues,
    /// At least one high finding: back to DEVELOPER.
    ChangesRequired,
    /// At least one critical finding: back to DEVELOPER.
    Rejected,
}

impl Verdict {
    /// Whether this verdict sends the bolt back to DEVELOPER.
    pub fn needs_loop_back(self) -> bool {
        matches!(self, Self::ChangesRequired | Self::Rejected)
    }

    /// The name used in artifacts (`changes_required`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::ApprovedWithMinorIssues => "approved_with_minor_issues",
            Self::ChangesRequired => "changes_required",
            Self::Rejected => "rejected",
        }
    }
}

/// The reviewing personas, run in parallel on the same change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    /// Vulnerabilities, secrets, input handling, authorisation.
    Security,
    /// Readability, structure, error handling, test quality.
    CodeQuality,
    /// Operability: logging, metrics, timeouts, resource use, failure modes.
    Sre,
    /// User-facing behaviour: accessibility, states, copy, consistency.
    FrontendUx,
}

/// One problem a reviewer found; the `findings[]` item of a `persona_review` artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// How bad it is; drives the verdict.
    pub severity: Severity,
    /// Repository-relative path of the file concerned.
    pub file: String,
    /// 1-based line, when the finding is about one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// Short name of the problem; part of the de-duplication key.
    pub title: String,
    /// What is wrong and what it causes.
    pub detail: String,
    /// How to fix it.
    pub suggestion: String,
}

/// One persona's review; the `persona_review` artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonaReview {
    /// Who reviewed.
    pub persona: Persona,
    /// The verdict the persona gave (the contract checks it agrees with [`verdict`]).
    pub verdict: Verdict,
    /// What it found.
    pub findings: Vec<Finding>,
}

/// The four reviews folded into one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedReview {
    /// The rule applied to all de-duplicated findings — never a persona's own claim, so a persona
    /// that under-rates its findings cannot wave a change through.
    pub verdict: Verdict,
    /// Every distinct finding, most severe first (ties keep the order they were reported in).
    pub findings: Vec<Finding>,
    /// Each persona's own verdict, for the record.
    pub personas: Vec<(Persona, Verdict)>,
}

impl MergedReview {
    /// Whether the bolt goes back to DEVELOPER.
    pub fn needs_loop_back(&self) -> bool {
        self.verdict.needs_loop_back()
    }
}

/// The verdict rule of the design: any critical → rejected, any high → changes_required, any
/// medium or low → approved_with_minor_issues, none → approved.
pub fn verdict(findings: &[Finding]) -> Verdict {
    match findings.iter().map(|f| f.severity).max() {
        Some(Severity::Critical) => Verdict::Rejected,
        Some(Severity::High) => Verdict::ChangesRequired,
        Some(Severity::Medium | Severity::Low) => Verdict::ApprovedWithMinorIssues,
        None => Verdict::Approved,
    }
}

/// The de-duplication key. Titles are compared trimmed and case-insensitively because two
/// personas naming the same problem rarely agree on capitalisation.
fn dedup_key(f: &Finding) -> (String, Option<u32>, String) {
    (
        f.file.trim().to_owned(),
        f.line,
        f.title.trim().to_lowercase(),
    )
}

/// Merges the persona reviews: findings de-duplicated by (file, line, title) — a duplicate keeps
/// the highest severity any persona gave it, so merging never downgrades a finding — then the
/// verdict rule over the result.
pub fn merge(reviews: &[PersonaReview]) -> MergedReview {
    let mut findings: Vec<Finding> = Vec::new();
    let mut seen: HashMap<(String, Option<u32>, String), usize> = HashMap::new();
    for finding in reviews.iter().flat_map(|r| r.findings.iter()) {
        match seen.get(&dedup_key(finding)) {
            Some(&index) => {
                if let Some(kept) = findings.get_mut(index)
                    && finding.severity > kept.severity
                {
                    kept.severity = finding.severity;
                }
            }
            None => {
                seen.insert(dedup_key(finding), findings.len());
                findings.push(finding.clone());
            }
        }
    }
    // Stable sort: the developer reads the worst first; equal severities keep report order.
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    MergedReview {
        verdict: verdict(&findings),
        findings,
        personas: reviews.iter().map(|r| (r.persona, r.verdict)).collect(),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test should fail loudly")]
mod tests {
    use super::*;

    fn finding(severity: Severity, file: &str, line: Option<u32>, title: &str) -> Finding {
        Finding {
            severity,
            file: file.to_owned(),
            line,
            title: title.to_owned(),
            detail: "d".to_owned(),
            suggestion: "s".to_owned(),
        }
    }

    fn review(persona: Persona, findings: Vec<Finding>) -> PersonaReview {
        PersonaReview {
            persona,
            verdict: verdict(&findings),
            findings,
        }
    }

    #[test]
    fn verdict_rule_over_every_severity_mix() {
        use Severity::*;
        let table: &[(&[Severity], Verdict)] = &[
            (&[], Verdict::Approved),
            (&[Low], Verdict::ApprovedWithMinorIssues),
            (&[Medium], Verdict::ApprovedWithMinorIssues),
            (&[Low, Medium], Verdict::ApprovedWithMinorIssues),
            (&[High], Verdict::ChangesRequired),
            (&[Low, High, Medium], Verdict::ChangesRequired),
            (&[Critical], Verdict::Rejected),
            (&[Low, Critical], Verdict::Rejected),
            (&[High, Critical, Medium, Low], Verdict::Rejected),
        ];
        for (severities, expected) in table {
            let findings: Vec<Finding> = severities
                .iter()
                .enumerate()
                .map(|(i, s)| finding(*s, "a.rs", Some(i as u32 + 1), "t"))
                .collect();
            assert_eq!(verdict(&findings), *expected, "{severities:?}");
        }
    }

    #[test]
    fn only_changes_required_and_rejected_loop_back() {
        assert!(!Verdict::Approved.needs_loop_back());
        assert!(!Verdict::ApprovedWithMinorIssues.needs_loop_back());
        assert!(Verdict::ChangesRequired.needs_loop_back());
        assert!(Verdict::Rejected.needs_loop_back());
    }

    #[test]
    fn merge_dedups_by_file_line_title_and_keeps_the_worst_severity() {
        let merged = merge(&[
            review(
                Persona::Security,
                vec![
                    finding(Severity::Medium, "src/db.rs", Some(10), "SQL injection"),
                    finding(Severity::Low, "src/db.rs", None, "Missing doc"),
                ],
            ),
            review(
                Persona::CodeQuality,
                vec![
                    // Same key up to case and whitespace: merged, severity raised to high.
                    finding(Severity::High, "src/db.rs", Some(10), " sql Injection "),
                    // Same title on another line: a different finding.
                    finding(Severity::Low, "src/db.rs", Some(11), "SQL injection"),
                ],
            ),
            review(Persona::Sre, vec![]),
        ]);
        assert_eq!(merged.findings.len(), 3);
        assert_eq!(merged.findings[0].severity, Severity::High);
        assert_eq!(merged.findings[0].line, Some(10));
        assert_eq!(merged.verdict, Verdict::ChangesRequired);
        assert!(merged.needs_loop_back());
        assert_eq!(merged.personas.len(), 3);
    }

    #[test]
    fn merge_uses_the_rule_not_the_personas_claims() {
        let mut lenient = review(
            Persona::Security,
            vec![finding(Severity::Critical, "a.rs", None, "secret in code")],
        );
        lenient.verdict = Verdict::Approved;
        let merged = merge(&[lenient, review(Persona::Sre, vec![])]);
        assert_eq!(merged.verdict, Verdict::Rejected);
    }

    #[test]
    fn merge_of_clean_reviews_is_approved() {
        let merged = merge(&[
            review(Persona::Security, vec![]),
            review(Persona::FrontendUx, vec![]),
        ]);
        assert_eq!(merged.verdict, Verdict::Approved);
        assert!(!merged.needs_loop_back());
    }

    #[test]
    fn persona_review_artifact_deserializes() {
        let review: PersonaReview = serde_json::from_value(serde_json::json!({
            "persona": "code_quality",
            "verdict": "approved_with_minor_issues",
            "findings": [{"severity": "low", "file": "a.rs", "title": "t", "detail": "d", "suggestion": "s"}]
        }))
        .unwrap();
        assert_eq!(review.persona, Persona::CodeQuality);
        assert_eq!(review.findings[0].line, None);
    }
}

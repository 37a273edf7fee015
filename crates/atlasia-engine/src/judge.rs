//! The JUDGE step's rubric: criterion weights, the veto/conditional/pass thresholds, and the
//! aggregation of the three voters' `judge_verdict` artifacts into one decision.
//!
//! Before any vote, the evidence rule ([`evidence_veto`]): a failing, missing or `not_run` test
//! report is a veto by rule and no voter is asked (`not_run` passes on to the voters only when
//! the repository set `allow_untested = true`).
//!
//! Aggregation rule (the original summed "confidence" per verdict; we keep it explainable):
//! 1. Quorum: fewer than [`QUORUM`] votes is a veto — a judge that could not judge must not let a
//!    change through.
//! 2. The score is recomputed from the voters' criterion scores (per-criterion mean, then the
//!    rubric weights); a voter's own `weighted_score` is not trusted.
//! 3. The score picks the outcome: veto < 0.40 ≤ conditional < 0.65 ≤ pass.
//! 4. Explicit vetoes: a majority of voters vetoing is a veto whatever the score. A single veto is
//!    a veto when the score is below [`LONE_VETO_BELOW`] (0.50: the change is already near the
//!    line and one voter saw a blocker); above it, one outlier cannot block a change the others
//!    rate well, but it cannot be ignored either — a pass becomes conditional, with the vetoing
//!    voter's rationale as a condition.
//! 5. A conditional outcome always carries at least one condition: the voters' conditions,
//!    de-duplicated, or — when no voter gave one — the weakest criterion to improve.

use serde::{Deserialize, Serialize};

/// Rubric weight of correctness.
pub const W_CORRECTNESS: f64 = 0.30;
/// Rubric weight of security.
pub const W_SECURITY: f64 = 0.25;
/// Rubric weight of maintainability.
pub const W_MAINTAINABILITY: f64 = 0.20;
/// Rubric weight of performance.
pub const W_PERFORMANCE: f64 = 0.15;
/// Rubric weight of tests.
pub const W_TESTS: f64 = 0.10;

/// Scores strictly below this are a veto.
pub const VETO_BELOW: f64 = 0.40;
/// Scores from this up are a pass; between the two, conditional.
pub const PASS_FROM: f64 = 0.65;
/// A single voter's explicit veto wins when the aggregate score is below this.
pub const LONE_VETO_BELOW: f64 = 0.50;
/// Fewer votes than this is a veto.
pub const QUORUM: usize = 2;

/// Per-criterion scores in 0..=1; the `scores` object of a `judge_verdict` artifact.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// Meets the acceptance criteria without regressions.
    pub correctness: f64,
    /// No new vulnerabilities.
    pub security: f64,
    /// Readable and consistent.
    pub maintainability: f64,
    /// No avoidable slowdowns.
    pub performance: f64,
    /// New behaviour covered by passing tests.
    pub tests: f64,
}

impl Scores {
    /// The rubric's weighted score, rounded to 6 decimals so that sums like 0.65 × (weights
    /// adding to 1) land exactly on the threshold instead of a hair below it.
    pub fn weighted(&self) -> f64 {
        let raw = W_CORRECTNESS * self.correctness
            + W_SECURITY * self.security
            + W_MAINTAINABILITY * self.maintainability
            + W_PERFORMANCE * self.performance
            + W_TESTS * self.tests;
        (raw * 1e6).round() / 1e6
    }

    /// Criterion names with their scores, in rubric order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("correctness", self.correctness),
            ("security", self.security),
            ("maintainability", self.maintainability),
            ("performance", self.performance),
            ("tests", self.tests),
        ]
    }

    /// Per-criterion mean; `None` for no scores.
    fn mean<'a>(all: impl ExactSizeIterator<Item = &'a Scores>) -> Option<Scores> {
        let n = all.len();
        if n == 0 {
            return None;
        }
        let mut sum = Scores {
            correctness: 0.0,
            security: 0.0,
            maintainability: 0.0,
            performance: 0.0,
            tests: 0.0,
        };
        for s in all {
            sum.correctness += s.correctness;
            sum.security += s.security;
            sum.maintainability += s.maintainability;
            sum.performance += s.performance;
            sum.tests += s.tests;
        }
        let n = n as f64;
        Some(Scores {
            correctness: sum.correctness / n,
            security: sum.security / n,
            maintainability: sum.maintainability / n,
            performance: sum.performance / n,
            tests: sum.tests / n,
        })
    }
}

/// A voter's decision as written in its artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteDecision {
    /// Merge.
    Pass,
    /// Merge, with conditions to follow up.
    Conditional,
    /// Do not merge.
    Veto,
}

/// One voter's `judge_verdict` artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeVote {
    /// The rubric scores.
    pub scores: Scores,
    /// The voter's own weighted score (checked against `scores` by the contract; not used here).
    pub weighted_score: f64,
    /// The voter's decision.
    pub decision: VoteDecision,
    /// Why.
    pub rationale: String,
    /// Follow-ups required for a conditional pass.
    #[serde(default)]
    pub conditions: Vec<String>,
}

/// What the bolt does after JUDGE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Go on to WRITER.
    Pass,
    /// Go on to WRITER and record the conditions (never empty).
    Conditional {
        /// What must be followed up.
        conditions: Vec<String>,
    },
    /// Escalate.
    Veto,
}

/// The aggregated decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The rubric score of the per-criterion means.
    pub weighted: f64,
    /// What to do.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The threshold band a score falls in, with no conditions attached.
pub fn band(weighted: f64) -> VoteDecision {
    if weighted < VETO_BELOW {
        VoteDecision::Veto
    } else if weighted < PASS_FROM {
        VoteDecision::Conditional
    } else {
        VoteDecision::Pass
    }
}

/// Why the evidence alone vetoes a change, before any voter is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceVeto {
    /// The escalation reason: `tests_failed` or `untested`.
    pub code: atlasia_core::EscalationReason,
    /// What the evidence says, for the escalation's blocker.
    pub blocker: String,
}

/// The rule that comes before the vote: the judges cannot pass failing or missing evidence. A
/// missing test report, or one that did not pass, is a veto (`tests_failed`); a `not_run`
/// report is a veto (`untested`) unless the repository opted in with `allow_untested`.
pub fn evidence_veto(
    report: Option<&serde_json::Value>,
    allow_untested: bool,
) -> Option<EvidenceVeto> {
    let Some(report) = report else {
        return Some(EvidenceVeto {
            code: atlasia_core::EscalationReason::Untested,
            blocker: "there is no test report: the judges cannot pass a change without evidence"
                .into(),
        });
    };
    let status = report.get("status").and_then(serde_json::Value::as_str);
    let passed = report.get("passed").and_then(serde_json::Value::as_bool) == Some(true);
    let summary = report
        .get("summary")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if status == Some("not_run") {
        return (!allow_untested).then(|| EvidenceVeto {
            code: atlasia_core::EscalationReason::Untested,
            blocker: format!(
                "no test ran ({summary}); the judges cannot pass untested changes unless \
                 .atlasia.toml sets allow_untested = true"
            ),
        });
    }
    let ran = report
        .get("commands")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if !passed || !ran {
        return Some(EvidenceVeto {
            code: atlasia_core::EscalationReason::TestsFailed,
            blocker: format!(
                "the tests did not pass ({summary}); the judges cannot pass failing evidence"
            ),
        });
    }
    None
}

/// Aggregates the voters' verdicts; the rule is in the module documentation.
pub fn aggregate(votes: &[JudgeVote]) -> Decision {
    let Some(mean) = Scores::mean(votes.iter().map(|v| &v.scores)) else {
        return Decision {
            weighted: 0.0,
            outcome: Outcome::Veto,
        };
    };
    let weighted = mean.weighted();
    if votes.len() < QUORUM {
        return Decision {
            weighted,
            outcome: Outcome::Veto,
        };
    }

    let vetoes: Vec<&JudgeVote> = votes
        .iter()
        .filter(|v| v.decision == VoteDecision::Veto)
        .collect();
    let majority_veto = vetoes.len() * 2 > votes.len();
    let lone_veto = !vetoes.is_empty();

    let mut decided = band(weighted);
    if majority_veto || (lone_veto && weighted < LONE_VETO_BELOW) {
        decided = VoteDecision::Veto;
    } else if lone_veto && decided == VoteDecision::Pass {
        decided = VoteDecision::Conditional;
    }

    let outcome = match decided {
        VoteDecision::Pass => Outcome::Pass,
        VoteDecision::Veto => Outcome::Veto,
        VoteDecision::Conditional => Outcome::Conditional {
            conditions: conditions(votes, &vetoes, &mean, weighted),
        },
    };
    Decision { weighted, outcome }
}

/// The conditions of a conditional outcome: the vetoing voters' rationales (an overruled veto
/// must be answered), then every voter's conditions, de-duplicated; never empty.
fn conditions(
    votes: &[JudgeVote],
    vetoes: &[&JudgeVote],
    mean: &Scores,
    weighted: f64,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let candidates = vetoes
        .iter()
        .map(|v| format!("address the veto: {}", v.rationale.trim()))
        .chain(
            votes
                .iter()
                .flat_map(|v| v.conditions.iter().map(|c| c.trim().to_owned())),
        );
    for c in candidates {
        if !c.is_empty() && !out.iter().any(|o| o.eq_ignore_ascii_case(&c)) {
            out.push(c);
        }
    }
    if out.is_empty() {
        let weakest = mean.named().into_iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let (name, score) = weakest.unwrap_or(("correctness", mean.correctness));
        out.push(format!(
            "weighted score {weighted:.2} is below the pass threshold {PASS_FROM:.2}: \
             improve {name} (mean {score:.2})"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(s: f64) -> Scores {
        Scores {
            correctness: s,
            security: s,
            maintainability: s,
            performance: s,
            tests: s,
        }
    }

    fn vote(scores: Scores, decision: VoteDecision) -> JudgeVote {
        JudgeVote {
            scores,
            weighted_score: scores.weighted(),
            decision,
            rationale: format!("{decision:?} because"),
            conditions: Vec::new(),
        }
    }

    fn three(s: f64) -> Vec<JudgeVote> {
        (0..3).map(|_| vote(uniform(s), band(s))).collect()
    }

    #[test]
    fn failing_or_missing_evidence_is_a_veto_before_any_vote() {
        use serde_json::json;
        let cmd = |code: i64| json!({"command": "make test", "exit_code": code, "duration_ms": 1, "output_tail": ""});
        let passed =
            json!({"passed": true, "status": "passed", "commands": [cmd(0)], "summary": "ok"});
        assert_eq!(evidence_veto(Some(&passed), false), None);
        let failed =
            json!({"passed": false, "status": "failed", "commands": [cmd(1)], "summary": "boom"});
        let v = evidence_veto(Some(&failed), true).unwrap_or_else(|| panic!("no veto"));
        assert_eq!(v.code.as_str(), "tests_failed");
        assert!(v.blocker.contains("boom"), "{}", v.blocker);
        let not_run = json!({"passed": false, "status": "not_run", "commands": [], "summary": "nothing found"});
        assert_eq!(
            evidence_veto(Some(&not_run), false).map(|v| v.code.as_str()),
            Some("untested")
        );
        assert_eq!(evidence_veto(Some(&not_run), true), None);
        assert_eq!(
            evidence_veto(None, true).map(|v| v.code.as_str()),
            Some("untested")
        );
        // "passed" with nothing run is not evidence (an old report without a status).
        let hollow = json!({"passed": true, "commands": [], "summary": "nothing was run"});
        assert_eq!(
            evidence_veto(Some(&hollow), false).map(|v| v.code.as_str()),
            Some("tests_failed")
        );
    }

    #[test]
    fn weights_sum_to_one() {
        let sum = W_CORRECTNESS + W_SECURITY + W_MAINTAINABILITY + W_PERFORMANCE + W_TESTS;
        assert!((sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn each_criterion_carries_its_weight() {
        let only = |f: fn(&mut Scores)| {
            let mut s = uniform(0.0);
            f(&mut s);
            s.weighted()
        };
        assert_eq!(only(|s| s.correctness = 1.0), 0.30);
        assert_eq!(only(|s| s.security = 1.0), 0.25);
        assert_eq!(only(|s| s.maintainability = 1.0), 0.20);
        assert_eq!(only(|s| s.performance = 1.0), 0.15);
        assert_eq!(only(|s| s.tests = 1.0), 0.10);
    }

    #[test]
    fn band_boundaries_0_3999_veto_0_40_conditional_0_6499_conditional_0_65_pass() {
        assert_eq!(band(0.3999), VoteDecision::Veto);
        assert_eq!(band(0.40), VoteDecision::Conditional);
        assert_eq!(band(0.6499), VoteDecision::Conditional);
        assert_eq!(band(0.65), VoteDecision::Pass);
        assert_eq!(band(0.0), VoteDecision::Veto);
        assert_eq!(band(1.0), VoteDecision::Pass);
    }

    #[test]
    fn aggregate_at_the_exact_boundaries() {
        assert_eq!(aggregate(&three(0.3999)).outcome, Outcome::Veto);
        assert!(matches!(
            aggregate(&three(0.40)).outcome,
            Outcome::Conditional { .. }
        ));
        assert!(matches!(
            aggregate(&three(0.6499)).outcome,
            Outcome::Conditional { .. }
        ));
        let at_pass = aggregate(&three(0.65));
        assert_eq!(at_pass.weighted, 0.65);
        assert_eq!(at_pass.outcome, Outcome::Pass);
    }

    #[test]
    fn aggregate_uses_per_criterion_means() {
        let mut a = uniform(0.0);
        a.correctness = 0.9;
        let mut b = uniform(0.0);
        b.correctness = 0.6;
        let mut c = uniform(0.0);
        c.correctness = 0.0;
        let votes = [
            vote(a, VoteDecision::Conditional),
            vote(b, VoteDecision::Conditional),
            vote(c, VoteDecision::Conditional),
        ];
        // mean correctness 0.5 × 0.30
        assert_eq!(aggregate(&votes).weighted, 0.15);
    }

    #[test]
    fn voters_own_weighted_score_is_ignored() {
        let mut votes = three(0.9);
        for v in &mut votes {
            v.weighted_score = 0.1;
        }
        assert_eq!(aggregate(&votes).outcome, Outcome::Pass);
    }

    #[test]
    fn below_quorum_is_a_veto() {
        assert_eq!(aggregate(&[]).outcome, Outcome::Veto);
        assert_eq!(aggregate(&three(0.9)[..1]).outcome, Outcome::Veto);
        assert_eq!(aggregate(&three(0.9)[..2]).outcome, Outcome::Pass);
    }

    #[test]
    fn majority_veto_wins_over_a_passing_score() {
        let votes = [
            vote(uniform(0.9), VoteDecision::Veto),
            vote(uniform(0.9), VoteDecision::Veto),
            vote(uniform(0.9), VoteDecision::Pass),
        ];
        assert_eq!(aggregate(&votes).outcome, Outcome::Veto);
    }

    #[test]
    fn lone_veto_below_0_50_is_a_veto() {
        let votes = [
            vote(uniform(0.2), VoteDecision::Veto),
            vote(uniform(0.6), VoteDecision::Conditional),
            vote(uniform(0.6), VoteDecision::Conditional),
        ];
        // mean ≈ 0.4667: conditional by score, but one voter vetoed near the line.
        assert!(aggregate(&votes).weighted < LONE_VETO_BELOW);
        assert_eq!(aggregate(&votes).outcome, Outcome::Veto);
    }

    #[test]
    fn lone_veto_from_0_50_downgrades_pass_to_conditional_with_its_rationale() {
        let mut veto = vote(uniform(0.5), VoteDecision::Veto);
        veto.rationale = "token logged in plain text".to_owned();
        let votes = [
            veto,
            vote(uniform(0.9), VoteDecision::Pass),
            vote(uniform(0.9), VoteDecision::Pass),
        ];
        let decision = aggregate(&votes);
        assert!(decision.weighted >= PASS_FROM);
        match decision.outcome {
            Outcome::Conditional { conditions } => {
                assert_eq!(
                    conditions,
                    vec!["address the veto: token logged in plain text"]
                );
            }
            other => panic!("expected conditional, got {other:?}"),
        }
    }

    #[test]
    fn lone_veto_at_exactly_0_50_in_the_conditional_band_stays_conditional() {
        let votes = [
            vote(uniform(0.5), VoteDecision::Veto),
            vote(uniform(0.5), VoteDecision::Conditional),
            vote(uniform(0.5), VoteDecision::Conditional),
        ];
        assert!(matches!(
            aggregate(&votes).outcome,
            Outcome::Conditional { .. }
        ));
    }

    #[test]
    fn conditional_conditions_are_deduplicated_and_never_empty() {
        let mut a = vote(uniform(0.5), VoteDecision::Conditional);
        a.conditions = vec!["add a test for empty input".to_owned()];
        let mut b = vote(uniform(0.5), VoteDecision::Conditional);
        b.conditions = vec![
            "Add a test for empty input".to_owned(),
            "log the retry".to_owned(),
        ];
        let c = vote(uniform(0.5), VoteDecision::Conditional);
        match aggregate(&[a, b, c]).outcome {
            Outcome::Conditional { conditions } => assert_eq!(conditions.len(), 2),
            other => panic!("expected conditional, got {other:?}"),
        }

        let mut low_tests = uniform(0.6);
        low_tests.tests = 0.1;
        let votes: Vec<JudgeVote> = (0..3)
            .map(|_| vote(low_tests, VoteDecision::Pass))
            .collect();
        match aggregate(&votes).outcome {
            Outcome::Conditional { conditions } => {
                assert_eq!(conditions.len(), 1);
                assert!(conditions[0].contains("tests"), "{conditions:?}");
            }
            other => panic!("expected conditional, got {other:?}"),
        }
    }

    #[test]
    fn judge_verdict_artifact_deserializes() {
        let vote: JudgeVote = serde_json::from_value(serde_json::json!({
            "scores": {"correctness": 1, "security": 1, "maintainability": 1, "performance": 1, "tests": 1},
            "weighted_score": 1.0,
            "decision": "pass",
            "rationale": "r",
            "conditions": []
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vote.decision, VoteDecision::Pass);
    }
}

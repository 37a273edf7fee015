//! The bolt's pipeline as a state machine: the steps, what each step can report
//! ([`Outcome`]), and the one pure function [`next`] that decides where a bolt goes from there —
//! the next step, a bounded loop-back to the Developer, a human gate, an escalation, the end.
//! The engine's steps do the work and report an outcome; only this module routes. Pure, so every
//! edge, bound and autonomy is unit-tested here, and the graph drawn in `docs/engine.md` is this
//! file.

use crate::run::Autonomy;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A pipeline step, as written in contracts and run records (`current_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    /// Issue → `ticket_plan`.
    Pm,
    /// → `work_plan`.
    Qualifier,
    /// → `architecture_notes`.
    Architect,
    /// Tool loop on the worktree → a commit + `implementation_report`.
    Developer,
    /// Four personas → `persona_review`s merged into `review`.
    Review,
    /// Verify commands in the sandbox → `test_report`.
    Tester,
    /// Evidence rule, then three voters → `judge_decision`.
    Judge,
    /// Docs and the pull request.
    Writer,
}

impl Step {
    /// The pipeline, in order.
    pub const ALL: [Step; 8] = [
        Self::Pm,
        Self::Qualifier,
        Self::Architect,
        Self::Developer,
        Self::Review,
        Self::Tester,
        Self::Judge,
        Self::Writer,
    ];

    /// Where every bolt starts.
    pub const FIRST: Step = Self::Pm;

    /// The stored text (`PM`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pm => "PM",
            Self::Qualifier => "QUALIFIER",
            Self::Architect => "ARCHITECT",
            Self::Developer => "DEVELOPER",
            Self::Review => "REVIEW",
            Self::Tester => "TESTER",
            Self::Judge => "JUDGE",
            Self::Writer => "WRITER",
        }
    }

    /// The step after this one on the straight path (`None` after WRITER).
    pub fn following(self) -> Option<Step> {
        let at = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(at + 1).copied()
    }

    /// The planning steps: one structured answer each, no worktree needed.
    pub fn is_planning(self) -> bool {
        matches!(self, Self::Pm | Self::Qualifier | Self::Architect)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step name that is not one of the pipeline's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown step '{0}'")]
pub struct UnknownStep(pub String);

impl FromStr for Step {
    type Err = UnknownStep;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| UnknownStep(s.to_owned()))
    }
}

/// A loop-back edge: both lead back to the Developer, each with its own bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    /// REVIEW found high or critical problems.
    ReviewToDeveloper,
    /// TESTER's commands failed (the fix loop).
    TesterToDeveloper,
}

impl Edge {
    /// The name events and escalations use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReviewToDeveloper => "review_to_developer",
            Self::TesterToDeveloper => "tester_to_developer",
        }
    }

    /// Where the edge starts.
    pub fn from_step(self) -> Step {
        match self {
            Self::ReviewToDeveloper => Step::Review,
            Self::TesterToDeveloper => Step::Tester,
        }
    }

    /// Where every loop-back goes.
    pub const TO: Step = Step::Developer;
}

/// A human-in-the-loop gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// After ARCHITECT, for `confirm` and `observe` runs: approve the plan before any change.
    ArchitectureApproval,
    /// After JUDGE, for `observe` runs: approve before the Writer publishes the pull request.
    PublishApproval,
}

impl Gate {
    /// Every gate.
    pub const ALL: [Gate; 2] = [Self::ArchitectureApproval, Self::PublishApproval];

    /// The stored and API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ArchitectureApproval => "architecture_approval",
            Self::PublishApproval => "publish_approval",
        }
    }

    /// The step an approval resumes at.
    pub fn then(self) -> Step {
        match self {
            Self::ArchitectureApproval => Step::Developer,
            Self::PublishApproval => Step::Writer,
        }
    }
}

/// Why a bolt stopped for a human: the `reason` of its `escalation` artifact and `escalated`
/// event, a stable code for scripts and `atlasia run`'s summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// A DEVELOPER iteration changed nothing outside the Writer's files, also when asked again.
    NoChange,
    /// No test command ran (none configured or detected) and `allow_untested` is not set.
    Untested,
    /// The tests failed and the fix loop is used up: the judges' evidence rule vetoed.
    TestsFailed,
    /// The judges voted the change down.
    JudgeVeto,
    /// The review loop-back bound is used up.
    LoopBound,
    /// The LLM budget is spent.
    Budget,
    /// The path policy refused the change.
    Policy,
    /// The developer stopped (a protected write, its token budget).
    Developer,
    /// The sandbox cannot run commands.
    Sandbox,
    /// An agent's answers stayed invalid (or cut by the output bound) after the re-asks.
    InvalidOutput,
}

impl EscalationReason {
    /// Every reason (the escalation schema's enum lists the same codes).
    pub const ALL: [EscalationReason; 10] = [
        Self::NoChange,
        Self::Untested,
        Self::TestsFailed,
        Self::JudgeVeto,
        Self::LoopBound,
        Self::Budget,
        Self::Policy,
        Self::Developer,
        Self::Sandbox,
        Self::InvalidOutput,
    ];

    /// The stored code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoChange => "no_change",
            Self::Untested => "untested",
            Self::TestsFailed => "tests_failed",
            Self::JudgeVeto => "judge_veto",
            Self::LoopBound => "loop_bound",
            Self::Budget => "budget",
            Self::Policy => "policy",
            Self::Developer => "developer",
            Self::Sandbox => "sandbox",
            Self::InvalidOutput => "invalid_output",
        }
    }

    /// Where a PROCEED resumes when the bolt stopped at `step` for this reason: a raised budget
    /// or an agent that could not answer validly retries the same step (with the human's
    /// guidance, or another model), a repaired sandbox runs the tests again, and everything
    /// else is the Developer's to fix.
    pub fn resume_at(self, step: Step) -> Step {
        match self {
            Self::Budget | Self::InvalidOutput => step,
            Self::Sandbox => Step::Tester,
            _ => Step::Developer,
        }
    }
}

impl fmt::Display for EscalationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The test report's status, decided by exit codes, never by a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestVerdict {
    /// Every command ran and exited 0.
    Passed,
    /// A command failed, timed out or could not start (or a CI check failed).
    Failed,
    /// Nothing ran, or the runners found no test: no evidence either way.
    NotRun,
}

/// How a step ended: what it reports to [`next`]. The step's artifacts and the sentences a
/// human reads travel beside it; only the outcome routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// PM, QUALIFIER, ARCHITECT: a valid planning artifact.
    Planned,
    /// DEVELOPER: a change outside the Writer's files was committed.
    Committed,
    /// REVIEW: no finding that needs another iteration.
    Approved,
    /// REVIEW: high or critical findings.
    ChangesRequested,
    /// TESTER: the report's verdict.
    Tested(TestVerdict),
    /// JUDGE: the evidence rule and the vote let the change through.
    Accepted,
    /// WRITER: the docs are committed and the pull request is open.
    Published,
    /// Any step: a human must decide.
    Blocked(EscalationReason),
    /// Any step: it cannot succeed (the step says why).
    Failed,
}

/// Loop-backs taken so far in this stretch of the bolt (reset when a human answers an
/// escalation with PROCEED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loops {
    pub review: u32,
    pub fix: u32,
}

impl Loops {
    /// Loop-backs taken on `edge`.
    pub fn taken(self, edge: Edge) -> u32 {
        match edge {
            Edge::ReviewToDeveloper => self.review,
            Edge::TesterToDeveloper => self.fix,
        }
    }

    /// The counts after one more loop-back on `edge`.
    pub fn after(self, edge: Edge) -> Loops {
        match edge {
            Edge::ReviewToDeveloper => Loops {
                review: self.review.saturating_add(1),
                ..self
            },
            Edge::TesterToDeveloper => Loops {
                fix: self.fix.saturating_add(1),
                ..self
            },
        }
    }
}

/// Loop-backs allowed per edge: with a bound of 2, two loop-backs happen and the third request
/// does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub review: u32,
    pub fix: u32,
}

impl Bounds {
    /// The bound of `edge`.
    pub fn of(self, edge: Edge) -> u32 {
        match edge {
            Edge::ReviewToDeveloper => self.review,
            Edge::TesterToDeveloper => self.fix,
        }
    }
}

impl Default for Bounds {
    /// The design's bounds: 2 review loop-backs, 3 fix attempts.
    fn default() -> Self {
        Self { review: 2, fix: 3 }
    }
}

/// Where the bolt goes after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// On to `Step` (in the same worker).
    Next(Step),
    /// Back to the Developer on `Edge`; its count goes up by one.
    LoopBack(Edge),
    /// Stop for a human; PROCEED resumes at `resume` with fresh loop-back counts.
    Escalate {
        reason: EscalationReason,
        resume: Step,
    },
    /// Stop at a gate; an approval resumes at [`Gate::then`].
    Gate(Gate),
    /// The bolt is complete: the pull request is open.
    Done,
    /// The run ends FAILED.
    Fail,
}

/// The one routing decision of the pipeline. An outcome a step cannot report (a REVIEW that
/// says `Published`) is a bug in the step, and fails the run rather than guessing.
pub fn next(
    step: Step,
    outcome: Outcome,
    loops: Loops,
    bounds: Bounds,
    autonomy: Autonomy,
) -> Transition {
    use Outcome as O;
    use Step as S;
    let loop_back = |edge: Edge| {
        if loops.taken(edge) < bounds.of(edge) {
            Transition::LoopBack(edge)
        } else {
            match edge {
                Edge::ReviewToDeveloper => Transition::Escalate {
                    reason: EscalationReason::LoopBound,
                    resume: EscalationReason::LoopBound.resume_at(step),
                },
                // The failing report goes to the judges, whose evidence rule vetoes it (no vote
                // is asked) and escalates `tests_failed` with the report attached.
                Edge::TesterToDeveloper => Transition::Next(S::Judge),
            }
        }
    };
    match (step, outcome) {
        (_, O::Failed) => Transition::Fail,
        (_, O::Blocked(reason)) => Transition::Escalate {
            reason,
            resume: reason.resume_at(step),
        },
        (S::Architect, O::Planned) => match autonomy {
            Autonomy::Confirm | Autonomy::Observe => Transition::Gate(Gate::ArchitectureApproval),
            Autonomy::Autonomous => Transition::Next(S::Developer),
        },
        (S::Pm, O::Planned) => Transition::Next(S::Qualifier),
        (S::Qualifier, O::Planned) => Transition::Next(S::Architect),
        (S::Developer, O::Committed) => Transition::Next(S::Review),
        (S::Review, O::Approved) => Transition::Next(S::Tester),
        (S::Review, O::ChangesRequested) => loop_back(Edge::ReviewToDeveloper),
        (S::Tester, O::Tested(TestVerdict::Passed | TestVerdict::NotRun)) => {
            Transition::Next(S::Judge)
        }
        (S::Tester, O::Tested(TestVerdict::Failed)) => loop_back(Edge::TesterToDeveloper),
        (S::Judge, O::Accepted) => match autonomy {
            Autonomy::Observe => Transition::Gate(Gate::PublishApproval),
            Autonomy::Autonomous | Autonomy::Confirm => Transition::Next(S::Writer),
        },
        (S::Writer, O::Published) => Transition::Done,
        _ => Transition::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTONOMIES: [Autonomy; 3] = [Autonomy::Autonomous, Autonomy::Confirm, Autonomy::Observe];

    /// Every outcome a step could report.
    fn outcomes() -> Vec<Outcome> {
        let mut all = vec![
            Outcome::Planned,
            Outcome::Committed,
            Outcome::Approved,
            Outcome::ChangesRequested,
            Outcome::Tested(TestVerdict::Passed),
            Outcome::Tested(TestVerdict::Failed),
            Outcome::Tested(TestVerdict::NotRun),
            Outcome::Accepted,
            Outcome::Published,
            Outcome::Failed,
        ];
        all.extend(EscalationReason::ALL.map(Outcome::Blocked));
        all
    }

    /// The outcomes `step` can legitimately report besides `Blocked` and `Failed`.
    fn own(step: Step) -> Vec<Outcome> {
        match step {
            Step::Pm | Step::Qualifier | Step::Architect => vec![Outcome::Planned],
            Step::Developer => vec![Outcome::Committed],
            Step::Review => vec![Outcome::Approved, Outcome::ChangesRequested],
            Step::Tester => vec![
                Outcome::Tested(TestVerdict::Passed),
                Outcome::Tested(TestVerdict::Failed),
                Outcome::Tested(TestVerdict::NotRun),
            ],
            Step::Judge => vec![Outcome::Accepted],
            Step::Writer => vec![Outcome::Published],
        }
    }

    fn at(review: u32, fix: u32) -> Loops {
        Loops { review, fix }
    }

    #[test]
    fn step_text_round_trips_and_orders_the_pipeline() {
        for s in Step::ALL {
            assert_eq!(s.as_str().parse::<Step>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
        assert_eq!(
            "NOPE".parse::<Step>(),
            Err(UnknownStep("NOPE".into())),
            "an unknown name is refused, not mapped"
        );
        let mut walked = vec![Step::FIRST];
        while let Some(n) = walked.last().and_then(|s| s.following()) {
            walked.push(n);
        }
        assert_eq!(walked, Step::ALL);
        assert_eq!(
            Step::ALL.iter().filter(|s| s.is_planning()).count(),
            3,
            "PM, QUALIFIER, ARCHITECT"
        );
    }

    #[test]
    fn the_straight_path_visits_every_step_once_without_gates() {
        let mut step = Step::FIRST;
        let mut path = vec![step];
        for _ in 0..Step::ALL.len() {
            let outcome = own(step)[0];
            match next(
                step,
                outcome,
                Loops::default(),
                Bounds::default(),
                Autonomy::Autonomous,
            ) {
                Transition::Next(s) => {
                    step = s;
                    path.push(s);
                }
                Transition::Done => break,
                other => panic!("{step}: unexpected {other:?}"),
            }
        }
        assert_eq!(path, Step::ALL);
    }

    #[test]
    fn planning_steps_go_forward_and_the_architect_gate_follows_autonomy() {
        for a in AUTONOMIES {
            let l = Loops::default();
            let b = Bounds::default();
            assert_eq!(
                next(Step::Pm, Outcome::Planned, l, b, a),
                Transition::Next(Step::Qualifier)
            );
            assert_eq!(
                next(Step::Qualifier, Outcome::Planned, l, b, a),
                Transition::Next(Step::Architect)
            );
            let expected = match a {
                Autonomy::Autonomous => Transition::Next(Step::Developer),
                Autonomy::Confirm | Autonomy::Observe => {
                    Transition::Gate(Gate::ArchitectureApproval)
                }
            };
            assert_eq!(next(Step::Architect, Outcome::Planned, l, b, a), expected);
        }
        assert_eq!(Gate::ArchitectureApproval.then(), Step::Developer);
        assert_eq!(Gate::PublishApproval.then(), Step::Writer);
    }

    #[test]
    fn the_publish_gate_is_only_for_observe() {
        let (l, b) = (Loops::default(), Bounds::default());
        assert_eq!(
            next(Step::Judge, Outcome::Accepted, l, b, Autonomy::Observe),
            Transition::Gate(Gate::PublishApproval)
        );
        for a in [Autonomy::Autonomous, Autonomy::Confirm] {
            assert_eq!(
                next(Step::Judge, Outcome::Accepted, l, b, a),
                Transition::Next(Step::Writer)
            );
        }
        for a in AUTONOMIES {
            assert_eq!(
                next(Step::Writer, Outcome::Published, l, b, a),
                Transition::Done
            );
            assert_eq!(
                next(Step::Developer, Outcome::Committed, l, b, a),
                Transition::Next(Step::Review)
            );
        }
    }

    #[test]
    fn review_loops_back_until_its_bound_then_escalates() {
        for bound in 0..=3u32 {
            let b = Bounds {
                review: bound,
                fix: 7,
            };
            for taken in 0..=bound + 1 {
                for a in AUTONOMIES {
                    let t = next(Step::Review, Outcome::ChangesRequested, at(taken, 5), b, a);
                    if taken < bound {
                        assert_eq!(t, Transition::LoopBack(Edge::ReviewToDeveloper));
                    } else {
                        assert_eq!(
                            t,
                            Transition::Escalate {
                                reason: EscalationReason::LoopBound,
                                resume: Step::Developer
                            },
                            "bound {bound}, taken {taken}"
                        );
                    }
                    // The fix loop's count never decides a review loop-back.
                    assert_eq!(
                        next(Step::Review, Outcome::Approved, at(taken, 99), b, a),
                        Transition::Next(Step::Tester)
                    );
                }
            }
        }
    }

    #[test]
    fn failing_tests_loop_back_until_the_fix_bound_then_go_to_the_judges() {
        for bound in 0..=4u32 {
            let b = Bounds {
                review: 0,
                fix: bound,
            };
            for taken in 0..=bound + 1 {
                for a in AUTONOMIES {
                    let t = next(
                        Step::Tester,
                        Outcome::Tested(TestVerdict::Failed),
                        at(9, taken),
                        b,
                        a,
                    );
                    let expected = if taken < bound {
                        Transition::LoopBack(Edge::TesterToDeveloper)
                    } else {
                        Transition::Next(Step::Judge)
                    };
                    assert_eq!(t, expected, "bound {bound}, taken {taken}");
                    for v in [TestVerdict::Passed, TestVerdict::NotRun] {
                        assert_eq!(
                            next(Step::Tester, Outcome::Tested(v), at(9, taken), b, a),
                            Transition::Next(Step::Judge),
                            "{v:?}: the judges' evidence rule decides"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn loop_counts_move_one_edge_at_a_time() {
        let l = at(1, 2);
        assert_eq!(l.after(Edge::ReviewToDeveloper), at(2, 2));
        assert_eq!(l.after(Edge::TesterToDeveloper), at(1, 3));
        assert_eq!(
            at(u32::MAX, 0).after(Edge::ReviewToDeveloper),
            at(u32::MAX, 0)
        );
        for e in [Edge::ReviewToDeveloper, Edge::TesterToDeveloper] {
            assert_eq!(Edge::TO, Step::Developer);
            assert_eq!(e.from_step().as_str().parse::<Step>(), Ok(e.from_step()));
        }
    }

    #[test]
    fn every_step_escalates_a_blocker_and_resumes_where_the_reason_says() {
        for step in Step::ALL {
            for reason in EscalationReason::ALL {
                for a in AUTONOMIES {
                    let t = next(
                        step,
                        Outcome::Blocked(reason),
                        Loops::default(),
                        Bounds::default(),
                        a,
                    );
                    let resume = match reason {
                        EscalationReason::Budget | EscalationReason::InvalidOutput => step,
                        EscalationReason::Sandbox => Step::Tester,
                        _ => Step::Developer,
                    };
                    assert_eq!(t, Transition::Escalate { reason, resume });
                }
            }
        }
    }

    #[test]
    fn every_step_fails_on_failed_and_on_an_outcome_it_cannot_report() {
        for step in Step::ALL {
            for outcome in outcomes() {
                for a in AUTONOMIES {
                    for (review, fix) in [(0, 0), (2, 3), (5, 5)] {
                        let t = next(step, outcome, at(review, fix), Bounds::default(), a);
                        let legit =
                            own(step).contains(&outcome) || matches!(outcome, Outcome::Blocked(_));
                        if legit {
                            assert_ne!(t, Transition::Fail, "{step} {outcome:?}");
                        } else {
                            assert_eq!(t, Transition::Fail, "{step} {outcome:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn only_the_writer_ends_a_bolt_and_loop_backs_only_leave_review_and_tester() {
        for step in Step::ALL {
            for outcome in outcomes() {
                for a in AUTONOMIES {
                    for loops in [at(0, 0), at(9, 9)] {
                        match next(step, outcome, loops, Bounds::default(), a) {
                            Transition::Done => assert_eq!(step, Step::Writer),
                            Transition::LoopBack(e) => assert_eq!(e.from_step(), step),
                            Transition::Gate(g) => {
                                assert!(matches!(
                                    (g, step, a),
                                    (
                                        Gate::ArchitectureApproval,
                                        Step::Architect,
                                        Autonomy::Confirm | Autonomy::Observe
                                    ) | (Gate::PublishApproval, Step::Judge, Autonomy::Observe)
                                ))
                            }
                            Transition::Next(n) => assert!(n > step, "{step} → {n} goes forward"),
                            Transition::Escalate { .. } | Transition::Fail => {}
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn codes_are_stable() {
        let codes: Vec<&str> = EscalationReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            codes,
            [
                "no_change",
                "untested",
                "tests_failed",
                "judge_veto",
                "loop_bound",
                "budget",
                "policy",
                "developer",
                "sandbox",
                "invalid_output"
            ]
        );
        for r in EscalationReason::ALL {
            assert_eq!(
                serde_json::to_value(r).ok(),
                Some(serde_json::json!(r.as_str()))
            );
        }
        for g in Gate::ALL {
            assert_eq!(
                serde_json::to_value(g).ok(),
                Some(serde_json::json!(g.as_str()))
            );
        }
        assert_eq!(Edge::ReviewToDeveloper.as_str(), "review_to_developer");
        assert_eq!(Edge::TesterToDeveloper.as_str(), "tester_to_developer");
    }
}

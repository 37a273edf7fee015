//! The bolt engine: agent contracts and artifact schemas (`ai/`), the steps (planning, the
//! Developer's tool loop, review, tester, judge, writer), the review verdict rule and the judge
//! rubric, the forges (local git, GitHub), the write path policy, the sandboxed command runner,
//! and the workers that claim runs and drive them through the pipeline.

pub mod bolt;
pub mod contracts;
pub mod ctx;
pub mod detect;
pub mod developer;
pub mod docs;
pub mod error;
pub mod forge;
pub mod judge;
pub mod ledger;
pub mod policy;
pub mod progress;
pub mod review;
pub mod sandbox;
pub mod steps;
pub mod tools;
pub mod worker;

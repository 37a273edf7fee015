//! The bolt engine's building blocks: agent contracts and artifact schemas (`ai/`), the review
//! verdict rule and the judge rubric, the local git forge, the write path policy and the
//! sandboxed command runner; and the workers that claim runs and drive them through the
//! implemented steps (PM, QUALIFIER, ARCHITECT so far).

pub mod bolt;
pub mod contracts;
pub mod ctx;
pub mod developer;
pub mod docs;
pub mod forge;
pub mod judge;
pub mod ledger;
pub mod policy;
pub mod review;
pub mod sandbox;
pub mod steps;
pub mod tools;
pub mod worker;

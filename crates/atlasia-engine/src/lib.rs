//! The bolt engine's building blocks: agent contracts and artifact schemas (`ai/`), the review
//! verdict rule and the judge rubric, the local git forge, the write path policy and the
//! sandboxed command runner. The workers that drive a bolt through them come next.

pub mod contracts;
pub mod forge;
pub mod judge;
pub mod policy;
pub mod review;
pub mod sandbox;

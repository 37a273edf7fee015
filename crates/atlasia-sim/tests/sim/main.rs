//! sim-llm over real HTTP: each test starts the simulator in-process on port 0 and talks to it
//! with reqwest, as the gateway would. One binary, several modules, to keep link time down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod answers;
mod common;
mod faults;
mod routes;
mod streaming;

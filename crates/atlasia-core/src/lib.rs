//! Domain types of Atlasia, shared by every other crate: a run (a *bolt*), its status machine,
//! the pipeline's state machine, the events it emits, and the validation of what a user may ask for. Pure: no I/O here, so the
//! rules can be tested in isolation and are the same for the API, the CLI and the engine.

pub mod event;
pub mod pipeline;
pub mod redact;
pub mod role;
pub mod run;
pub mod status;
pub mod time;

pub use event::{EventKind, RunEvent};
pub use pipeline::{
    Bounds, Edge, EscalationReason, Gate, Loops, Outcome, Step, TestVerdict, Transition,
};
pub use redact::{Redactor, ShortSecret};
pub use role::Role;
pub use run::{Autonomy, NewRun, Run, RunId, RunRequest, ValidationError};
pub use status::{RunAction, RunStatus, TransitionError};
pub use time::Timestamp;

//! The Atlasia HTTP server as a library: settings, the axum application (REST API, auth,
//! health, metrics) and its lifecycle. The `atlasia` binary starts it; tests drive it over HTTP.

pub mod app;
pub mod auth;
pub mod compose;
pub mod error;
pub mod extract;
pub mod github;
pub mod listener;
pub mod middleware;
pub mod routes;
pub mod settings;
pub mod state;
pub mod telemetry;

pub use app::{Application, StartError, router, shutdown_signal};
pub use settings::{LogFormat, Settings, SettingsError};
pub use state::AppState;

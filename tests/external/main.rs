//! External-runtime tier: third-party programs drive exo (Chromium, the Python and Node clients,
//! network namespaces). Each test says why it skips where its tool is missing, and fails under CI.

#[path = "../common/mod.rs"]
mod common;

mod dashboard;
mod framework_clients;
mod netns_discovery;
mod python_clients;

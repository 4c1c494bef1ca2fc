//! The proxy and its simulator end to end, in one test binary: one module per area. Tests that
//! create heavy load take [`common::exclusive`] first, and tests that measure time, quota windows
//! or latency take [`common::timed`], so no measurement ever runs beside a flood of connections;
//! property tests that keep a core busy take [`common::cpu_bound`]. Short tests that measure
//! nothing run in parallel beside them all.
//!
//! Three areas have binaries of their own: `tests/credentials.rs` installs a global log
//! subscriber, `tests/binary.rs` runs the built executable under signals, and
//! `tests/fairness.rs` holds a flood test that was flaky beside the others.

#[path = "../common/mod.rs"]
mod common;

mod access_log;
mod adversity;
mod budget_property;
mod concurrency;
mod e2e_quota;
mod get_path;
mod graph;
mod learnt;
mod list_update;
mod odata_corpus;
mod operations;
mod replicas;
mod simulator;
mod simulator_graph;
mod sync;
mod tenants;

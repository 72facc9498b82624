//! The `cloudplay` binary's composition root: wires the control plane, a stream host and
//! the web client into one HTTP server, and provides the benchmarks.

pub mod app;
pub mod bench;
pub mod catalogue;
pub mod client;
pub mod config;
pub mod fleet;
pub mod listener;
pub mod relay;
pub mod web;

//! The integration suite: one test binary (faster to link than one per file), one module per area.
//! Tests that serve HTTP start the real `iiifd` binary on a free loopback port.

mod access;
mod admission;
mod browser;
mod clients;
mod cluster;
mod color;
mod common;
mod corpus;
mod crawl;
mod deploy;
mod faults;
mod golden;
mod hostile;
mod http_api;
mod layering;
mod malformed;
mod operate;
mod overload;
mod pixels;
mod sources;
mod store;
mod traversal;

//! The integration tests: one binary, a module per area, against a real server on a
//! random loopback port (the harness is `common`). One binary links the crate once.

mod common;

mod accounts;
mod browser;
mod cli;
mod crash;
mod drafts;
mod events;
mod gateway;
mod hardening;
mod images;
mod metadata;
mod openapi;
mod ops;
mod optimizer;
mod reminders;
mod seed;
mod store_conformance;
mod upload_memory;
mod variants;
mod ws;

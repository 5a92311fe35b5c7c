//! The mldeploy server.
//!
//! [`run_cli`] is the whole `mldeploy` command line for a given [`ModelLoader`]: the stock
//! binary passes the built-in loader, a user crate passes its own. The master side (config,
//! shared memory, supervision) runs before any worker exists; everything in [`http`],
//! [`events`] and the model runs inside a worker, after the fork.

#![forbid(unsafe_code)]

mod app;
pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod launch;
mod log;
pub mod metrics;
pub mod ml_deploy_config;
mod pipeline;
mod protocol;
pub mod registry;
pub mod repository;
pub mod service;
pub mod slots;

pub use app::run_cli;
pub use mldeploy_prefork::Allocator;

pub use mldeploy_model::{Model, ModelLoader};

//! Issue 2: start-up, keys, CLI, configuration, audit chain, logs.

mod audit;
mod cli;
mod config;
mod keys;
mod startup;

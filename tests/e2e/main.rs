//! End-to-end tests: they run the built `sqlvault` binary as a user would.

mod support;

mod at_rest;
mod attacks;
mod attacks_bucket;
mod attacks_local;
mod attacks_writekey;
mod audit;
mod backup_restore;
mod careful;
mod cli;
mod corpus;
mod corruption;
mod drill;
mod dumps;
mod immutable;
mod key_rotation;
mod keys_and_errors;
mod leases;
mod lifecycle;
mod policy;
mod realworld;
mod replication;
mod s3;
mod service;
mod service_dr;
mod snapshot;
mod sqlcipher;
mod stock_tools;

//! Support code shared by the integration tests (`mod support;`).
//! Each test binary uses a different part, hence the dead_code allowance.
#![allow(dead_code)]

pub mod apiserver;
pub mod daemon;
pub mod epmd;
pub mod identity;
pub mod prereq;

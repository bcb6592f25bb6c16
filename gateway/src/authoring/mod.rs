//! What authors use to build a workflow from real events: samples of what arrived, the
//! fields discovered in them, and the trace a test URL answers with.

pub mod fields;
pub mod samples;
pub mod trace;

//! # Layout

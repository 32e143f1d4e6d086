//! Simulators for shouwang.

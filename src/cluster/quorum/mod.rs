//! The metadata quorum (being built).

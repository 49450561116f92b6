//! Shared fixtures for Baton end-to-end tests.

//! Baton client SDK.

//! Baton relay server.

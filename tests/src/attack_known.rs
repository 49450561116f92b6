//! Attacks of `baton-attack` whose bounds the relay does not hold yet, shared by the program
//! (which marks them in its report) and its test (which asserts every other attack).

/// Attack name and why it fails today. Remove an entry once its fix has landed.
pub const KNOWN_FAILING: &[(&str, &str)] = &[];

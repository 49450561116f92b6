//! Attacks of `baton-attack` whose bounds the relay does not hold yet, shared by the program
//! (which marks them in its report) and its test (which asserts every other attack).

/// Attack name and why it fails today. Remove an entry once its fix has landed.
pub const KNOWN_FAILING: &[(&str, &str)] = &[
    (
        "half-open handshakes, one address, many ports",
        "no Retry above a handshake threshold yet: game p99 rises to over a second",
    ),
    (
        "half-open handshakes, 1016 addresses",
        "no Retry above a handshake threshold yet: game p99 over a second, RSS +150 MiB",
    ),
    (
        "connection flood, one address",
        "no per-address connection cap yet: game p99 over a second, RSS +200 MiB",
    ),
    (
        "connection flood, one /24",
        "no per-/24 connection cap yet: game p99 about 0.5 s, RSS +200 MiB",
    ),
    (
        "join-code guessing, one address",
        "every guess is a full handshake: game p99 about 60 ms while refused `rate_limited`",
    ),
    (
        "join-code guessing, one /24",
        "failed joins are limited per address only, not per /24: game p99 about 20 ms",
    ),
    (
        "join-code guessing, 2032 addresses",
        "no relay-wide budget of failed joins yet: game p99 about 75 ms",
    ),
    (
        "control-request flood, 4 members",
        "game p99 about 30 ms while 4 members flood (debug build, 2 cores)",
    ),
    (
        "garbage frames, many connections",
        "each garbage connection costs a handshake: game p99 about 100 ms",
    ),
    (
        "event-stream subscribers",
        "refused subscribers still cost the relay a TCP accept each: game p99 about 40 ms",
    ),
    (
        "kicked peer rejoins",
        "reconnect tokens are not revoked on kick yet (issue 10 §3)",
    ),
];

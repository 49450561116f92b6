//! Attacks of `baton-attack` whose bounds the relay does not hold yet, shared by the program
//! (which marks them in its report) and its test (which asserts every other attack).

/// Attack name and why it fails today. Remove an entry once its fix has landed.
pub const KNOWN_FAILING: &[(&str, &str)] = &[
    (
        "connection flood, one /24",
        "in about one short run (3 s windows) in two or three, game p99 rises to 7-8 ms \
         (bound 5 ms) while 3,000 handshakes arrive from one /24, with the relay at 10 % CPU: \
         handshake bursts seem to stall the lane threads that carry game traffic; held in \
         every 15 s run so far",
    ),
    (
        "join-code guessing, 2032 addresses",
        "in one short run of six, game p99 rose to 31 ms (bound 6 ms) while each guess from a \
         new address was a full handshake, the relay at 11 % CPU: the same handshake bursts; \
         held in every 15 s run so far",
    ),
];

//! A sans-IO Server-Sent Events parser: bytes in, complete events out.
//!
//! It follows the WHATWG `EventSource` parsing rules that matter to a lobby: lines end with
//! LF, CRLF or CR (a CRLF split across two chunks is one line end); `field: value` with one
//! leading space of the value dropped; a line starting with `:` is a comment (the relay's
//! keep-alives); several `data:` lines join with `\n`; a blank line ends the event, and an
//! event with no `data:` is not dispatched. An event cut off by the end of the stream is never
//! returned, so its id is never recorded and a resume gets it again.
//!
//! One deliberate difference from `EventSource`: [`SseEvent::id`] is the `id:` of that event
//! only, not the last id seen on the stream, so an event without an `id:` (the relay's
//! `replay.gap`) is recognisable. The caller keeps its own last event id.

/// Longest line accepted, in bytes. Relay events are a few hundred bytes; the bound keeps a
/// misbehaving server from growing the buffer without limit.
pub const MAX_LINE: usize = 1 << 20;
/// Most `data` one event may accumulate, in bytes (same reason as [`MAX_LINE`]).
pub const MAX_DATA: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// This event's `id:` field, if it had one.
    pub id: Option<String>,
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// The stream broke a bound; the connection should be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line longer than [`MAX_LINE`].
    LineTooLong,
    /// An event whose data exceeds [`MAX_DATA`].
    DataTooLong,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::LineTooLong => write!(f, "event stream line longer than {MAX_LINE} bytes"),
            SseError::DataTooLong => write!(f, "event stream event longer than {MAX_DATA} bytes"),
        }
    }
}

impl std::error::Error for SseError {}

/// Parser state for one connection; make a new one per connection.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The line being read.
    line: Vec<u8>,
    /// The previous byte was a CR, so an LF right after it ends nothing.
    after_cr: bool,
    /// Fields of the event being read.
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the body; complete events are appended to `out` in order.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out)?;
                    // Keep the allocation for the next line.
                    self.line = line;
                    self.line.clear();
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            let (id, event, data) = (self.id.take(), self.event.take(), self.data.take());
            if let Some(mut data) = data {
                // Every data line added a `\n`; the last one is not part of the data.
                data.pop();
                out.push(SseEvent {
                    id,
                    event: event.unwrap_or_else(|| "message".to_owned()),
                    data,
                });
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // A comment: the relay's keep-alive.
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                if data.len() + value.len() + 1 > MAX_DATA {
                    return Err(SseError::DataTooLong);
                }
                data.push_str(value);
                data.push('\n');
            }
            // The spec ignores ids containing NUL.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            // `retry:` and unknown fields are ignored; reconnection timing is ours.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out).expect("within bounds");
        }
        out
    }

    fn event(id: Option<&str>, name: &str, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_owned),
            event: name.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn parses_the_relays_events_and_skips_comments() {
        let stream = b": keep-alive\n\nid: 7\nevent: peer.joined\ndata: {\"id\":7}\n\n\
                       event: replay.gap\ndata: {\"after\":1}\n\n";
        assert_eq!(
            parse(&[stream]),
            vec![
                event(Some("7"), "peer.joined", "{\"id\":7}"),
                event(None, "replay.gap", "{\"after\":1}"),
            ]
        );
    }

    #[test]
    fn any_line_ending_and_any_chunking_give_the_same_events() {
        let lf = b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n".to_vec();
        let crlf = b"id: 1\r\ndata: a\r\n\r\nid: 2\r\ndata: b\r\n\r\n".to_vec();
        let cr = b"id: 1\rdata: a\r\rid: 2\rdata: b\r\r".to_vec();
        let expected = vec![
            event(Some("1"), "message", "a"),
            event(Some("2"), "message", "b"),
        ];
        for stream in [lf, crlf, cr] {
            assert_eq!(parse(&[&stream]), expected);
            for split in 0..stream.len() {
                let (a, b) = stream.split_at(split);
                assert_eq!(parse(&[a, b]), expected, "split at {split}");
            }
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(parse(&bytes), expected);
        }
    }

    #[test]
    fn joins_data_lines_and_drops_events_without_data_or_end() {
        let stream = b"data: one\ndata:two\ndata\n\nid: 9\nevent: x\n\nid: 10\ndata: cut";
        assert_eq!(parse(&[stream]), vec![event(None, "message", "one\ntwo\n")]);
    }

    #[test]
    fn refuses_unbounded_lines() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(parser.push(&long, &mut out), Err(SseError::LineTooLong));
    }
}

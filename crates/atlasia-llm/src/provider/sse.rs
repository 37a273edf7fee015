//! Server-Sent Events, as both providers stream: a byte stream cut into events following the
//! WHATWG parsing rules (LF, CRLF or CR line ends; `data:` with or without the space; multi-line
//! data joined by `\n`; `:` comments; a leading BOM). Network chunks may split anything anywhere,
//! including a UTF-8 character, so lines are assembled as bytes and decoded whole.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` when absent or empty (the "message" default).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// Why the event stream stopped early.
#[derive(Debug)]
pub enum SseError<E> {
    /// The byte stream itself failed.
    Transport(E),
    /// A single event grew past [`MAX_EVENT_BYTES`]: not a provider we can talk to.
    EventTooLarge,
}

/// Bounds the memory one event may take; real events are a few kilobytes.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The incremental parser: feed it chunks, collect whole events.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line not yet terminated.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF opening the next one belongs to it.
    after_cr: bool,
    /// Whether the first line (which may carry a BOM) has been seen.
    started: bool,
    event: String,
    data: String,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes one chunk, appending every event it completes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
        let mut input = chunk;
        if self.after_cr && !input.is_empty() {
            self.after_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while let Some(end) = input.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.line.extend_from_slice(&input[..end]);
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
            let is_cr = input[end] == b'\r';
            input = &input[end + 1..];
            if is_cr {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(input);
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let mut line = line;
        if !self.started {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // `id` and `retry` only matter to reconnecting browsers; unknown fields are ignored
            // by the standard.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        out.push(SseEvent {
            event: (!event.is_empty()).then_some(event),
            data,
        });
    }
}

/// An event outgrew [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

/// The events of a byte stream. An event not closed by a blank line when the bytes end is
/// dropped, as the standard says: a stream cut mid-event must not look complete.
pub fn events<S, E>(bytes: S) -> impl Stream<Item = Result<SseEvent, SseError<E>>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    struct State<S, E> {
        bytes: Pin<Box<S>>,
        parser: SseParser,
        ready: VecDeque<SseEvent>,
        failure: Option<SseError<E>>,
        ended: bool,
    }
    let state = State {
        bytes: Box::pin(bytes),
        parser: SseParser::new(),
        ready: VecDeque::new(),
        failure: None,
        ended: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.ready.pop_front() {
                return Some((Ok(event), st));
            }
            if let Some(failure) = st.failure.take() {
                st.ended = true;
                return Some((Err(failure), st));
            }
            if st.ended {
                return None;
            }
            match st.bytes.next().await {
                Some(Ok(chunk)) => {
                    let mut out = Vec::new();
                    let pushed = st.parser.push(&chunk, &mut out);
                    st.ready.extend(out);
                    if pushed.is_err() {
                        st.failure = Some(SseError::EventTooLarge);
                    }
                }
                Some(Err(e)) => st.failure = Some(SseError::Transport(e)),
                None => st.ended = true,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "a test fails loudly")]

    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut out).unwrap();
        }
        out
    }

    /// Every way of cutting `input` in two, and byte by byte, must give the same events.
    fn assert_all_splits(input: &[u8], expected: &[SseEvent]) {
        assert_eq!(parse_chunks(&[input]), expected, "whole input");
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(parse_chunks(&[a, b]), expected, "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes), expected, "byte by byte");
    }

    #[test]
    fn data_with_and_without_space() {
        assert_all_splits(
            b"data: {\"a\":1}\n\ndata:{\"b\":2}\n\ndata:  two spaces\n\n",
            &[
                ev(None, "{\"a\":1}"),
                ev(None, "{\"b\":2}"),
                ev(None, " two spaces"),
            ],
        );
    }

    #[test]
    fn named_events_as_anthropic_sends_them() {
        let input = b"event: message_start\ndata: {\"type\": \"message_start\"}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n";
        assert_all_splits(
            input,
            &[
                ev(Some("message_start"), "{\"type\": \"message_start\"}"),
                ev(Some("ping"), "{\"type\": \"ping\"}"),
                ev(Some("message_stop"), "{\"type\": \"message_stop\"}"),
            ],
        );
    }

    #[test]
    fn multi_line_data_is_joined_by_newline() {
        assert_all_splits(
            b"data: first\ndata: second\ndata\ndata: fourth\n\n",
            &[ev(None, "first\nsecond\n\nfourth")],
        );
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_all_splits(
            b": OPENROUTER PROCESSING\n\nid: 7\nretry: 100\nfoo: bar\ndata: x\n: inside\n\n",
            &[ev(None, "x")],
        );
    }

    #[test]
    fn crlf_and_cr_line_ends() {
        let expected = [ev(Some("e"), "a\nb"), ev(None, "c")];
        assert_all_splits(
            b"event: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n",
            &expected,
        );
        assert_all_splits(b"event: e\rdata: a\rdata: b\r\rdata: c\r\r", &expected);
        assert_all_splits(b"event: e\r\ndata: a\rdata: b\n\r\ndata: c\n\r", &expected);
    }

    #[test]
    fn utf8_split_inside_a_character() {
        // "é" is two bytes, "🦀" four: every split point lands inside one of them somewhere.
        assert_all_splits(
            "data: {\"text\":\"café 🦀\"}\n\n".as_bytes(),
            &[ev(None, "{\"text\":\"café 🦀\"}")],
        );
    }

    #[test]
    fn leading_bom_is_dropped() {
        assert_all_splits(b"\xEF\xBB\xBFdata: x\n\n", &[ev(None, "x")]);
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_its_name_does_not_leak() {
        assert_all_splits(b"event: lonely\n\ndata: y\n\n", &[ev(None, "y")]);
    }

    #[test]
    fn empty_data_is_dispatched() {
        assert_all_splits(b"data:\n\n", &[ev(None, "")]);
    }

    #[test]
    fn unterminated_event_is_not_dispatched() {
        assert_all_splits(b"data: done\n\ndata: cut", &[ev(None, "done")]);
        assert_all_splits(b"data: done\n\ndata: cut\n", &[ev(None, "done")]);
    }

    #[test]
    fn openai_stream_with_done_marker() {
        let input = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
        assert_all_splits(
            input,
            &[
                ev(None, "{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}"),
                ev(None, "[DONE]"),
            ],
        );
    }

    #[test]
    fn an_oversized_event_is_refused() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'x'; MAX_EVENT_BYTES / 2 + 1];
        assert!(parser.push(b"data: ", &mut out).is_ok());
        assert!(parser.push(&big, &mut out).is_ok());
        assert_eq!(parser.push(&big, &mut out), Err(EventTooLarge));
    }

    #[tokio::test]
    async fn stream_adapter_yields_events_then_the_transport_error() {
        let chunks: Vec<Result<Bytes, &str>> = vec![
            Ok(Bytes::from_static(b"data: a\n\nda")),
            Ok(Bytes::from_static(b"ta: b\n\ndata: c")),
            Err("reset"),
        ];
        let items: Vec<_> = events(futures::stream::iter(chunks)).collect().await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap(), &ev(None, "a"));
        assert_eq!(items[1].as_ref().unwrap(), &ev(None, "b"));
        assert!(matches!(items[2], Err(SseError::Transport("reset"))));
    }

    #[tokio::test]
    async fn stream_adapter_ends_quietly_at_eof() {
        let chunks: Vec<Result<Bytes, &str>> =
            vec![Ok(Bytes::from_static(b"data: a\n\ndata: partial"))];
        let items: Vec<_> = events(futures::stream::iter(chunks)).collect().await;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].as_ref().unwrap(), &ev(None, "a"));
    }
}

//! permessage-deflate (RFC 7692): negotiation, and compression of whole
//! messages with raw DEFLATE.
//!
//! A compressed message is marked by RSV1 on its first frame. Its payload,
//! over all its frames, is a raw DEFLATE stream ending in a sync flush, with
//! the final `00 00 FF FF` left off (§7.2.1). Receiving, we inflate piece by
//! piece into a bounded buffer and count every byte against the message limit,
//! so a few KiB that would inflate to gigabytes (a "bomb") are refused at the
//! limit, never held in memory. Sending, we compress only messages above a
//! threshold: small ones are cheaper raw.
//!
//! Memory. The inflater (32 KiB window plus about 10 KiB of state) is made
//! the first time a connection sends a compressed message, so a connection
//! that never does pays nothing. By default the server answers every offer
//! with `server_no_context_takeover`: it then keeps no compression state per
//! connection, and compresses each outgoing message with one of a few shared
//! compressors (one per window size), reset after every message. That is also
//! what lets a chat broadcast be compressed once and shared by every member
//! that negotiated the same window. With `--deflate-context-takeover` the
//! server keeps a compressor per connection instead (about 256 KiB each,
//! allocated on the first compressed reply) for better ratios on streams of
//! similar messages.

use super::ProtocolError;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The tail a sync flush ends with, which the sender strips and the receiver restores (§7.2.1, §7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// The LZ77 window sizes RFC 7692 allows, as powers of two.
const WINDOW_BITS: std::ops::RangeInclusive<u8> = 8..=15;

/// What the server agreed to for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The server starts every message with a fresh compressor.
    pub server_no_context_takeover: bool,
    /// The client starts every message with a fresh compressor.
    pub client_no_context_takeover: bool,
    /// The largest window the server may compress with (8–15).
    pub server_max_window_bits: u8,
    /// Whether the response names `server_max_window_bits` (it must when the client asked for it).
    pub announce_server_window: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` response header line.
    pub fn response_header(&self) -> String {
        let mut line = format!("Sec-WebSocket-Extensions: {EXTENSION}");
        if self.server_no_context_takeover {
            line.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            line.push_str("; client_no_context_takeover");
        }
        if self.announce_server_window {
            line.push_str(&format!("; server_max_window_bits={}", self.server_max_window_bits));
        }
        line
    }

    /// The window the server compresses with. zlib cannot compress with a
    /// 256-byte window (it uses 512 instead), so for 8 the server compresses
    /// only messages of at most 256 bytes, where no match can reach further back.
    pub fn compress_window_bits(&self) -> u8 {
        self.server_max_window_bits.max(9)
    }

    /// Whether a message of `len` bytes may be compressed under this agreement.
    pub fn may_compress(&self, len: usize) -> bool {
        self.server_max_window_bits > 8 || len <= 256
    }
}

/// One `permessage-deflate` offer's parameters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
}

/// Parses the `Sec-WebSocket-Extensions` header values of a request and
/// picks the first `permessage-deflate` offer that can be honoured.
///
/// A header that does not parse (RFC 6455 §9.1 grammar) is an error: 400.
/// An offer with unknown, repeated or out-of-range parameters is declined
/// (RFC 7692 §5.1), and the next is tried; with none left, the connection
/// simply goes on without compression. `takeover` says whether the server
/// is willing to keep compression context between messages.
pub fn negotiate<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    takeover: bool,
) -> Result<Option<Agreement>, &'static str> {
    let mut chosen = None;
    for value in values {
        for (name, params) in parse_header(value)? {
            if chosen.is_some() || !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            if let Some(offer) = parse_offer(&params) {
                let server_max_window_bits = offer.server_max_window_bits.unwrap_or(15);
                chosen = Some(Agreement {
                    server_no_context_takeover: offer.server_no_context_takeover || !takeover,
                    client_no_context_takeover: offer.client_no_context_takeover,
                    server_max_window_bits,
                    announce_server_window: offer.server_max_window_bits.is_some(),
                });
            }
        }
    }
    Ok(chosen)
}

/// The parameters of one offer, or `None` if it must be declined.
fn parse_offer(params: &[(String, Option<String>)]) -> Option<Offer> {
    let mut offer = Offer::default();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in params {
        let name = name.as_str();
        if seen.contains(&name) {
            return None; // §7.1: "MUST NOT include multiple parameters with the same name"
        }
        seen.push(name);
        let bits = || value.as_deref().and_then(|v| v.parse::<u8>().ok()).filter(|b| WINDOW_BITS.contains(b));
        match (name, value) {
            ("server_no_context_takeover", None) => offer.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => offer.client_no_context_takeover = true,
            ("server_max_window_bits", Some(_)) => offer.server_max_window_bits = Some(bits()?),
            // The client tells us its window is at most this; we inflate with
            // the largest window anyway, so any valid value (or none) will do.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(_)) => {
                bits()?;
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// An extension and its parameters, names lower-cased, quotes removed.
type Extension = (String, Vec<(String, Option<String>)>);

/// Parses one header value: `ext; param; param=value, ext2, ...` (RFC 6455 §9.1).
fn parse_header(value: &[u8]) -> Result<Vec<Extension>, &'static str> {
    const MALFORMED: &str = "malformed Sec-WebSocket-Extensions header";
    let text = std::str::from_utf8(value).map_err(|_| MALFORMED)?;
    let mut extensions = Vec::new();
    for extension in split_outside_quotes(text, ',')? {
        let mut parts = split_outside_quotes(extension, ';')?.into_iter();
        let name = parts.next().unwrap_or_default().trim();
        if !is_token(name) {
            return Err(MALFORMED);
        }
        let mut params = Vec::new();
        for part in parts {
            let (key, value) = match part.split_once('=') {
                Some((key, value)) => (key.trim(), Some(unquote(value.trim()).ok_or(MALFORMED)?)),
                None => (part.trim(), None),
            };
            if !is_token(key) {
                return Err(MALFORMED);
            }
            params.push((key.to_ascii_lowercase(), value));
        }
        extensions.push((name.to_ascii_lowercase(), params));
    }
    Ok(extensions)
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: char) -> Result<Vec<&str>, &'static str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("malformed Sec-WebSocket-Extensions header: unterminated quote");
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A token or a quoted string whose content is a token (RFC 6455 §9.1: "the
/// value MUST conform to the token ABNF" after unquoting).
fn unquote(value: &str) -> Option<String> {
    let inner = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?.replace('\\', ""),
        None => value.to_string(),
    };
    is_token(&inner).then_some(inner)
}

/// RFC 7230 `token`: one or more visible ASCII characters that are not separators.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Inflates the payload of compressed messages, piece by piece, within a limit.
pub struct Inflater {
    raw: Decompress,
    /// Bytes of output produced for the current message.
    produced: usize,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("produced", &self.produced).finish()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

/// Output is produced in pieces of (at least) this size, whatever the input.
const INFLATE_CHUNK: usize = 16 * 1024;

impl Inflater {
    /// An inflater with the largest window, which reads what any smaller one wrote.
    pub fn new() -> Inflater {
        Inflater { raw: Decompress::new_with_window_bits(false, 15), produced: 0 }
    }

    /// Inflates `input` (compressed payload bytes) and hands the output to
    /// `sink` in pieces. More output than `limit` bytes for one message is
    /// [`ProtocolError::MessageTooLarge`]; data that is not DEFLATE is
    /// [`ProtocolError::InvalidCompressedData`].
    pub fn inflate(
        &mut self,
        input: &[u8],
        limit: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        // Written into spare capacity (nothing to zero first), from the pool.
        let mut out = super::pool::take(INFLATE_CHUNK);
        let result = self.inflate_into(input, limit, sink, &mut out);
        super::pool::give(out);
        result
    }

    fn inflate_into(
        &mut self,
        input: &[u8],
        limit: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ProtocolError>,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let mut input = input;
        loop {
            let before_in = self.raw.total_in();
            let before_out = self.raw.total_out();
            out.clear();
            let status = self
                .raw
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| ProtocolError::InvalidCompressedData)?;
            let used = (self.raw.total_in() - before_in) as usize;
            let made = (self.raw.total_out() - before_out) as usize;
            input = &input[used..];
            if made > 0 {
                self.produced += made;
                if self.produced > limit {
                    return Err(ProtocolError::MessageTooLarge);
                }
                sink(&out[..made])?;
            }
            match status {
                // A final block inside a message: nothing may follow it.
                Status::StreamEnd if !input.is_empty() => return Err(ProtocolError::InvalidCompressedData),
                Status::StreamEnd => return Ok(()),
                _ if input.is_empty() && made < out.capacity() => return Ok(()),
                _ if used == 0 && made == 0 => return Err(ProtocolError::InvalidCompressedData),
                _ => {}
            }
        }
    }

    /// Ends a message: inflates the stripped sync tail. With `reset` (the
    /// client does not take context over), the window is cleared as well.
    pub fn finish_message(
        &mut self,
        limit: usize,
        reset: bool,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let result = self.inflate(&SYNC_TAIL, limit, sink);
        self.produced = 0;
        if reset {
            self.raw.reset(false);
        }
        result
    }

    /// Forgets a message that failed part-way.
    pub fn abandon(&mut self) {
        self.produced = 0;
        self.raw.reset(false);
    }
}

/// A raw-DEFLATE compressor for whole messages.
pub struct Deflater {
    raw: Compress,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflater")
    }
}

impl Deflater {
    /// A compressor with a window of `2^window_bits` bytes (9–15).
    pub fn new(window_bits: u8) -> Deflater {
        Deflater { raw: Compress::new_with_window_bits(Compression::fast(), false, window_bits.clamp(9, 15)) }
    }

    /// Appends the compressed form of `message` to `out`: raw DEFLATE with a
    /// sync flush, the `00 00 FF FF` tail removed (§7.2.1). With `reset`, the
    /// compressor starts the next message afresh (no context takeover).
    pub fn compress(&mut self, message: &[u8], out: &mut Vec<u8>, reset: bool) {
        let start = out.len();
        out.reserve(message.len() / 2 + 64);
        let mut input = message;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.raw.total_in();
            // Compression errors only come from misuse (a bad flush sequence), not from data.
            if self.raw.compress_vec(input, out, FlushCompress::Sync).is_err() {
                break;
            }
            input = &input[(self.raw.total_in() - before) as usize..];
            // Done when all input is in and the flush fitted (room was left over).
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        if out[start..].ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        if reset {
            self.raw.reset();
        }
    }
}

/// The longest DEFLATE data a message of `len` bytes can need: incompressible
/// data goes into stored blocks of at most 64 KiB with 5 bytes of header
/// each, plus the final empty block of the sync flush; a client that splits
/// its message into frames may flush at each. `len / 256 + 1024` covers all of
/// that many times over, and costs nothing to allow: compressed frames are
/// inflated as they arrive, not held.
#[inline]
pub fn max_compressed_len(len: u64) -> u64 {
    len.saturating_add(len / 256).saturating_add(1024)
}

/// The server's shared compressors, one per window size, each reset after
/// every message: all that `server_no_context_takeover` connections need.
#[derive(Debug, Default)]
pub struct SharedDeflaters {
    by_window: [Option<Deflater>; 16],
}

impl SharedDeflaters {
    /// Compresses `message` for an agreement without server context takeover.
    pub fn compress(&mut self, agreement: &Agreement, message: &[u8], out: &mut Vec<u8>) {
        let bits = agreement.compress_window_bits();
        let deflater = self.by_window[usize::from(bits)].get_or_insert_with(|| Deflater::new(bits));
        deflater.compress(message, out, true);
    }

    /// Compresses `message` into `out` if that is worth it: it is at least
    /// `threshold` bytes, the window allows it, and the result is smaller,
    /// unless the threshold is 0, which compresses every message. Returns
    /// whether `out` holds a compressed payload (it is left as it was if not).
    /// Without context takeover a message may always go raw, so this is the
    /// rule for every connection that uses the shared compressors.
    pub fn compress_if_worth(
        &mut self,
        agreement: &Agreement,
        message: &[u8],
        threshold: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        if message.len() < threshold || !agreement.may_compress(message.len()) {
            return false;
        }
        let start = out.len();
        self.compress(agreement, message, out);
        if threshold > 0 && out.len() - start >= message.len() {
            out.truncate(start);
            return false;
        }
        true
    }
}

/// A connection's side of permessage-deflate: what was agreed, and the
/// compression state it holds (none until it is needed).
#[derive(Debug)]
pub struct DeflateState {
    /// The negotiated parameters.
    pub agreement: Agreement,
    inflater: Option<Inflater>,
    /// Only with server context takeover: this connection's own compressor.
    deflater: Option<Deflater>,
}

impl DeflateState {
    /// State for a fresh agreement: nothing allocated yet.
    pub fn new(agreement: Agreement) -> DeflateState {
        DeflateState { agreement, inflater: None, deflater: None }
    }

    /// The inflater, made on first use.
    pub fn inflater(&mut self) -> &mut Inflater {
        self.inflater.get_or_insert_with(Inflater::new)
    }

    /// Compresses `message` into `out` if that is worth it: it is at least
    /// `threshold` bytes, the window allows it, and (without context
    /// takeover, where a message may go raw) the result is smaller, unless
    /// the threshold is 0, which compresses every message. Returns whether
    /// `out` holds a compressed payload.
    pub fn compress(
        &mut self,
        message: &[u8],
        threshold: usize,
        shared: &mut SharedDeflaters,
        out: &mut Vec<u8>,
    ) -> bool {
        if self.agreement.server_no_context_takeover {
            return shared.compress_if_worth(&self.agreement, message, threshold, out);
        }
        if message.len() < threshold || !self.agreement.may_compress(message.len()) {
            return false;
        }
        // With context takeover every message must go through the same
        // compressor, or the client's inflater loses track.
        let bits = self.agreement.compress_window_bits();
        self.deflater.get_or_insert_with(|| Deflater::new(bits)).compress(message, out, false);
        true
    }
}

#[cfg(test)]
mod tests;

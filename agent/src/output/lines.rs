//! Cutting a stream of bytes into bounded lines.

/// A line longer than this arrives as several lines.
pub const MAX_LINE: usize = 16 * 1024;

/// Cuts bytes into lines at `\n`; a line longer than the bound is cut at
/// the bound (at a character boundary where the bytes are UTF-8), so a
/// service that never writes a newline costs at most the bound.
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(4),
        }
    }

    /// Every line `bytes` completes, in order.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(end) => {
                    self.take(&bytes[..end], out);
                    out.push(lossy(std::mem::take(&mut self.partial)));
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.take(bytes, out);
                    bytes = &[];
                }
            }
        }
    }

    /// The bytes of the line begun, taken out as they are.
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    /// What is left without its newline: the service exited mid-line.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| lossy(std::mem::take(&mut self.partial)))
    }

    /// Appends to the partial line, cutting it whenever it reaches the bound.
    fn take(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while self.partial.len() + bytes.len() >= self.max {
            let room = self.max - self.partial.len();
            self.partial.extend_from_slice(&bytes[..room]);
            bytes = &bytes[room..];
            let cut = char_boundary(&self.partial);
            let rest = self.partial.split_off(cut);
            out.push(lossy(std::mem::replace(&mut self.partial, rest)));
        }
        self.partial.extend_from_slice(bytes);
    }
}

/// Where to cut `bytes` so no UTF-8 character is split: before an
/// incomplete character at the very end, else at the end.
fn char_boundary(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<String>, Option<String>) {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut out);
        }
        (out, splitter.finish())
    }

    #[test]
    fn lines_are_cut_at_newlines_across_reads() {
        let (lines, rest) = split(100, &[b"one\ntw", b"o\n\nthr", b"ee"]);
        assert_eq!(lines, ["one", "two", ""]);
        assert_eq!(rest.as_deref(), Some("three"));
    }

    #[test]
    fn a_line_longer_than_the_bound_arrives_in_pieces() {
        let long = vec![b'a'; 25];
        let (lines, rest) = split(10, &[&long, b"\n"]);
        assert_eq!(lines, ["a".repeat(10), "a".repeat(10), "a".repeat(5)]);
        assert_eq!(rest, None);
    }

    #[test]
    fn a_character_is_never_cut_in_two() {
        // "é" is two bytes: with a bound of 5, "aaaa" + "é" would cut it.
        let (lines, _) = split(5, &["aaaaéb\n".as_bytes()]);
        assert_eq!(lines, ["aaaa", "éb"]);
    }

    #[test]
    fn invalid_utf8_is_kept_lossily() {
        let (lines, _) = split(100, &[b"ok \xff\xfe end\n"]);
        assert_eq!(lines, ["ok \u{fffd}\u{fffd} end"]);
    }
}

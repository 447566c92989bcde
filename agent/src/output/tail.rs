//! The last lines of one generation's output, kept in memory and bounded
//! both by lines and by bytes.

use baton_proto::OutputLine;
use std::collections::VecDeque;

/// Lines one generation's tail keeps at most.
pub const TAIL_LINES: usize = 1_000;
/// Bytes one generation's tail keeps at most.
pub const TAIL_BYTES: usize = 256 * 1024;

#[derive(Debug)]
pub struct Tail {
    lines: VecDeque<OutputLine>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail::new(TAIL_LINES, TAIL_BYTES)
    }
}

impl Tail {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    pub fn push(&mut self, line: OutputLine) {
        self.bytes += line.weight();
        self.lines.push_back(line);
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.weight(),
                None => break,
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &OutputLine> {
        self.lines.iter().skip(self.lines.len().saturating_sub(n))
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::OutputStream;

    fn line(text: &str) -> OutputLine {
        OutputLine {
            time: 0,
            generation: 1,
            stream: OutputStream::Stdout,
            text: text.to_string(),
        }
    }

    #[test]
    fn a_tail_keeps_only_its_last_lines() {
        let mut tail = Tail::new(3, 1 << 20);
        for i in 0..10 {
            tail.push(line(&i.to_string()));
        }
        let kept: Vec<&str> = tail.last(100).map(|l| l.text.as_str()).collect();
        assert_eq!(kept, ["7", "8", "9"]);
        let last_two: Vec<&str> = tail.last(2).map(|l| l.text.as_str()).collect();
        assert_eq!(last_two, ["8", "9"]);
    }

    #[test]
    fn a_tail_is_bounded_in_bytes_whatever_the_lines_weigh() {
        let mut tail = Tail::new(1_000, 1_000);
        for _ in 0..100 {
            tail.push(line(&"x".repeat(300)));
        }
        assert!(tail.bytes() <= 1_000, "{} bytes kept", tail.bytes());
        assert_eq!(tail.len(), 3);
        // One line heavier than the whole bound is not kept at all.
        tail.push(line(&"y".repeat(5_000)));
        assert_eq!(tail.len(), 0);
        assert_eq!(tail.bytes(), 0);
    }
}

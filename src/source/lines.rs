//! Splitting a byte stream into lines without copying them, with a bound on how much
//! of one line is ever held: longer lines are reported by their head and length.

use std::io::{self, Read};

use crate::model::event::MAX_RAW_BYTES;

/// One line of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, without its `\n` (and `\r\n`).
    Full(&'a [u8]),
    /// A line longer than the limit: its first bytes and its full length.
    Oversized {
        /// Its first [`MAX_RAW_BYTES`] bytes.
        head: &'a [u8],
        /// Its length in bytes.
        len: usize,
    },
}

/// Reads lines from `R`, buffering big chunks.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of the input before `buf[0]`.
    dropped: u64,
    start: usize,
    end: usize,
    eof: bool,
    limit: usize,
}

const CHUNK: usize = 1 << 20;

impl<R: Read> LineReader<R> {
    /// Lines longer than `limit` bytes come back as [`Line::Oversized`].
    pub fn new(inner: R, limit: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: vec![0; CHUNK],
            dropped: 0,
            start: 0,
            end: 0,
            eof: false,
            limit,
        }
    }

    /// Where the next line begins: bytes of the input before it.
    pub fn offset(&self) -> u64 {
        self.dropped + self.start as u64
    }

    /// The next line, or `None` at the end of the input.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        let mut scanned = self.start;
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf[scanned..self.end]) {
                let nl = scanned + at;
                let line_start = self.start;
                self.start = nl + 1;
                let len = nl - line_start;
                if len > self.limit {
                    // Only possible when the limit exceeds the buffer's growth steps;
                    // the line is whole in memory, report its head.
                    let head_end = line_start + len.min(MAX_RAW_BYTES);
                    return Ok(Some(Line::Oversized {
                        head: &self.buf[line_start..head_end],
                        len,
                    }));
                }
                return Ok(Some(Line::Full(strip_cr(&self.buf[line_start..nl]))));
            }
            scanned = self.end;
            if self.eof {
                if self.start == self.end {
                    return Ok(None);
                }
                let line_start = self.start;
                self.start = self.end;
                return Ok(Some(Line::Full(strip_cr(&self.buf[line_start..self.end]))));
            }
            if self.end - self.start > self.limit {
                return self.skip_oversized().map(Some);
            }
            // Make room: move the partial line to the front, grow if it fills the buffer.
            if self.start > 0 {
                self.dropped += self.start as u64;
                self.buf.copy_within(self.start..self.end, 0);
                scanned -= self.start;
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(self.limit.max(CHUNK) + CHUNK);
                self.buf.resize(grown.max(self.buf.len() + CHUNK), 0);
            }
            let n = read_retrying(&mut self.inner, &mut self.buf[self.end..])?;
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }

    /// The current line is over the limit: keep its head, count and drop the rest.
    fn skip_oversized(&mut self) -> io::Result<Line<'_>> {
        let line_at = self.offset();
        let head_len = MAX_RAW_BYTES.min(self.end - self.start);
        self.buf.copy_within(self.start..self.start + head_len, 0);
        let mut len = self.end - self.start;
        let mut scratch = vec![0u8; CHUNK];
        let tail = loop {
            let n = read_retrying(&mut self.inner, &mut scratch)?;
            if n == 0 {
                self.eof = true;
                break None;
            }
            match memchr::memchr(b'\n', &scratch[..n]) {
                Some(at) => {
                    len += at;
                    break Some(scratch[at + 1..n].to_vec());
                }
                None => len += n,
            }
        };
        // The buffer now holds the head, then whatever followed the line.
        let newline = u64::from(tail.is_some());
        self.dropped = line_at + len as u64 + newline - head_len as u64;
        self.start = head_len;
        self.end = head_len;
        if let Some(rest) = tail {
            if self.buf.len() < head_len + rest.len() {
                self.buf.resize(head_len + rest.len(), 0);
            }
            self.buf[head_len..head_len + rest.len()].copy_from_slice(&rest);
            self.end = head_len + rest.len();
        }
        Ok(Line::Oversized {
            head: &self.buf[..head_len],
            len,
        })
    }
}

fn read_retrying<R: Read>(inner: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole line, or an oversized line's head and length.
    type Got = Result<Vec<u8>, (Vec<u8>, usize)>;

    fn lines(input: &[u8], limit: usize) -> Vec<Got> {
        let mut reader = LineReader::new(input, limit);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push(match line {
                Line::Full(l) => Ok(l.to_vec()),
                Line::Oversized { head, len } => Err((head.to_vec(), len)),
            });
        }
        out
    }

    #[test]
    fn splits_lines_with_and_without_a_final_newline() {
        assert_eq!(
            lines(b"a\nbb\r\n\nccc", 100),
            vec![
                Ok(b"a".to_vec()),
                Ok(b"bb".to_vec()),
                Ok(vec![]),
                Ok(b"ccc".to_vec())
            ]
        );
        assert_eq!(lines(b"a\n", 100), vec![Ok(b"a".to_vec())]);
        assert!(lines(b"", 100).is_empty());
    }

    #[test]
    fn lines_longer_than_a_chunk_are_whole() {
        let long = vec![b'x'; CHUNK * 3 + 17];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        let got = lines(&input, CHUNK * 4);
        assert_eq!(got, vec![Ok(long), Ok(b"next".to_vec())]);
    }

    #[test]
    fn oversized_lines_keep_their_head_and_length_and_the_next_line_survives() {
        let limit = CHUNK + 5;
        let long = vec![b'y'; CHUNK * 3];
        let mut input = b"first\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nafter\n");
        let got = lines(&input, limit);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Ok(b"first".to_vec()));
        let Err((head, len)) = &got[1] else {
            panic!("expected oversized: {:?}", got[1].as_ref().map(|l| l.len()))
        };
        assert_eq!(*len, CHUNK * 3);
        assert_eq!(head.len(), MAX_RAW_BYTES);
        assert_eq!(got[2], Ok(b"after".to_vec()));
    }

    #[test]
    fn offsets_are_where_each_line_begins_in_the_input() {
        let limit = CHUNK + 5;
        let mut input = Vec::new();
        let mut starts = Vec::new();
        for i in 0..40_000 {
            starts.push(input.len() as u64);
            match i % 1000 {
                7 => input.extend_from_slice(b"\r\n"),
                8 => input.push(b'\n'),
                500 if i < 1000 => {
                    input.extend_from_slice(&vec![b'o'; CHUNK * 2]);
                    input.push(b'\n');
                }
                _ => input.extend_from_slice(format!("line {i} {}\r\n", "x".repeat(i % 97)).as_bytes()),
            }
        }
        input.extend_from_slice(b"last");
        starts.push(input.len() as u64 - 4);
        let mut reader = LineReader::new(input.as_slice(), limit);
        let mut got = Vec::new();
        loop {
            let at = reader.offset();
            match reader.next_line().unwrap() {
                Some(Line::Full(bytes)) => {
                    assert_eq!(&input[at as usize..at as usize + bytes.len()], bytes);
                    got.push(at);
                }
                Some(Line::Oversized { len, .. }) => {
                    assert_eq!(len, CHUNK * 2);
                    got.push(at);
                }
                None => break,
            }
        }
        assert_eq!(got, starts);
        assert_eq!(reader.offset(), input.len() as u64);
    }

    #[test]
    fn oversized_last_line_without_newline() {
        let input = vec![b'z'; CHUNK * 2 + 3];
        let got = lines(&input, CHUNK);
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Err((_, len)) if *len == CHUNK * 2 + 3));
    }
}

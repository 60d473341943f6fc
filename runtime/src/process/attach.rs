//! The attach protocol between a container's supervisor and whoever attaches to it (the
//! daemon, for `run -i/-t`, `start -a`, `attach`): a Unix socket `attach.sock` in the
//! container's directory, carrying length-prefixed frames `[kind: u8][len: u32 LE][payload]`.
//!
//! Towards the supervisor: stdin bytes, stdin close, terminal resize. From it: stdout and
//! stderr bytes (a terminal's output is stdout), and the exit code as the last frame.
//! Output is also always in the log, so a client that attaches late reads the log first.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// File name of the attach socket in the container's directory.
pub const ATTACH_SOCKET: &str = "attach.sock";

/// Frame kinds.
pub mod kind {
    /// Client → supervisor: bytes for the process's stdin.
    pub const STDIN: u8 = 0;
    /// Client → supervisor: close the process's stdin (EOF), as `docker run -i` does when
    /// the client's stdin ends.
    pub const STDIN_CLOSE: u8 = 1;
    /// Client → supervisor: terminal size, payload `rows: u16 LE, cols: u16 LE`.
    pub const RESIZE: u8 = 2;
    /// Supervisor → client: stdout bytes.
    pub const STDOUT: u8 = 16;
    /// Supervisor → client: stderr bytes.
    pub const STDERR: u8 = 17;
    /// Supervisor → client: the exit code (`i32 LE`); the supervisor closes afterwards.
    pub const EXIT: u8 = 18;
}

/// Frames larger than this are refused (the peer is broken or hostile).
pub const MAX_FRAME: usize = 1 << 20;

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 5);
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// Size of a frame header.
pub const HEADER_LEN: usize = 5;

/// Parses a frame header into (kind, payload length); an oversized frame is an error.
pub fn parse_header(head: &[u8; HEADER_LEN]) -> io::Result<(u8, usize)> {
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("attach frame of {len} bytes"),
        ));
    }
    Ok((head[0], len))
}

/// Reads one whole frame (blocking); `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; HEADER_LEN];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = parse_header(&head)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

/// Incremental frame parser for the supervisor's non-blocking reads.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
}

impl FrameBuffer {
    /// Appends bytes and returns every frame now complete; an oversized frame is an error.
    pub fn push(&mut self, data: &[u8]) -> io::Result<Vec<(u8, Vec<u8>)>> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(head) = self.buf.first_chunk::<HEADER_LEN>() {
            let (kind, len) = parse_header(head)?;
            if self.buf.len() < HEADER_LEN + len {
                break;
            }
            let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
            self.buf.drain(..HEADER_LEN + len);
            out.push((kind, payload));
        }
        Ok(out)
    }
}

/// Connects to the attach socket in `dir`. Unix socket paths are limited to 108 bytes, so
/// the connection goes through `/proc/self/fd/N/` of an open handle on the directory, which
/// is short whatever the data root.
pub fn connect(dir: &Path) -> io::Result<UnixStream> {
    let handle = std::fs::File::open(dir)?;
    use std::os::fd::AsRawFd;
    let short = format!("/proc/self/fd/{}/{ATTACH_SOCKET}", handle.as_raw_fd());
    let stream = UnixStream::connect(short);
    drop(handle);
    stream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_split() {
        let mut wire = Vec::new();
        write_frame(&mut wire, kind::STDIN, b"hello").expect("write");
        write_frame(&mut wire, kind::RESIZE, &[24, 0, 80, 0]).expect("write");
        let mut fb = FrameBuffer::default();
        let (a, b) = wire.split_at(7);
        assert!(fb.push(a).expect("push").is_empty());
        let frames = fb.push(b).expect("push");
        assert_eq!(
            frames,
            vec![
                (kind::STDIN, b"hello".to_vec()),
                (kind::RESIZE, vec![24, 0, 80, 0])
            ]
        );
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r).expect("read").map(|f| f.0),
            Some(kind::STDIN)
        );
        let mut huge = vec![kind::STDIN];
        huge.extend_from_slice(&(u32::MAX).to_le_bytes());
        assert!(FrameBuffer::default().push(&huge).is_err());
    }
}

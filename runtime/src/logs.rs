//! Container logs: the supervisor appends one JSON object per chunk of output to
//! `container.log` (Docker's json-file shape: `{"log":…,"stream":…,"time":…}`), rotating it
//! to `container.log.1` when it passes the size cap; readers ([`LogReader`]) read both files
//! in order and can follow the live one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::container::{ContainerError, Result, Runtime};

/// File name of the live log inside a container's directory.
pub const LOG_FILE: &str = "container.log";
/// File name of the rotated log.
pub const ROTATED_LOG_FILE: &str = "container.log.1";

/// Which output a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The process's standard output (also a terminal's output).
    Stdout,
    /// The process's standard error.
    Stderr,
}

/// One chunk of output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The bytes, as text (invalid UTF-8 is replaced, as Docker's json-file driver does).
    pub log: String,
    /// The stream.
    pub stream: Stream,
    /// When the supervisor read it (RFC 3339 with nanoseconds).
    pub time: String,
}

/// Appends records to a container's log, rotating it at `max_size` bytes. The file is made
/// on the first output: a container that prints nothing costs no inode (readers take a
/// missing log as an empty one).
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    /// `None` until the first write.
    file: Option<File>,
    size: u64,
    max_size: u64,
}

impl LogWriter {
    /// A writer appending to the live log in `dir`, which is opened (or created) on the first
    /// write.
    pub fn open(dir: &Path, max_size: u64) -> io::Result<LogWriter> {
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file: None,
            size: 0,
            max_size,
        })
    }

    fn live(&mut self) -> io::Result<&mut File> {
        let file = match self.file.take() {
            Some(f) => f,
            None => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(LOG_FILE))?;
                // A restarted container appends to the log of its earlier runs.
                self.size = f.metadata()?.len();
                f
            }
        };
        Ok(self.file.insert(file))
    }

    /// Writes `data` as one line per output line (a partial last line stays one record), so
    /// `--tail N` counts lines as Docker does.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let time = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let mut buf = Vec::with_capacity(data.len() + 64);
        for line in data.split_inclusive(|b| *b == b'\n') {
            let rec = LogRecord {
                log: String::from_utf8_lossy(line).into_owned(),
                stream,
                time: time.clone(),
            };
            serde_json::to_writer(&mut buf, &rec).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        self.live()?;
        if self.size > 0 && self.size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.live()?.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(self.dir.join(LOG_FILE), self.dir.join(ROTATED_LOG_FILE))?;
        self.file = None;
        self.live()?;
        Ok(())
    }
}

/// Reads a container's log: everything so far, then (for `-f`) what is appended later.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    /// Byte offset in the live file up to which records were returned.
    offset: u64,
    /// Inode of the live file at `offset`, to notice a rotation while following.
    inode: Option<u64>,
    /// Inode of the rotated file when it was read, to tell a file rotated since from the one
    /// already returned.
    rotated: Option<u64>,
}

impl LogReader {
    /// A reader positioned at the start of the (rotated, then live) log in `dir`.
    pub fn new(dir: &Path) -> LogReader {
        LogReader {
            dir: dir.to_path_buf(),
            offset: 0,
            inode: None,
            rotated: None,
        }
    }

    /// All records so far, oldest first, or only the last `tail` of them.
    pub fn read_all(&mut self, tail: Option<usize>) -> io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        let (_, rotated) = read_records(&self.dir.join(ROTATED_LOG_FILE), 0, &mut out)?;
        self.rotated = rotated;
        let (end, inode) = read_records(&self.dir.join(LOG_FILE), 0, &mut out)?;
        self.offset = end;
        self.inode = inode;
        if let Some(n) = tail {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        Ok(out)
    }

    /// Records appended since the last call (complete lines only).
    pub fn read_new(&mut self) -> io::Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        let live = self.dir.join(LOG_FILE);
        let inode = inode_of(&live);
        let rotated_path = self.dir.join(ROTATED_LOG_FILE);
        if self.inode.is_some() && inode != self.inode {
            // Rotated since we last looked: finish the old file (now `.1`), restart at 0.
            let (_, rotated) = read_records(&rotated_path, self.offset, &mut out)?;
            self.rotated = rotated;
            self.offset = 0;
        } else if self.inode.is_none() && inode.is_some() {
            // The live file is made on the first output; if it also filled up and rotated
            // since we last looked, its first part is a `.1` we have not read.
            let rotated = inode_of(&rotated_path);
            if rotated.is_some() && rotated != self.rotated {
                read_records(&rotated_path, 0, &mut out)?;
                self.rotated = rotated;
            }
        }
        let (end, inode) = read_records(&live, self.offset, &mut out)?;
        self.offset = end;
        self.inode = inode;
        Ok(out)
    }
}

fn inode_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Appends the complete records of `path` from `offset` to `out`; returns the offset after
/// the last complete line and the file's inode. A missing file is empty.
fn read_records(
    path: &Path,
    offset: u64,
    out: &mut Vec<LogRecord>,
) -> io::Result<(u64, Option<u64>)> {
    use std::os::unix::fs::MetadataExt;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((offset, None)),
        Err(e) => return Err(e),
    };
    let inode = file.metadata()?.ino();
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut pos = offset;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        pos += n as u64;
        // A line we cannot parse is skipped rather than ending the stream: the log is ours,
        // so this only happens after a crash in the middle of a write.
        if let Ok(rec) = serde_json::from_slice::<LogRecord>(&line) {
            out.push(rec);
        }
    }
    Ok((pos, Some(inode)))
}

impl Runtime {
    /// A reader over the container's log.
    pub fn logs(&self, id: &str) -> Result<LogReader> {
        let c = self.lookup(id)?;
        let dir = self.container_dir(&c.id);
        if !dir.exists() {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        Ok(LogReader::new(&dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_lines_and_follows_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = LogWriter::open(dir.path(), 700).expect("open");
        let mut r = LogReader::new(dir.path());
        w.write(Stream::Stdout, b"one\ntwo\npart").expect("write");
        let got = r.read_all(None).expect("read");
        let lines: Vec<_> = got.iter().map(|r| r.log.as_str()).collect();
        assert_eq!(lines, ["one\n", "two\n", "part"]);
        for i in 0..10 {
            w.write(Stream::Stderr, format!("line {i}\n").as_bytes())
                .expect("write");
        }
        let mut all = Vec::new();
        all.extend(r.read_new().expect("follow"));
        assert_eq!(all.len(), 10, "{all:?}");
        assert!(dir.path().join(ROTATED_LOG_FILE).exists());
        let tail = LogReader::new(dir.path()).read_all(Some(2)).expect("tail");
        assert_eq!(tail[1].log, "line 9\n");
    }

    #[test]
    fn a_reader_older_than_the_log_misses_nothing_of_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = LogReader::new(dir.path());
        assert!(r.read_all(None).expect("read").is_empty(), "no log yet");
        // The file is made and rotated (once: records are 78 bytes) between two looks.
        let mut w = LogWriter::open(dir.path(), 300).expect("open");
        for i in 0..6 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .expect("write");
        }
        assert!(dir.path().join(ROTATED_LOG_FILE).exists());
        let got: Vec<String> = r
            .read_new()
            .expect("follow")
            .into_iter()
            .map(|r| r.log)
            .collect();
        let want: Vec<String> = (0..6).map(|i| format!("line {i}\n")).collect();
        assert_eq!(got, want);
    }
}

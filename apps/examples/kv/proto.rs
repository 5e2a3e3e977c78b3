//! The KV line protocol, server side, shared by every `kv_*` example.
//!
//! ```text
//! SET <key> <value>\n   ->  OK\n
//! GET <key>\n           ->  VALUE <value>\n  |  NONE\n
//! anything else         ->  ERR <reason>\n   (the connection stays open)
//! ```
//!
//! Keys and values are printable ASCII tokens without spaces (`!` to `~`); a trailing `\r`
//! is accepted. A request may arrive in pieces and several may arrive at once: [`Session`]
//! keeps the partial line of one connection between reads and answers every complete line in
//! order. A line longer than [`MAX_LINE`] is answered `ERR line too long` once, and skipped up
//! to its newline. [`Store`] is the one map every connection of every thread (and every queue)
//! reads and writes; [`serve`] is the whole connection loop of a thread-per-connection server
//! over anything `Read + Write`.
use std::collections::hash_map::{DefaultHasher, HashMap};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};

use parking_lot::RwLock;

/// The longest request line (without its newline).
pub const MAX_LINE: usize = 4096;
const SHARDS: usize = 64;

type Shard = RwLock<HashMap<Box<[u8]>, Box<[u8]>>>;

/// The shared map: sharded read-write locks, so connections on different keys rarely meet.
#[derive(Debug)]
pub struct Store {
    shards: Vec<Shard>,
}

impl Default for Store {
    fn default() -> Store {
        Store { shards: (0..SHARDS).map(|_| RwLock::default()).collect() }
    }
}

impl Store {
    fn shard(&self, key: &[u8]) -> &Shard {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }
    /// Store `value` under `key`.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        self.shard(key).write().insert(key.into(), value.into());
    }
    /// Append `key`'s value to `out`; whether there was one.
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        self.shard(key).read().get(key).map(|v| out.extend_from_slice(v)).is_some()
    }
}

/// One connection's protocol state: the partial line carried over between reads.
#[derive(Debug, Default)]
pub struct Session {
    line: Vec<u8>,
    /// Inside a line already answered `ERR line too long`: skip up to its newline.
    skipping: bool,
}

impl Session {
    /// Take `data` (any piece of the stream) and append the answer of every request it
    /// completes to `out`, in order.
    pub fn input(&mut self, store: &Store, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (piece, rest) = match nl {
                Some(i) => (&data[..i], &data[i + 1..]),
                None => (data, &[][..]),
            };
            data = rest;
            if !self.skipping {
                if self.line.len() + piece.len() > MAX_LINE {
                    out.extend_from_slice(b"ERR line too long\n");
                    self.line.clear();
                    self.skipping = true;
                } else if nl.is_some() && self.line.is_empty() {
                    // The common case: a whole line in one read, answered without a copy.
                    execute(store, piece, out);
                } else {
                    self.line.extend_from_slice(piece);
                    if nl.is_some() {
                        execute(store, &self.line, out);
                        self.line.clear();
                    }
                }
            }
            if nl.is_some() {
                self.skipping = false;
            }
        }
    }
}

fn token_ok(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// Answer one request line (without its newline).
pub fn execute(store: &Store, line: &[u8], out: &mut Vec<u8>) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ');
    let cmd = words.next().unwrap_or_default();
    let args: Vec<&[u8]> = words.collect();
    let err: &[u8] = match (cmd, args.as_slice()) {
        (b"SET", [k, v]) if token_ok(k) && token_ok(v) => {
            store.set(k, v);
            out.extend_from_slice(b"OK\n");
            return;
        }
        (b"GET", [k]) if token_ok(k) => {
            let start = out.len();
            out.extend_from_slice(b"VALUE ");
            if store.get_into(k, out) {
                out.push(b'\n');
            } else {
                out.truncate(start);
                out.extend_from_slice(b"NONE\n");
            }
            return;
        }
        (b"SET", [_, _]) | (b"GET", [_]) => b"ERR keys and values are printable ASCII tokens without spaces",
        (b"SET", _) => b"ERR usage: SET <key> <value>",
        (b"GET", _) => b"ERR usage: GET <key>",
        (b"", []) => b"ERR empty request",
        _ => b"ERR unknown command (SET or GET)",
    };
    out.extend_from_slice(err);
    out.push(b'\n');
}

/// Serve one connection until the peer closes it (or an I/O error): read what comes, write
/// the answers. The thread-per-connection servers run exactly this, over plex's
/// `TcpStream` or std's.
#[allow(dead_code)] // kv_rtc drives Session from its callbacks instead
pub fn serve<S: Read + Write>(store: &Store, mut stream: S) -> io::Result<()> {
    let (mut session, mut buf, mut out) = (Session::default(), vec![0u8; 16 * 1024], Vec::new());
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        session.input(store, &buf[..n], &mut out);
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &Store, sess: &mut Session, pieces: &[&[u8]]) -> String {
        let mut out = Vec::new();
        for p in pieces {
            sess.input(s, p, &mut out);
        }
        String::from_utf8(out).expect("answers are ASCII")
    }

    #[test]
    fn set_then_get_and_missing_key() {
        let s = Store::default();
        let mut c = Session::default();
        assert_eq!(feed(&s, &mut c, &[b"GET a\n"]), "NONE\n");
        assert_eq!(feed(&s, &mut c, &[b"SET a 1\n", b"GET a\n"]), "OK\nVALUE 1\n");
        assert_eq!(feed(&s, &mut c, &[b"SET a 22\r\nGET a\r\n"]), "OK\nVALUE 22\n");
    }

    #[test]
    fn partial_lines_across_reads() {
        let s = Store::default();
        let mut c = Session::default();
        assert_eq!(feed(&s, &mut c, &[b"SE", b"T k", b"ey val", b"ue"]), "");
        assert_eq!(feed(&s, &mut c, &[b"\nG"]), "OK\n");
        assert_eq!(feed(&s, &mut c, &[b"ET key", b"\n"]), "VALUE value\n");
        // Byte by byte.
        let req = b"SET x yz\nGET x\nGET q\n";
        let pieces: Vec<&[u8]> = req.chunks(1).collect();
        assert_eq!(feed(&s, &mut c, &pieces), "OK\nVALUE yz\nNONE\n");
    }

    #[test]
    fn pipelined_requests_in_one_read() {
        let s = Store::default();
        let mut c = Session::default();
        let got = feed(&s, &mut c, &[b"SET a 1\nSET b 2\nGET a\nGET b\nGET c\nSET a 3\nGET a\nGET"]);
        assert_eq!(got, "OK\nOK\nVALUE 1\nVALUE 2\nNONE\nOK\nVALUE 3\n");
        assert_eq!(feed(&s, &mut c, &[b" b\n"]), "VALUE 2\n");
    }

    #[test]
    fn connections_share_the_store() {
        let s = Store::default();
        let (mut a, mut b) = (Session::default(), Session::default());
        assert_eq!(feed(&s, &mut a, &[b"SET k v\n"]), "OK\n");
        assert_eq!(feed(&s, &mut b, &[b"GET k\n"]), "VALUE v\n");
    }

    #[test]
    fn malformed_requests_get_err_and_the_session_goes_on() {
        let s = Store::default();
        let mut c = Session::default();
        for bad in [&b"\n"[..], b"PUT a b\n", b"SET a\n", b"SET a b c\n", b"GET\n", b"GET a b\n", b"SET  a b\n", b"GET \xff\n", b"SET a \x01\n", b"get a\n", b"\x00\n"] {
            let got = feed(&s, &mut c, &[bad]);
            assert!(got.starts_with("ERR ") && got.ends_with('\n') && got.matches('\n').count() == 1, "{bad:?}: {got:?}");
        }
        assert_eq!(feed(&s, &mut c, &[b"SET a b\nGET a\n"]), "OK\nVALUE b\n");
    }

    #[test]
    fn an_overlong_line_is_answered_once_and_skipped() {
        let s = Store::default();
        let mut c = Session::default();
        let long = vec![b'x'; MAX_LINE + 1];
        let got = feed(&s, &mut c, &[b"SET k ", &long[..MAX_LINE / 2], &long[MAX_LINE / 2..], &long, b" more\nGET k\n"]);
        assert_eq!(got, "ERR line too long\nNONE\n");
        // The longest accepted line still works.
        let mut line = b"SET k ".to_vec();
        line.resize(MAX_LINE, b'v');
        line.push(b'\n');
        assert_eq!(feed(&s, &mut c, &[&line]), "OK\n");
    }

    #[test]
    fn serve_answers_a_stream() {
        let s = Store::default();
        // A Read + Write over memory: reads the script, collects the answers.
        struct Pipe(io::Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Pipe {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                // Three bytes at a time, to split requests.
                let n = b.len().min(3);
                self.0.read(&mut b[..n])
            }
        }
        impl Write for Pipe {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.1.write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut p = Pipe(io::Cursor::new(b"SET a 1\nGET a\nBAD\nGET b\n".to_vec()), Vec::new());
        serve(&s, &mut p).expect("in-memory stream");
        assert_eq!(p.1, b"OK\nVALUE 1\nERR unknown command (SET or GET)\nNONE\n");
    }
}

//! The readiness API over two in-memory stacks (a server `Net` on A, a client `Net` on B),
//! driven by one thread playing both poll threads, with tokio's runtime as the executor.

// The tests play the application: threads, runtimes, real time.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::api::bridge;
use crate::api::loopback::{Driver, Loopback};
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::time::Duration;

use stack::iface::{Stack, StackConfig};
use stack::wire::MacAddr;

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn stack(last: u8, ip: Ipv4Addr) -> Stack {
    let mut cfg = StackConfig::new(MacAddr([2, 0, 0, 0, 0, last]));
    cfg.seed = last as u64;
    let mut s = Stack::new(cfg);
    s.add_address(ip, 24, false);
    s
}

fn world() -> (Net, Net, Driver) {
    let (server, ba) = bridge(None);
    let (client, bb) = bridge(None);
    let d = Loopback::new(stack(10, A), ba, stack(1, B), bb).spawn().unwrap();
    (server, client, d)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap()
}

/// Deterministic bytes for client `k`.
fn payload(k: usize, len: usize) -> Vec<u8> {
    let mut x = (k as u32).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn read_to_end(s: &TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = [0u8; 7000];
    loop {
        let n = s.read(&mut b).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..n]);
    }
}

#[test]
fn many_concurrent_echoes_are_byte_exact_through_full_rings() {
    let (server, client, _d) = world();
    let rt = rt();
    rt.block_on(async move {
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let clients = 40;
        let echo = tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (s, _) = l.accept().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let mut b = vec![0u8; 5000];
                    loop {
                        let n = s.read(&mut b).await.unwrap();
                        if n == 0 {
                            s.shutdown(Shutdown::Write).unwrap();
                            return;
                        }
                        s.write_all(&b[..n]).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let mut tasks = Vec::new();
        for k in 0..clients {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let c = Arc::new(TcpStream::connect(&client, addr).await.unwrap());
                // More than both rings and both send buffers hold: back-pressure all along.
                let data = payload(k, 300_000 + k * 977);
                let w = c.clone();
                let sent = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let got = read_to_end(&c).await.unwrap();
                writer.await.unwrap();
                assert!(got == data, "client {k}: {} bytes back of {}", got.len(), data.len());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        echo.await.unwrap();
    });
}

#[test]
fn connect_errors_have_std_kinds() {
    let (_server, client, _d) = world();
    rt().block_on(async move {
        let e = TcpStream::connect(&client, SocketAddrV4::new(A, 9)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        let e = TcpStream::connect(&client, "[::1]:80").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    });
}

#[test]
fn try_calls_would_block_and_shutdown_read_reads_eof() {
    let (server, client, _d) = world();
    rt().block_on(async move {
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        assert_eq!(l.try_accept().unwrap_err().kind(), ErrorKind::WouldBlock);
        let c = TcpStream::connect(&client, l.local_addr().unwrap()).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
        let mut b = [0u8; 16];
        assert_eq!(s.try_read(&mut b).unwrap_err().kind(), ErrorKind::WouldBlock);
        c.write_all(b"hello").await.unwrap();
        s.readable().await.unwrap();
        assert_eq!(s.try_read(&mut b).unwrap(), 5);
        assert_eq!(&b[..5], b"hello");
        s.shutdown(Shutdown::Read).unwrap();
        assert_eq!(s.read(&mut b).await.unwrap(), 0);
        // Writing still works after a read shutdown; the write shutdown is a FIN.
        s.write_all(b"bye").await.unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(s.try_write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
        assert_eq!(read_to_end(&c).await.unwrap(), b"bye");
    });
}

#[test]
fn dropping_a_stream_with_unread_bytes_resets_the_peer() {
    let (server, client, _d) = world();
    rt().block_on(async move {
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        let c = TcpStream::connect(&client, l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        c.write_all(b"never read").await.unwrap();
        s.readable().await.unwrap();
        drop(s);
        let mut b = [0u8; 8];
        let e = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
        // And a write after the reset fails too.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = c.write_all(b"x").await;
        let r = match r {
            Ok(()) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.write_all(b"x").await
            }
            e => e,
        };
        assert!(r.is_err());
    });
}

#[test]
fn a_dropped_stream_sends_everything_written_then_fin() {
    let (server, client, _d) = world();
    rt().block_on(async move {
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        let c = TcpStream::connect(&client, l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let data = payload(7, 200_000);
        // Fits the ring only in part: the rest goes while the stream is already dropped.
        let mut off = 0;
        while off < data.len() {
            match s.try_write(&data[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(off > 0 && off < data.len());
        drop(s);
        let got = read_to_end(&c).await.unwrap();
        assert!(got == data[..off], "{} of {off} bytes", got.len());
    });
}

#[test]
fn a_stopped_poll_thread_ends_pending_reads_accepts_and_connects() {
    let (server, client, mut d) = world();
    let rt = rt();
    let (l, s, accepted) = rt.block_on(async {
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        let c = TcpStream::connect(&client, l.local_addr().unwrap()).await.unwrap();
        let accepted = l.accept().await.unwrap();
        (l, c, accepted)
    });
    let reader = rt.spawn(async move {
        let mut b = [0u8; 8];
        s.read(&mut b).await.map_err(|e| e.kind())
    });
    let acceptor = rt.spawn(async move { l.accept().await.map(drop).map_err(|e| e.kind()) });
    std::thread::sleep(Duration::from_millis(50));
    d.stop();
    rt.block_on(async {
        assert_eq!(reader.await.unwrap(), Err(ErrorKind::ConnectionAborted));
        assert_eq!(acceptor.await.unwrap(), Err(ErrorKind::ConnectionAborted));
        let e = TcpStream::connect(&client, SocketAddrV4::new(A, 1)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionAborted);
        assert_eq!(accepted.0.write_all(b"x").await.unwrap_err().kind(), ErrorKind::ConnectionAborted);
    });
}

#[test]
fn a_notifier_fd_becomes_readable_with_the_ready_tokens() {
    use rustix::event::{poll, PollFd, PollFlags};
    let (server, client, _d) = world();
    let rt = rt();
    let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
    let n = Notifier::new().unwrap();
    let wait = |n: &Notifier, ms: i64| {
        let mut fds = [PollFd::new(n, PollFlags::IN)];
        let ts = rustix::event::Timespec { tv_sec: ms / 1000, tv_nsec: ms % 1000 * 1_000_000 };
        poll(&mut fds, Some(&ts)).unwrap()
    };
    // The listener (token 1): registered while no connection waits, ready when one does.
    let w1 = n.waker(1);
    assert!(l.poll_accept(&mut Context::from_waker(&w1)).is_pending());
    let c = rt.block_on(TcpStream::connect(&client, l.local_addr().unwrap())).unwrap();
    assert_eq!(wait(&n, 5000), 1);
    let mut tokens = Vec::new();
    n.drain(&mut tokens);
    assert_eq!(tokens, vec![1]);
    let (s, _) = l.try_accept().unwrap();
    tokens.clear();
    // The stream (token 2): registered, not ready, then ready once bytes come.
    let w2 = n.waker(2);
    assert!(s.poll_read_ready(&mut Context::from_waker(&w2)).is_pending());
    n.drain(&mut tokens);
    tokens.clear();
    assert_eq!(wait(&n, 50), 0, "nothing is ready yet");
    rt.block_on(c.write_all(b"ping")).unwrap();
    assert_eq!(wait(&n, 5000), 1);
    n.drain(&mut tokens);
    assert_eq!(tokens, vec![2]);
    assert_eq!(wait(&n, 50), 0, "drained");
    let mut b = [0u8; 8];
    assert_eq!(s.try_read(&mut b).unwrap(), 4);
}

#[test]
fn a_cancelled_connect_gives_up_and_the_next_one_works() {
    let (server, client, _d) = world();
    rt().block_on(async move {
        // A host that does not answer: the connect waits (SYN retransmissions)...
        let silent = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 80);
        let r = tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(&client, silent)).await;
        assert!(r.is_err(), "no answer, still connecting");
        // ...and the dropped future gave it up; the stack goes on.
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        let c = TcpStream::connect(&client, l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        c.write_all(b"ok").await.unwrap();
        let mut b = [0u8; 2];
        s.readable().await.unwrap();
        assert_eq!(s.try_read(&mut b).unwrap(), 2);
    });
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_async_read_and_write_copy_a_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, client, _d) = world();
    rt().block_on(async move {
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (mut r, mut w) = (&s, &s);
            let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
            AsyncWriteExt::shutdown(&mut s).await.unwrap();
            n
        });
        let mut c = TcpStream::connect(&client, addr).await.unwrap();
        let data = payload(3, 150_000);
        let (mut r, mut w) = (&c, &c);
        let (_, got) = tokio::join!(
            async {
                w.write_all(&data).await.unwrap();
                AsyncWriteExt::shutdown(&mut w).await.unwrap();
            },
            async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            }
        );
        assert!(got == data);
        assert_eq!(echo.await.unwrap(), data.len() as u64);
        c.flush().await.unwrap();
    });
}

/// Counts its wakes.
struct Counted(std::sync::atomic::AtomicUsize);

impl Wake for Counted {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Poll `f` every millisecond until it is true (at most 10 s: a stuck test fails, it does not
/// time anything).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("never: {what}");
}

/// The blocking API's cost model rests on this: a reader is woken once per wait (the poll
/// thread takes the waker it wakes), and bytes that arrive while nobody waits wake nobody, so
/// a thread that is running is never sent an unpark.
#[test]
fn a_reader_is_woken_once_per_wait_and_not_while_it_is_not_waiting() {
    let (server, client, _d) = world();
    let rt = rt();
    let (s, c) = rt.block_on(async {
        let l = TcpListener::bind(&server, SocketAddrV4::new(A, 0)).unwrap();
        let c = TcpStream::connect(&client, l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    });
    let count = Arc::new(Counted(Default::default()));
    let waker = std::task::Waker::from(count.clone());
    let wakes = || count.0.load(Ordering::SeqCst);
    let mut b = [0u8; 64];
    assert!(s.poll_read(&mut Context::from_waker(&waker), &mut b).is_pending());
    // Three arrivals while the reader waits once: one wake.
    for m in [&b"one"[..], b"two", b"three"] {
        rt.block_on(c.write_all(m)).unwrap();
    }
    eventually("the first arrival wakes the reader", || wakes() >= 1);
    let mut got = Vec::new();
    eventually("all of it arrives", || {
        match s.try_read(&mut b) {
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
        }
        got.len() == 11
    });
    assert_eq!(got, b"onetwothree");
    // More arrivals while nobody waits (the reader runs: try_read registers nothing).
    rt.block_on(c.write_all(b"four")).unwrap();
    eventually("the fourth arrives", || s.try_read(&mut b).is_ok_and(|n| n == 4));
    assert_eq!(wakes(), 1, "a reader that was not waiting was woken");
    // Waiting again: the next arrival wakes it, once.
    assert!(s.poll_read(&mut Context::from_waker(&waker), &mut b).is_pending());
    rt.block_on(c.write_all(b"five")).unwrap();
    eventually("the fifth arrival wakes the reader", || wakes() == 2);
    assert!(matches!(s.poll_read(&mut Context::from_waker(&waker), &mut b), Poll::Ready(Ok(4))));
    rt.block_on(c.write_all(b"six")).unwrap();
    eventually("the sixth arrives", || s.try_read(&mut b).is_ok_and(|n| n == 3));
    assert_eq!(wakes(), 2);
}

//! The blocking API over two in-memory stacks: a server `Net` on stack A, a client `Net` on
//! stack B, one driver thread playing both poll threads (in real time).

// The tests play the application threads of the blocking API.
#![allow(clippy::disallowed_methods)]

use super::loopback::{Driver, Loopback};
use super::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown};
use std::thread;
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

/// Server `Net` (on A) and client `Net` (on B), and their driver.
fn world() -> (Net, Net, Driver) {
    let (server, ba) = bridge(None);
    let (client, bb) = bridge(None);
    let d = Loopback::new(stack(10, A), ba, stack(1, B), bb).spawn().unwrap();
    (server, client, d)
}

/// A connected pair: (server side, client side).
fn connected(server: &Net, client: &Net) -> (TcpStream, TcpStream, TcpListener) {
    let l = server.tcp_listen(SocketAddrV4::new(A, 0), 8).unwrap();
    let c = client.tcp_connect(l.local_addr().unwrap()).unwrap();
    let (s, peer) = l.accept().unwrap();
    assert_eq!(peer, c.local_addr().unwrap());
    (s, c, l)
}

#[test]
fn echo_with_a_reader_and_a_writer_thread_on_clones() {
    let (server, client, _d) = world();
    let l = server.tcp_listen(SocketAddrV4::new(A, 7), 8).unwrap();
    let echo = thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(B));
        let mut b = [0u8; 4096];
        let mut n_total = 0;
        loop {
            let n = s.read(&mut b).unwrap();
            if n == 0 {
                break;
            }
            n_total += n;
            s.write_all(&b[..n]).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        n_total
    });
    let c = TcpStream::connect(&client, SocketAddr::V4(SocketAddrV4::new(A, 7))).unwrap();
    assert_eq!(c.peer_addr().unwrap(), SocketAddr::V4(SocketAddrV4::new(A, 7)));
    let msg: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    let mut w = c.try_clone().unwrap();
    let m = msg.clone();
    let writer = thread::spawn(move || {
        w.write_all(&m).unwrap();
        // shutdown(Write) sends FIN: the echo server reads end of stream and closes too.
        w.shutdown(Shutdown::Write).unwrap();
        assert_eq!(w.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    });
    let mut got = Vec::new();
    (&c).read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(echo.join().unwrap(), msg.len());
    assert_eq!(got, msg);
}

#[test]
fn listen_on_port_zero_and_the_addresses() {
    let (server, client, _d) = world();
    let l = TcpListener::bind(&server, "0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    assert!(stack::cluster::EPHEMERAL_PORTS.contains(&port));
    let c = client.tcp_connect(SocketAddrV4::new(A, port)).unwrap();
    let (s, peer) = l.accept().unwrap();
    assert_eq!(s.local_addr().unwrap(), SocketAddr::V4(SocketAddrV4::new(A, port)));
    assert_eq!(s.peer_addr().unwrap(), peer);
    assert_eq!(c.local_addr().unwrap(), peer);
    assert_eq!(c.peer_addr().unwrap(), s.local_addr().unwrap());
}

#[test]
fn errors_have_std_kinds() {
    let (server, client, _d) = world();
    let _l = server.tcp_listen(SocketAddrV4::new(A, 80), 8).unwrap();
    assert_eq!(server.tcp_listen(SocketAddrV4::new(A, 80), 8).unwrap_err().kind(), ErrorKind::AddrInUse);
    assert_eq!(server.tcp_listen(SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80), 8).unwrap_err().kind(), ErrorKind::AddrNotAvailable);
    assert_eq!(client.tcp_connect(SocketAddrV4::new(A, 81)).unwrap_err().kind(), ErrorKind::ConnectionRefused);
    assert_eq!(client.tcp_connect("[::1]:80").unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(client.udp_bind("[::]:0").unwrap_err().kind(), ErrorKind::Unsupported);
    let (s, _c, _l) = connected(&server, &client);
    assert_eq!(s.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(io_error(ApiError::Tcp(tcp::Error::Reset), false).kind(), ErrorKind::ConnectionReset);
    assert_eq!(io_error(ApiError::Tcp(tcp::Error::TimedOut), false).kind(), ErrorKind::TimedOut);
    assert_eq!(io_error(ApiError::Tcp(tcp::Error::NotConnected), false).kind(), ErrorKind::NotConnected);
}

#[test]
fn read_timeout_fires_and_the_stream_goes_on() {
    let (server, client, _d) = world();
    let (mut s, mut c, _l) = connected(&server, &client);
    assert_eq!(c.read_timeout().unwrap(), None);
    c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    assert_eq!(c.read_timeout().unwrap(), Some(Duration::from_millis(50)));
    let mut b = [0u8; 16];
    assert_eq!(c.read(&mut b).unwrap_err().kind(), ErrorKind::WouldBlock);
    s.write_all(b"late").unwrap();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"late");
}

#[test]
fn write_timeout_fires_when_the_peer_does_not_read() {
    let (server, client, _d) = world();
    let (_s, mut c, _l) = connected(&server, &client);
    c.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
    let chunk = vec![7u8; BUFFER];
    let mut sent = 0usize;
    let err = loop {
        match c.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 16 << 20, "the send buffer never filled");
    };
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    // Our send buffer and the peer's receive window, no more.
    assert!(sent >= 256 * 1024, "{sent}");
}

#[test]
fn nonblocking_calls_return_would_block() {
    let (server, client, _d) = world();
    let (s, mut c, l) = connected(&server, &client);
    l.set_nonblocking(true).unwrap();
    assert_eq!(l.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(c.read(&mut b).unwrap_err().kind(), ErrorKind::WouldBlock);
    (&s).write_all(b"hi").unwrap();
    // The bytes arrive at some point; a nonblocking read returns them then.
    let n = loop {
        match c.read(&mut b) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(&b[..n], b"hi");
    let u = client.udp_bind(SocketAddrV4::new(B, 0)).unwrap();
    u.set_nonblocking(true).unwrap();
    assert_eq!(u.recv_from(&mut b).unwrap_err().kind(), ErrorKind::WouldBlock);
}

#[test]
fn a_reset_wakes_a_blocked_read() {
    let (server, client, _d) = world();
    let (mut s, c, _l) = connected(&server, &client);
    s.write_all(b"unread").unwrap();
    let reader = thread::spawn(move || {
        let mut b = [0u8; 8];
        s.read(&mut b).map_err(|e| e.kind())
    });
    thread::sleep(Duration::from_millis(50));
    // Closing with unread data aborts: the peer gets a RST.
    drop(c);
    assert_eq!(reader.join().unwrap(), Err(ErrorKind::ConnectionReset));
}

#[test]
fn a_stopped_stack_wakes_a_blocked_read_and_accept() {
    let (server, client, mut d) = world();
    let (mut s, _c, l) = connected(&server, &client);
    let reader = thread::spawn(move || {
        let mut b = [0u8; 8];
        s.read(&mut b).map_err(|e| e.kind())
    });
    let acceptor = thread::spawn(move || l.accept().map(|_| ()).map_err(|e| e.kind()));
    thread::sleep(Duration::from_millis(50));
    d.stop();
    assert_eq!(reader.join().unwrap(), Err(ErrorKind::ConnectionAborted));
    assert_eq!(acceptor.join().unwrap(), Err(ErrorKind::ConnectionAborted));
    assert_eq!(server.tcp_connect(SocketAddrV4::new(B, 1)).unwrap_err().kind(), ErrorKind::ConnectionAborted);
}

#[test]
fn read_exact_past_the_end_is_unexpected_eof() {
    let (server, client, _d) = world();
    let (mut s, mut c, _l) = connected(&server, &client);
    c.write_all(b"abc").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut b = [0u8; 10];
    assert_eq!(s.read_exact(&mut b).unwrap_err().kind(), ErrorKind::UnexpectedEof);
    // shutdown(Read): reads return end of stream at once.
    c.shutdown(Shutdown::Read).unwrap();
    assert_eq!(c.read(&mut b).unwrap(), 0);
}

#[test]
fn connect_timeout_gives_up_on_a_silent_host() {
    let (_server, client, _d) = world();
    // Nobody answers ARP for .99: the SYN never leaves.
    let to = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 80));
    let e = TcpStream::connect_timeout(&client, &to, Duration::from_millis(100)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
}

#[test]
fn nodelay_is_set_and_read_back() {
    let (server, client, _d) = world();
    let (s, _c, _l) = connected(&server, &client);
    assert!(!s.nodelay().unwrap());
    s.set_nodelay(true).unwrap();
    assert!(s.nodelay().unwrap());
}

#[test]
fn udp_send_to_recv_from_and_timeouts() {
    let (server, client, _d) = world();
    let u = UdpSocket::bind(&server, SocketAddrV4::new(A, 53)).unwrap();
    let v = client.udp_bind("0.0.0.0:0").unwrap();
    assert!(v.local_addr().unwrap().port() != 0);
    let echo = thread::spawn(move || {
        let mut b = [0u8; 64];
        let (n, from) = u.recv_from(&mut b).unwrap();
        u.send_to(&b[..n], from).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        u.recv_from(&mut b).unwrap_err().kind()
    });
    v.send_to(b"query", SocketAddr::V4(SocketAddrV4::new(A, 53))).unwrap();
    let mut b = [0u8; 3];
    let (n, from) = v.recv_from(&mut b).unwrap();
    // Truncated to the buffer, like recvfrom.
    assert_eq!((&b[..n], from), (&b"que"[..], SocketAddr::V4(SocketAddrV4::new(A, 53))));
    assert_eq!(echo.join().unwrap(), ErrorKind::WouldBlock);
}

#[test]
fn a_net_of_two_shards_accepts_from_both() {
    // Two server shards with the same address, each on its own wire to its own client.
    let (server, mut bs) = bridges(vec![None, None]);
    let b1 = bs.pop().unwrap();
    let b0 = bs.pop().unwrap();
    let (client0, c0) = bridge(None);
    let (client1, c1) = bridge(None);
    let _d0 = Loopback::new(stack(10, A), b0, stack(1, B), c0).spawn().unwrap();
    let _d1 = Loopback::new(stack(10, A), b1, stack(2, Ipv4Addr::new(198, 18, 0, 2)), c1).spawn().unwrap();
    assert_eq!(server.shards(), 2);
    let l = server.tcp_listen(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 8).unwrap();
    let port = l.local_addr().unwrap().port();
    let mut x = client0.tcp_connect(SocketAddrV4::new(A, port)).unwrap();
    let mut y = client1.tcp_connect(SocketAddrV4::new(A, port)).unwrap();
    let mut peers = Vec::new();
    for _ in 0..2 {
        let (mut s, peer) = l.accept().unwrap();
        // Each accepted stream is served by the shard that accepted it.
        s.write_all(peer.to_string().as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        peers.push(peer);
    }
    let (mut gx, mut gy) = (String::new(), String::new());
    x.read_to_string(&mut gx).unwrap();
    y.read_to_string(&mut gy).unwrap();
    assert_eq!(gx, x.local_addr().unwrap().to_string());
    assert_eq!(gy, y.local_addr().unwrap().to_string());
    assert!(peers.contains(&x.local_addr().unwrap()) && peers.contains(&y.local_addr().unwrap()));
    // connect takes the shards in turn (0 first): each shard reaches only its own client.
    let l0 = client0.tcp_listen(SocketAddrV4::new(B, 9000), 8).unwrap();
    let l1 = client1.tcp_listen(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 9000), 8).unwrap();
    server.tcp_connect(SocketAddrV4::new(B, 9000)).unwrap();
    server.tcp_connect(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 9000)).unwrap();
    assert_eq!(l0.accept().unwrap().1.ip(), std::net::IpAddr::V4(A));
    assert_eq!(l1.accept().unwrap().1.ip(), std::net::IpAddr::V4(A));
}

/// Poll `f` to completion with a waker that does nothing, looking again every millisecond
/// (at most 5 s): a minimal executor for a future whose answer comes from another thread.
fn poll_until_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..5000 {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("not ready after 5 s");
}

#[test]
fn a_poll_thread_running_tasks_refuses_calls_that_would_wait_for_itself() {
    // A thread marked as a poll thread that runs the application's tasks (Plex::spawn_tokio)
    // must not wait for a poll thread's answer: its own loop would never give it. Before,
    // TcpListener::bind there hung the process for good (it ignored SIGTERM too).
    let (server, client, _d) = world();
    let (s2, c2) = (server.clone(), client.clone());
    let on_poll_thread = thread::spawn(move || {
        mark_poll_thread();
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000);
        let e = nonblocking::TcpListener::bind(&s2, any).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Deadlock);
        assert!(e.to_string().contains("bind_async"), "the error says what to use: {e}");
        assert_eq!(s2.tcp_listen(any, 8).unwrap_err().kind(), ErrorKind::Deadlock, "the blocking API's listen");
        assert_eq!(s2.udp_bind(SocketAddrV4::new(A, 53)).unwrap_err().kind(), ErrorKind::Deadlock);
        // The blocking API's parking calls panic there, with the reason (as tokio's block_on
        // inside a runtime).
        let p = std::panic::catch_unwind(|| c2.tcp_connect(SocketAddrV4::new(A, 7000)).map(|_| ())).unwrap_err();
        let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("Plex::spawn_tokio") && msg.contains("spawn_blocking"), "{msg}");
        // The async bind works there: it never blocks the thread.
        poll_until_ready(nonblocking::TcpListener::bind_async(&s2, any)).unwrap()
    });
    let l = on_poll_thread.join().unwrap();
    assert_eq!(l.local_addr().unwrap(), SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000)));
    let mut c = client.tcp_connect(SocketAddrV4::new(A, 7000)).unwrap();
    let (s, _) = poll_until_ready(l.accept()).unwrap();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    poll_until_ready(async { s.readable().await.unwrap() });
    assert_eq!(s.try_read(&mut b).unwrap(), 4);
    assert_eq!(&b, b"ping");
}

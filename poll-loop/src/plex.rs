//! [`Plex`]: the one way to start plex on an interface.
//!
//! ```no_run
//! # use poll_loop::Plex;
//! # struct MyApp;
//! # impl poll_loop::runner::App for MyApp {
//! #     fn start(&mut self, _: stack::time::Instant, _: &mut stack::iface::Stack) -> Result<(), String> { Ok(()) }
//! #     fn event(&mut self, _: stack::time::Instant, _: &mut stack::iface::Stack, _: stack::iface::SocketHandle, _: stack::iface::SocketEvent) {}
//! # }
//! let report = Plex::on("eth1").addr("198.18.0.11".parse().unwrap(), 24).queues(2).serve(|_queue| MyApp)?;
//! eprint!("{report}");
//! # Ok::<(), poll_loop::StartError>(())
//! ```
//!
//! It does, in order, what every user of plex would otherwise have to get right by hand: reads
//! the interface's MAC and MTU from sysfs; joins the cluster if asked (before touching the
//! interface); attaches the steering program through a BPF link (held by the poll threads, so
//! it lives exactly as long as a queue runs, and dies with the process even on `kill -9`) and
//! puts the addresses in its home map; opens one AF_XDP socket per queue and registers it;
//! builds one stack shard per queue, seeded from the OS's randomness (ISN secrets, ports), with
//! the address added and announced; wraps the socket in the capture / fault-injection tap;
//! gives every poll thread a waker (the blocking API's requests and [`Running::stop`] wake a
//! sleeping loop at once); stops on SIGINT/SIGTERM; and runs one pinned poll thread per queue.
//! Every step that fails says what was wrong ([`StartError`]).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use stack::iface::{Stack, StackConfig};
use stack::wire::MacAddr;

use crate::api::Net;
use crate::clock::Clock;
use crate::tap::{FaultConfig, FrameTap};
use crate::error::StartError;
use crate::runner::{App, PollMode, Runner};
use crate::xdp::{AttachMode, SteerStats, Steering};
use crate::xsk::{Waker, Xsk, XskConfig};

/// Adjusts each queue's stack configuration (congestion control, limits, ...).
type Configure = Box<dyn Fn(u32, &mut StackConfig) + Send>;

/// The builder: `Plex::on(iface)`, options, then [`serve`](Plex::serve) (block until
/// stopped), [`spawn`](Plex::spawn) (a [`Running`] handle) or [`blocking`](Plex::blocking)
/// (the blocking API's [`Net`]).
pub struct Plex {
    iface: String,
    addr: Option<(Ipv4Addr, u8)>,
    extra: Vec<Ipv4Addr>,
    gateway: Option<Ipv4Addr>,
    queues: u32,
    cores: Vec<usize>,
    poll: PollMode,
    xdp_mode: AttachMode,
    frames: u32,
    faults: Option<FaultConfig>,
    pcap: Option<String>,
    configure: Option<Configure>,
    cluster: Option<(Arc<coupling::ClusterConfig>, String)>,
    app_name: Option<String>,
    signals: bool,
    syn_steering: bool,
}

impl core::fmt::Debug for Plex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Plex")
            .field("iface", &self.iface)
            .field("addr", &self.addr)
            .field("queues", &self.queues)
            .field("poll", &self.poll)
            .field("xdp_mode", &self.xdp_mode)
            .finish_non_exhaustive()
    }
}

impl Plex {
    /// plex on the interface `iface`: one queue, adaptive polling, generic XDP, 4096 UMEM
    /// frames, stops on SIGINT/SIGTERM. An address ([`addr`](Plex::addr)) is required.
    pub fn on(iface: &str) -> Plex {
        Plex {
            iface: iface.to_string(),
            addr: None,
            extra: Vec::new(),
            gateway: None,
            queues: 1,
            cores: Vec::new(),
            poll: PollMode::Adaptive { spin: 2000 },
            xdp_mode: AttachMode::Generic,
            frames: 4096,
            faults: None,
            pcap: None,
            configure: None,
            cluster: None,
            app_name: None,
            signals: true,
            syn_steering: true,
        }
    }
    /// plex's address and prefix length (not a kernel address of the interface).
    pub fn addr(mut self, ip: Ipv4Addr, prefix: u8) -> Plex {
        self.addr = Some((ip, prefix));
        self
    }
    /// One more address on the same prefix (repeatable).
    pub fn extra_addr(mut self, ip: Ipv4Addr) -> Plex {
        self.extra.push(ip);
        self
    }
    /// The default gateway.
    pub fn gateway(mut self, ip: Ipv4Addr) -> Plex {
        self.gateway = Some(ip);
        self
    }
    /// Queues, each with its AF_XDP socket, stack shard, application and poll thread.
    pub fn queues(mut self, n: u32) -> Plex {
        self.queues = n;
        self
    }
    /// Pin queue i's poll thread to `cores[i]` (unpinned beyond the list).
    pub fn cores(mut self, cores: Vec<usize>) -> Plex {
        self.cores = cores;
        self
    }
    /// Busy polling or spin-then-sleep (the default).
    pub fn poll(mut self, mode: PollMode) -> Plex {
        self.poll = mode;
        self
    }
    /// Where the XDP program runs (generic by default).
    pub fn xdp_mode(mut self, mode: AttachMode) -> Plex {
        self.xdp_mode = mode;
        self
    }
    /// UMEM frames per queue (4 KiB each).
    pub fn frames(mut self, n: u32) -> Plex {
        self.frames = n;
        self
    }
    /// Inject seeded faults into received frames.
    pub fn faults(mut self, f: FaultConfig) -> Plex {
        self.faults = Some(f);
        self
    }
    /// Capture every frame to this pcap file (queue N > 0 writes `PATH.N`).
    pub fn pcap(mut self, path: impl Into<String>) -> Plex {
        self.pcap = Some(path.into());
        self
    }
    /// Adjust each queue's stack configuration after plex filled in MAC, MTU, MSS, gateway
    /// and the random seed.
    pub fn configure(mut self, f: impl Fn(u32, &mut StackConfig) + Send + 'static) -> Plex {
        self.configure = Some(Box::new(f));
        self
    }
    /// Join the cluster `cfg` as its stack `name`. On several queues, queue 0's shard is the
    /// member (the *lead*) and the others follow it ([`crate::shards`]).
    pub fn cluster(mut self, cfg: Arc<coupling::ClusterConfig>, name: &str) -> Plex {
        self.cluster = Some((cfg, name.to_string()));
        self
    }
    /// The application's name: in a cluster whose config gives this stack `source_ipa`
    /// statements, connections that bind no address leave from the address listed for this
    /// name (z/OS SOURCEIPA; [`StackConfig::app_name`]).
    pub fn app_name(mut self, name: &str) -> Plex {
        self.app_name = Some(name.to_string());
        self
    }
    /// A cluster member that routes a distributed address lets its XDP program hand new
    /// connections to the targets itself (round robin and weighted round robin: the SYN never
    /// reaches the poll thread; on by default), or (`false`) decides every SYN in the poll
    /// thread.
    pub fn syn_steering(mut self, on: bool) -> Plex {
        self.syn_steering = on;
        self
    }
    /// Stop on SIGINT and SIGTERM (the default), or leave signals alone.
    pub fn stop_on_signals(mut self, yes: bool) -> Plex {
        self.signals = yes;
        self
    }

    /// Run `make(queue)` on every queue until SIGINT/SIGTERM, an application is done, or an
    /// application's start fails; the counters of every queue.
    pub fn serve<A: App + Send + 'static>(self, make: impl FnMut(u32) -> A) -> Result<Report, StartError> {
        self.spawn(make)?.join()
    }

    /// Start `make(queue)` on every queue and return at once.
    pub fn spawn<A: App + Send + 'static>(self, mut make: impl FnMut(u32) -> A) -> Result<Running, StartError> {
        self.launch(|q, _| Some(Plain(make(q))))
    }

    /// Start one application on one queue (clients: the replies of a connection come back
    /// to the queue that opened it, which only a single queue guarantees).
    pub fn spawn_single<A: App + Send + 'static>(self, app: A) -> Result<Running, StartError> {
        if self.queues != 1 {
            return Err(StartError::Other(format!("a single application runs on one queue, not {}", self.queues)));
        }
        let mut app = Some(app);
        self.launch(|_, _| app.take().map(Plain))
    }

    /// Start the application APIs' bridge on every queue: the [`Net`] is for application
    /// threads and tasks, with the blocking API (`tcp_listen`, `tcp_connect`, `udp_bind`) and
    /// the readiness / async one ([`crate::api::nonblocking`]), wired to wake the poll threads.
    pub fn net(self) -> Result<(Net, Running), StartError> {
        self.blocking()
    }

    /// The same as [`net`](Plex::net) (the name it had when the `Net` served the blocking
    /// API only).
    pub fn blocking(self) -> Result<(Net, Running), StartError> {
        self.launch_bridges(|_, _, bridge| Plain(bridge))
    }

    /// Start the application APIs' bridge on every queue, one `Net` over all of them (made
    /// once every queue's waker exists); `body(net, queue, bridge)` is what queue `queue`'s
    /// poll thread runs.
    fn launch_bridges<B: Body>(self, mut body: impl FnMut(&Net, u32, crate::api::Bridge) -> B) -> Result<(Net, Running), StartError> {
        let mut net = None;
        let mut bridges: Vec<Option<crate::api::Bridge>> = Vec::new();
        let running = self.launch(|q, wakers| {
            if q == 0 {
                let (n, b) = crate::api::bridges(wakers.iter().map(|w| Some(w.clone())).collect());
                net = Some(n);
                bridges = b.into_iter().map(Some).collect();
            }
            let bridge = bridges.get_mut(q as usize).and_then(Option::take)?;
            Some(body(net.as_ref()?, q, bridge))
        })?;
        let net = net.ok_or_else(|| StartError::Other("the application API's bridge was not created".into()))?;
        Ok((net, running))
    }

    /// Thread per core with tokio (feature `tokio`): every poll thread also runs a tokio
    /// current-thread runtime, and `main(net, queue)` is that queue's first task, with `net`
    /// the readiness API ([`crate::api::nonblocking`]) of this queue's shard alone. Tasks it
    /// spawns (`tokio::spawn`) run on the same thread: a connection accepted there is served
    /// there, and every wake-up between the stack and the tasks stays on the thread (no
    /// futex, no eventfd, no other core), for about the CPU per request of a
    /// run-to-completion application with tokio's code. Each queue binds its own listeners
    /// (like SO_REUSEPORT per core; port 0 picks a port per queue). A queue stops when its
    /// `main` returns (the others too, as when an application is done), on
    /// [`Running::stop`] or SIGINT/SIGTERM; its tasks are dropped with its runtime. A task
    /// that blocks or computes long delays every connection of its queue: give such work to
    /// `tokio::task::spawn_blocking` or another thread. See [`crate::local`].
    ///
    /// ```no_run
    /// use poll_loop::api::nonblocking::TcpListener;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let running = poll_loop::Plex::on("eth1").addr("198.18.0.11".parse().unwrap(), 24).queues(2).spawn_tokio(|net, _queue| async move {
    ///     let listener = TcpListener::bind_async(&net, "0.0.0.0:7").await.expect("port 7");
    ///     while let Ok((mut stream, _)) = listener.accept().await {
    ///         tokio::spawn(async move {
    ///             let mut buf = [0u8; 4096];
    ///             while let Ok(n @ 1..) = stream.read(&mut buf).await {
    ///                 if stream.write_all(&buf[..n]).await.is_err() {
    ///                     break;
    ///                 }
    ///             }
    ///         });
    ///     }
    /// })?;
    /// eprint!("{}", running.join()?);
    /// # Ok::<(), poll_loop::StartError>(())
    /// ```
    #[cfg(feature = "tokio")]
    pub fn spawn_tokio<F, Fut>(self, main: F) -> Result<Running, StartError>
    where
        F: Fn(Net, u32) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        // Each queue's tasks get a Net of their own shard.
        self.launch_bridges(|net, q, bridge| Local { bridge, main: main(net.only(q as usize), q) }).map(|(_, running)| running)
    }

    /// [`spawn_tokio`](Plex::spawn_tokio), then wait until it stops: the counters of every
    /// queue.
    #[cfg(feature = "tokio")]
    pub fn serve_tokio<F, Fut>(self, main: F) -> Result<Report, StartError>
    where
        F: Fn(Net, u32) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.spawn_tokio(main)?.join()
    }

    fn check(&self) -> Result<(Ipv4Addr, u8), StartError> {
        let bad = |s: String| Err(StartError::Other(s));
        let Some((ip, prefix)) = self.addr else { return bad(format!("plex on {} has no address (Plex::addr)", self.iface)) };
        if prefix > 32 {
            return bad(format!("prefix length {prefix} of {ip} is above 32"));
        }
        if self.queues == 0 || self.queues > crate::xdp::layout::MAX_QUEUES {
            return bad(format!("{} queues: plex runs 1 to {}", self.queues, crate::xdp::layout::MAX_QUEUES));
        }
        if let Some(f) = &self.faults {
            for (name, p) in [("drop", f.drop), ("duplicate", f.duplicate), ("corrupt", f.corrupt), ("reorder", f.reorder)] {
                if !(0.0..=1.0).contains(&p) {
                    return bad(format!("fault injection: {name} {p} is not a probability between 0 and 1"));
                }
            }
        }
        Ok((ip, prefix))
    }

    /// Set everything up and start the poll threads; `make` gives each queue its application.
    /// Start every queue: `make(queue, wakers)` gives queue `queue`'s application, `wakers`
    /// being every queue's waker (in queue order), so an application spanning queues (the
    /// blocking API's Net) can be built at queue 0.
    fn launch<B: Body>(self, mut make: impl FnMut(u32, &[Arc<Waker>]) -> Option<B>) -> Result<Running, StartError> {
        let (addr, prefix) = self.check()?;
        let iface = self.iface.as_str();
        let mac: MacAddr = read_sys(iface, "address")?.parse().map_err(|e| StartError::Other(format!("{iface}: its MAC address: {e}")))?;
        let mtu: usize = read_sys(iface, "mtu")?.parse().unwrap_or(1500);
        if mtu > 3000 {
            return Err(StartError::Other(format!(
                "{iface} has MTU {mtu}: plex's 4 KiB UMEM frames carry at most 3000 (ip link set {iface} mtu 1500)"
            )));
        }
        let clock = Clock::default();
        // A cluster member joins before it touches the interface (a duplicate is refused here).
        let mut member = match &self.cluster {
            None => None,
            Some((cfg, name)) => {
                let ident = coupling::node::Identity { pid: std::process::id(), mac: mac.0, ifindex: crate::xsk::ifindex(iface)? as u32 };
                Some(crate::cluster::ClusterMember::join(cfg.clone(), name, ident, clock).map_err(StartError::Other)?)
            }
        };
        // A cluster member pins its link (when a BPF filesystem is mounted): killed, its XDP fast
        // path keeps forwarding the distributor's established flows while the cluster moves.
        let pin = self.cluster.as_ref().and_then(|(cfg, name)| crate::xdp::pin_dir().map(|d| crate::xdp::pin_path(&d, &cfg.name, name)));
        let steering = Arc::new(Steering::attach_pinned(iface, self.xdp_mode, pin.as_deref())?);
        for a in std::iter::once(&addr).chain(&self.extra) {
            steering.add_home(*a, false).map_err(StartError::Other)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        if self.signals {
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())
                    .map_err(|e| StartError::Other(format!("installing the SIGINT/SIGTERM handlers: {e}")))?;
            }
        }
        let mut queues = Vec::new();
        // Several queues: the shards hand each other their connections' segments (and, in a
        // cluster, the lead shard decides for the others).
        let shard_set = (self.queues > 1).then(|| crate::shards::ShardSet::new(self.queues as usize));
        let own: Vec<Ipv4Addr> = std::iter::once(addr).chain(self.extra.iter().copied()).collect();
        // What a follower shard of a cluster member knows of the cluster.
        let mut followers: Vec<Option<crate::shards::ShardCluster>> = Vec::new();
        if let (Some((m, sc)), Some(set), Some((cfg, _))) = (member.as_mut(), &shard_set, &self.cluster) {
            sc.set_shards(set.clone());
            m.set_shards(set.clone());
            let follower = |q| {
                let f = crate::shards::Follower::new(own.clone(), cfg.clone(), sc.slot(), sc.ports_shared(), clock);
                crate::shards::ShardCluster::follower(q, set.clone(), f)
            };
            followers = (0..self.queues).map(|q| (q > 0).then(|| follower(q))).collect();
        }
        let clustered = member.is_some();
        // One host's secrets: a cookie SYN-ACK one shard sends may be answered on any queue.
        let secrets_seed =
            getrandom::u64().map_err(|e| StartError::Other(format!("reading the OS's randomness for the stack's secrets: {e}")))?;
        for q in 0..self.queues {
            let xsk = Xsk::open(&XskConfig { ifname: iface.to_string(), queue: q, frames: self.frames, ..XskConfig::default() })?;
            steering.register_xsk(q, xsk.fd())?;
            let mut cfg = StackConfig::new(mac);
            cfg.mtu = mtu;
            cfg.gateway = self.gateway;
            cfg.tcp.mss = (mtu - 40) as u16;
            cfg.app_name = self.app_name.clone();
            cfg.seed =
                getrandom::u64().map_err(|e| StartError::Other(format!("reading the OS's randomness for the stack's ports: {e}")))?;
            cfg.secrets_seed = Some(secrets_seed);
            if let Some(f) = &self.configure {
                f(q, &mut cfg);
            }
            let (mut stack, member) = match member.take() {
                None => match (&shard_set, followers.get_mut(q as usize).and_then(Option::take)) {
                    (Some(_), Some(f)) => (Stack::with_cluster(cfg, Box::new(f)), None),
                    (Some(set), None) => (Stack::with_cluster(cfg, Box::new(crate::shards::ShardCluster::new(q, set.clone()))), None),
                    (None, _) => (Stack::new(cfg), None),
                },
                Some((m, mut handle)) => {
                    handle.set_steering(steering.home_map().map_err(StartError::Other)?, steering.flow_map().map_err(StartError::Other)?);
                    if self.syn_steering {
                        handle.set_syn_steering(steering.syn_map().map_err(StartError::Other)?);
                    }
                    (Stack::with_cluster(cfg, Box::new(handle)), Some(m))
                }
            };
            for a in std::iter::once(&addr).chain(&self.extra) {
                stack.add_address(*a, prefix, false);
                // Tell the segment where the address lives now.
                stack.announce(*a);
            }
            let pcap = self.pcap.as_ref().map(|p| if q == 0 { p.clone() } else { format!("{p}.{q}") });
            let waker = Arc::new(Waker::new().map_err(|e| StartError::Other(format!("creating the wake-up eventfd: {e}")))?);
            let mut runner = Runner::new(xsk, stack, tap(self.faults.clone(), pcap.as_deref())?, self.poll, stop.clone()).with_clock(clock);
            runner.set_waker(waker.clone());
            if let Some(m) = member {
                runner = runner.with_cluster(m);
                if shard_set.is_some() {
                    runner.prime();
                }
            }
            if let Some(set) = &shard_set {
                let link = if clustered { crate::shards::ShardLink::clustered(q, set.clone()) } else { crate::shards::ShardLink::new(q, set.clone()) };
                runner = runner.with_shards(link);
            }
            queues.push((runner, waker));
        }
        if let Some(set) = &shard_set {
            set.set_wakers(queues.iter().map(|(_, w)| w.clone()).collect());
        }
        let mut threads = Vec::new();
        let mut wakers = Vec::new();
        let stopper = Stopper { stop: stop.clone(), wakers: Vec::new() };
        let every_waker: Vec<Arc<Waker>> = queues.iter().map(|(_, w)| w.clone()).collect();
        for (q, (runner, waker)) in queues.into_iter().enumerate() {
            let app = make(q as u32, &every_waker);
            wakers.push(waker);
            let core = self.cores.get(q).copied();
            // Every poll thread holds the steering program: it stays attached while any runs.
            let held = steering.clone();
            let stop = stop.clone();
            let spawned = app.ok_or_else(|| StartError::Other(format!("no application for queue {q}"))).and_then(|app| {
                std::thread::Builder::new()
                    .name(format!("plex-poll-{q}"))
                    .spawn(move || {
                        Runner::pin(core);
                        let (runner, result) = app.run(runner);
                        // One queue finishing (a client done, a start error) ends the others too.
                        stop.store(true, Ordering::Relaxed);
                        let stats = held.stats();
                        drop(held);
                        (runner, stats, result)
                    })
                    .map_err(|e| StartError::Other(format!("spawning poll thread {q}: {e}")))
            });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    // Stops and joins the threads already started.
                    drop(Running { iface: self.iface.clone(), mode: steering.mode(), stopper: Stopper { wakers, ..stopper }, threads });
                    return Err(e);
                }
            }
        }
        Ok(Running { iface: self.iface, mode: steering.mode(), stopper: Stopper { wakers, ..stopper }, threads })
    }
}

/// What a poll thread runs.
trait Body: Send + 'static {
    /// Run `runner` until it stops: the runner back, and the application's start error.
    fn run(self, runner: Runner) -> (Runner, Result<(), String>);
}

/// A run-to-completion application (the readiness API's bridge is one).
struct Plain<A>(A);

impl<A: App + Send + 'static> Body for Plain<A> {
    fn run(mut self, mut runner: Runner) -> (Runner, Result<(), String>) {
        let result = runner.run(&mut self.0);
        (runner, result)
    }
}

/// The readiness API's bridge and the application's tasks under one tokio runtime.
#[cfg(feature = "tokio")]
struct Local<Fut> {
    bridge: crate::api::Bridge,
    main: Fut,
}

#[cfg(feature = "tokio")]
impl<Fut: std::future::Future<Output = ()> + Send + 'static> Body for Local<Fut> {
    fn run(self, runner: Runner) -> (Runner, Result<(), String>) {
        let (runner, _, result) = crate::local::run(runner, self.bridge, self.main);
        (runner, result)
    }
}

/// The one place the capture / fault-injection tap is built.
fn tap(faults: Option<FaultConfig>, pcap: Option<&str>) -> Result<FrameTap, StartError> {
    FrameTap::new(faults, pcap).map_err(|e| StartError::Other(format!("opening the capture file {}: {e}", pcap.unwrap_or(""))))
}

fn read_sys(iface: &str, what: &str) -> Result<String, StartError> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}"))
        .map(|s| s.trim().to_string())
        .map_err(|_| StartError::NoSuchInterface(iface.to_string()))
}

/// Stops a running plex from anywhere (cheap to clone, `Send + Sync`).
#[derive(Debug, Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
}

impl Stopper {
    /// Ask every poll thread to stop (they tear down and return; see [`Running::join`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            w.wake();
        }
    }
    /// Whether a stop was asked (or a signal arrived, or a queue finished).
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

type PollThread = JoinHandle<(Runner, SteerStats, Result<(), String>)>;

/// plex running: its poll threads. Dropping it stops them and waits for them.
#[derive(Debug)]
pub struct Running {
    iface: String,
    mode: AttachMode,
    stopper: Stopper,
    threads: Vec<PollThread>,
}

impl Running {
    /// The XDP mode the program runs in.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }
    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }
    /// Ask the poll threads to stop.
    pub fn stop(&self) {
        self.stopper.stop()
    }
    /// A handle that stops them from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }
    /// Wait until every poll thread has finished (stopped, or its application done): the
    /// counters of every queue, or the first application's start error.
    pub fn join(mut self) -> Result<Report, StartError> {
        let mut queues = Vec::new();
        let mut steering = SteerStats::default();
        let mut failed = None;
        let mut panicked = false;
        for h in self.threads.drain(..) {
            match h.join() {
                Ok((runner, stats, result)) => {
                    queues.push(runner);
                    // The last thread to finish read the program's counters last.
                    steering = stats;
                    if let Err(e) = result {
                        failed.get_or_insert(e);
                    }
                }
                Err(_) => panicked = true,
            }
            self.stopper.stop();
        }
        if panicked {
            return Err(StartError::Other("a poll thread panicked".into()));
        }
        match failed {
            Some(e) => Err(StartError::App(e)),
            None => Ok(Report { steering, queues }),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopper.stop();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// What a run leaves: the XDP program's counters and every queue's poll loop (its socket,
/// stack, tap and loop counters through [`Runner`]'s accessors). `Display` prints them all.
#[derive(Debug)]
pub struct Report {
    /// The steering program's counters when the last queue stopped.
    pub steering: SteerStats,
    /// Every queue's runner, in queue order (its stack, counters, tap).
    pub queues: Vec<Runner>,
}

impl core::fmt::Display for Report {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let st = &self.steering;
        writeln!(
            f,
            "xdp: ip_redirected {} arp_redirected {} passed {} redirect_failed {} forwarded {} syn_steered {}",
            st.ip_redirected, st.arp_redirected, st.passed, st.redirect_failed, st.forwarded, st.syn_steered
        )?;
        for (q, r) in self.queues.iter().enumerate() {
            let x = r.xsk().stats();
            let t = r.tap().stats;
            writeln!(
                f,
                "queue {q}: iterations {} sleeps {} rx {} tx {} kicks {} (budget {}) no_frame {} forwarded {} unforwarded {} | device dropped {} reordered {} duplicated {} corrupted {}",
                r.stats().iterations, r.stats().sleeps, x.rx_frames, x.tx_frames, x.tx_kicks, r.xsk().tx_budget(), x.tx_no_frame, r.stats().forwarded, r.stats().unforwarded,
                t.dropped, t.delayed, t.duplicated, t.corrupted
            )?;
            if let Some(l) = r.shards() {
                writeln!(f, "queue {q}: segments handed to the shard owning their connection {} (dropped {})", l.handed, l.unhanded)?;
            }
            if let Some(e) = r.cluster().map(|m| m.events()) {
                writeln!(
                    f,
                    "queue {q} cluster events: listeners opened {} closed {}, connections opened {} closed {} moved {}, ports released {}",
                    e.listeners_opened,
                    e.listeners_closed,
                    e.connections_opened,
                    e.connections_closed,
                    e.connections_moved,
                    e.ports_released
                )?;
            }
            if let Some(d) = crate::cluster::dist_stats(r.stack()) {
                writeln!(f, "queue {q} distributor: {d:?}")?;
            }
            if let Some(h) = crate::handoff::counters(r.stack()) {
                if h != crate::handoff::HandoffCounters::default() {
                    writeln!(f, "queue {q} handoff: {h:?}")?;
                }
            }
            if let Some((p, fwd)) = crate::cluster::port_stats(r.stack()) {
                writeln!(
                    f,
                    "queue {q} cluster ports: claims={} claim_conflicts={} releases={} reclaimed={} exhausted={} invalid={} ports_forwarded={fwd}",
                    p.claims, p.claim_conflicts, p.releases, p.reclaimed, p.exhausted, p.invalid
                )?;
            }
            let c = r.stack().counters();
            let is_drop = |k: &str| stack::iface::DropReason::ALL.iter().any(|d| d.name() == k);
            let traffic: Vec<String> = c.iter().filter(|(k, v)| *v > 0 && !is_drop(k)).map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "queue {q} stack: {}", traffic.join(" "))?;
            let drops: Vec<String> = stack::iface::DropReason::ALL
                .iter()
                .filter(|d| c.dropped(**d) > 0)
                .map(|d| format!("{}={}", d.name(), c.dropped(*d)))
                .collect();
            writeln!(f, "queue {q} drops: total={} {}", c.total_drops(), drops.join(" "))?;
            let lc: Vec<String> = r.stack().listener_counters().iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                f,
                "queue {q} listeners: {} | tcp_sockets={} buffer_bytes={}",
                lc.join(" "),
                r.stack().tcp_socket_count(),
                r.stack().buffer_memory()
            )?;
            match r.xsk().kernel_stats() {
                Ok(k) => {
                    let kc: Vec<String> = k.iter().map(|(n, v)| format!("{n}={v}")).collect();
                    writeln!(f, "queue {q} xdp_statistics: {}", kc.join(" "))?;
                }
                Err(e) => writeln!(f, "queue {q} xdp_statistics: unavailable ({e})")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl App for Nothing {
        fn start(&mut self, _: stack::time::Instant, _: &mut Stack) -> Result<(), String> {
            Ok(())
        }
        fn event(&mut self, _: stack::time::Instant, _: &mut Stack, _: stack::iface::SocketHandle, _: stack::iface::SocketEvent) {}
    }

    fn err(p: Plex) -> String {
        p.stop_on_signals(false).spawn(|_| Nothing).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn bad_options_are_named_before_anything_is_touched() {
        let ip = Ipv4Addr::new(198, 18, 0, 11);
        assert!(err(Plex::on("plx-nonexistent0")).contains("has no address"));
        assert!(err(Plex::on("plx-nonexistent0").addr(ip, 33)).contains("prefix length 33"));
        assert!(err(Plex::on("plx-nonexistent0").addr(ip, 24).queues(0)).contains("0 queues"));
        let f = FaultConfig { drop: 1.5, ..FaultConfig::default() };
        assert!(err(Plex::on("plx-nonexistent0").addr(ip, 24).faults(f)).contains("drop 1.5 is not a probability"));
        assert!(err(Plex::on("plx-nonexistent0").addr(ip, 24)).contains("no such interface: \"plx-nonexistent0\""));
        // The blocking API spans queues: two are accepted, and the interface is what fails.
        let e = Plex::on("plx-nonexistent0").addr(ip, 24).queues(2).blocking().map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("no such interface"), "{e}");
    }
}

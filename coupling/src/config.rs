//! The cluster config (TOML): the cluster's name and region, its stacks, its dynamic VIPAs and
//! VIPA ranges. Parsed once into [`ClusterConfig`], whose values cannot hold the mistakes the
//! parser rejects (unknown stacks, duplicate or overlapping addresses, ranks out of range);
//! every error names the statement and the reason.
//!
//! ```toml
//! [cluster]
//! name = "plx"
//! region = "/dev/shm/plex-plx"
//! lease_ms = 250          # a member whose heartbeat is older is declared failed
//! heartbeat_ms = 10
//! primary_grace_ms = 3000 # a DVIPA whose primary has not started is activated by its first
//!                         # live backup after this long ("never": only its primary does)
//! port_quarantine_ms = 120000 # a failed stack's cluster ports are reclaimed after this long
//!                             # (default 2*MSL with Linux's 60 s MSL)
//!
//! [[stack]]
//! name = "s1"
//! interface = "plx-s1"
//! address = "198.18.0.11/24"
//! # SOURCEIPA: these applications' unbound connects take this DVIPA as source address
//! source_ipa = [{ address = "198.18.0.102", apps = ["db-client"] }]
//!
//! [[dvipa]]               # VIPADEFINE + VIPABACKUP
//! address = "198.18.0.100/24"
//! primary = "s1"
//! backups = [{ stack = "s2", rank = 20 }, { stack = "s3", rank = 10 }]
//!
//! [[dvipa]]               # a distributed DVIPA (VIPADISTRIBUTE): its holder routes each new
//! address = "198.18.0.102/24"  # connection to one of the targets listening on it
//! primary = "s1"
//! backups = [{ stack = "s2", rank = 20 }]
//! [dvipa.distribute]
//! ports = [80, 443]       # or "all"; other ports are the holder's own ordinary traffic
//! targets = ["s2", "s3"]  # or "all" (every stack of the config)
//! method = "weighted_round_robin"  # round_robin (default) | weighted_round_robin |
//!                                  # least_connections | server_weight
//! weights = { s2 = 3, s3 = 1 }     # weighted_round_robin only; 1..=1000, default 1
//! backup_targets = { s2 = ["s3"] } # while backup s2 routes, it uses these targets instead
//! grace_ms = 2000         # after a takeover or takeback, hold (drop, never reset) segments of
//!                         # flows not yet reported for at most this long (default 2000)
//! # (on the [[dvipa]] itself, before [dvipa.distribute]:)
//! # cluster_ports = true   # CLUSTERPORTS: every stack takes its local ports on the address
//! #                        # from the cluster's port registry (spec/03); "tuple": one port may
//! #                        # be reused toward different remotes (a shared 4-tuple table)
//!
//! [[vipa_range]]          # VIPARANGE: bind() inside it activates the address
//! prefix = "198.18.0.128/28"
//! stacks = ["s1", "s2"]   # default: every stack
//! cluster_ports = "tuple" # for every address of the range (default false)
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::layout::{MAX_DVIPAS, MAX_PORT_REGISTRIES, MAX_STACKS};

/// Default of `distribute.grace_ms`: how long a new router holds segments of flows its
/// targets have not reported yet before it answers them with a reset.
pub const DEFAULT_DIST_GRACE_MS: u64 = 2000;

/// Default of `primary_grace_ms`: how long the backups of a DVIPA wait for a primary that has
/// not started before the first of them activates it. An operator who lists backups expects
/// the address to be served while any of them runs; waiting a few seconds keeps a cluster that
/// starts in any order from moving addresses it would give back a moment later.
pub const DEFAULT_PRIMARY_GRACE_MS: u64 = 3000;

/// Default of `port_quarantine_ms`: a failed stack's cluster ports are freed this long after
/// it was declared failed: 2*MSL with Linux's 60 s MSL (its connections' TIME-WAIT).
pub const DEFAULT_PORT_QUARANTINE_MS: u64 = 120_000;

/// The testbed's cluster (`scripts/testbed.sh up 3`): three stacks, two DVIPAs, one range.
pub const TESTBED: &str = include_str!("testbed.toml");

/// Why a cluster config was rejected; displayed as `statement: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The statement at fault, e.g. `dvipa[1] (198.18.0.101)`; the config's origin (a file
    /// path) when the TOML itself does not parse or a whole-file limit is exceeded.
    pub statement: String,
    /// What is wrong with it, in words for the operator.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.statement, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(statement: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { statement: statement.into(), reason: reason.into() }
}

/// A parsed and checked cluster config. Every stack of a cluster must run the same one: its
/// [`ClusterConfig::hash`] is stored in the region and compared at attach. Stack slots (the
/// indices of [`ClusterConfig::stacks`]) are the member slots of the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster's name (1 to 32 bytes), stored in the region header.
    pub name: String,
    /// Path of the coupling region file (default `/dev/shm/plex-<name>`).
    pub region: PathBuf,
    /// Backups activate a DVIPA whose primary has not started after this long (from when they
    /// see it inactive with its primary down); `None`: never, only its primary activates it.
    pub primary_grace_ms: Option<u64>,
    /// Lease in milliseconds (default 250, at least twice `heartbeat_ms`): a member whose last
    /// renewal is older is declared failed, and a stack whose own lease may have lapsed stops
    /// touching the network until it has renewed.
    pub lease_ms: u64,
    /// Interval between ticks of a member's node in milliseconds (default 10, at least 1).
    pub heartbeat_ms: u64,
    /// The stacks, in slot order (1 to [`MAX_STACKS`], unique names and addresses).
    pub stacks: Vec<StackDef>,
    /// The configured (primary/backup) DVIPAs, in row order (at most [`MAX_DVIPAS`]).
    pub dvipas: Vec<DvipaDef>,
    /// The VIPA ranges (non-overlapping, disjoint from stack addresses and configured DVIPAs).
    pub ranges: Vec<RangeDef>,
    /// Cluster ports of a failed stack (or of an earlier incarnation of a stack) are reclaimed
    /// this long after it died (default [`DEFAULT_PORT_QUARANTINE_MS`]).
    pub port_quarantine_ms: u64,
}

/// How the stacks share the local ports of an address with `cluster_ports` (spec/03).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortsMode {
    /// `cluster_ports = true`: one owner per port (z/OS CLUSTERPORTS): about 28k ephemeral
    /// ports per address for the whole cluster.
    Port,
    /// `cluster_ports = "tuple"`: one owner per 4-tuple, so a port is reused toward different
    /// remotes; explicit binds still own their port exclusively.
    Tuple,
}

impl PortsMode {
    /// The mode's name in `plex ctl` (`port`, `tuple`).
    pub fn name(self) -> &'static str {
        match self {
            PortsMode::Port => "port",
            PortsMode::Tuple => "tuple",
        }
    }
}

/// One `[[stack]]`: a member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackDef {
    /// The stack's name (1 to 32 bytes), as given to `plex run --stack`.
    pub name: String,
    /// The interface it runs on (1 to 15 bytes).
    pub interface: String,
    /// The stack's own address: never moves, never a DVIPA.
    pub addr: Ipv4Addr,
    /// Prefix length of `addr`'s subnet.
    pub prefix: u8,
    /// CPU cores to pin the poll threads to, one per queue in order (empty: not pinned).
    pub cores: Vec<usize>,
    /// Queues the stack polls; always 1 in this version (the parser refuses other values).
    pub queues: u32,
    /// SOURCEIPA: (source DVIPA, application names): an application named here that connects
    /// without binding gets that address as its source. Every address is a configured DVIPA
    /// or inside a VIPA range; no application is listed twice.
    pub source_ipa: Vec<(Ipv4Addr, Vec<String>)>,
}

/// What the holder of a DVIPA does when its primary returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Giveback {
    /// Give the address back at once if the holder has no connections on it; otherwise keep it
    /// (delayed giveback) until they have ended, then give it back. Connections are never
    /// moved.
    Auto,
    /// Move every connection the holder has on the address to the returning primary by live
    /// connection handoff (spec/04), then give the address back at once: no waiting for
    /// connections to end, no reset.
    Handoff,
}

/// One `[[dvipa]]`: a configured dynamic VIPA with its primary and ranked backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DvipaDef {
    /// The address (not a stack's own address, not inside a VIPA range).
    pub addr: Ipv4Addr,
    /// Prefix length the address is added with.
    pub prefix: u8,
    /// Stack slot of the primary.
    pub primary: usize,
    /// (stack slot, rank 1..=254).
    pub backups: Vec<(usize, u8)>,
    /// What a holder does when the primary returns.
    pub giveback: Giveback,
    /// The connection distribution of this DVIPA (`distribute = {..}`); `None`: an ordinary
    /// DVIPA, all its traffic handled by its holder.
    pub distribute: Option<DistributeDef>,
    /// `cluster_ports`: `None` (false, the default), or how the stacks share its ports.
    pub cluster_ports: Option<PortsMode>,
}

/// Which ports of a distributed DVIPA are distributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistPorts {
    /// Every port (`ports = "all"`).
    All,
    /// These ports (sorted, unique, none 0); others are the holder's ordinary traffic.
    List(Vec<u16>),
}

impl DistPorts {
    /// Is `port` distributed?
    pub fn contains(&self, port: u16) -> bool {
        match self {
            DistPorts::All => true,
            DistPorts::List(v) => v.binary_search(&port).is_ok(),
        }
    }
}

/// How a router picks the target of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistMethod {
    /// Each ready target in turn (by slot order), per port.
    RoundRobin,
    /// Smooth weighted round robin with the configured `weights`.
    WeightedRoundRobin,
    /// The ready target with the fewest routed connections on the DVIPA (ties: in turn).
    LeastConnections,
    /// Weighted round robin by the figure each target reports: free accept-queue room times
    /// (1 - poll-loop busy fraction) (the z/OS WLM / SHAREPORTWLM idea).
    ServerWeight,
}

impl DistMethod {
    /// The method's name in the config and in `plex ctl`.
    pub fn name(self) -> &'static str {
        match self {
            DistMethod::RoundRobin => "round_robin",
            DistMethod::WeightedRoundRobin => "weighted_round_robin",
            DistMethod::LeastConnections => "least_connections",
            DistMethod::ServerWeight => "server_weight",
        }
    }
}

/// `distribute = {..}` on a `[[dvipa]]` (spec/02): the holder of the DVIPA is its router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributeDef {
    /// The distributed ports.
    pub ports: DistPorts,
    /// Candidate target slots (sorted, unique); `"all"` is every stack of the config.
    pub targets: Vec<usize>,
    /// `targets = "all"` was written.
    pub all_targets: bool,
    /// The method.
    pub method: DistMethod,
    /// Weight per stack slot for weighted round robin (1 unless configured).
    pub weights: [u32; MAX_STACKS],
    /// (backup slot, its own target slots): used while that backup routes.
    pub backup_targets: Vec<(usize, Vec<usize>)>,
    /// Hold window after a router starts (takeover, takeback, start), in ms.
    pub grace_ms: u64,
}

impl DistributeDef {
    /// The targets router `router` chooses among: its own list if it is a backup with one,
    /// else [`DistributeDef::targets`].
    pub fn targets_of(&self, router: usize) -> &[usize] {
        self.backup_targets.iter().find(|(b, _)| *b == router).map_or(&self.targets[..], |(_, t)| &t[..])
    }
    /// Every stack that may be a target under some router (the union of all target lists):
    /// these install the DVIPA as an internal address and report to its router.
    pub fn candidates(&self) -> Vec<usize> {
        let mut v = self.targets.clone();
        for (_, t) in &self.backup_targets {
            v.extend(t);
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl DvipaDef {
    /// The role stack `slot` publishes for this DVIPA (see
    /// [`DvipaRow::roles`](crate::layout::DvipaRow::roles)): [`ROLE_PRIMARY`](crate::layout::ROLE_PRIMARY)
    /// for the primary, its rank for a backup, 0 for any other stack.
    pub fn role_of(&self, slot: usize) -> u16 {
        if slot == self.primary {
            crate::layout::ROLE_PRIMARY
        } else {
            self.backups.iter().find(|(s, _)| *s == slot).map_or(0, |(_, r)| *r as u16)
        }
    }
}

/// One `[[vipa_range]]`: a subnet whose addresses an application's bind() (or
/// `plex ctl dvipa activate`) activates on one stack at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeDef {
    /// Network address of the range (no host bits set).
    pub net: Ipv4Addr,
    /// Prefix length of the range, also the prefix its addresses are added with.
    pub prefix: u8,
    /// Stack slots that may activate addresses in it.
    pub stacks: Vec<usize>,
    /// `cluster_ports` for every address of the range: `None` (false, the default), or how
    /// the stacks share their ports.
    pub cluster_ports: Option<PortsMode>,
}

impl RangeDef {
    /// Does `a` lie in this range?
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        contains(self.net, self.prefix, a)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

fn contains(net: Ipv4Addr, prefix: u8, a: Ipv4Addr) -> bool {
    u32::from(a) & mask(prefix) == u32::from(net) & mask(prefix)
}

fn parse_cidr(statement: &str, field: &str, s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || err(statement, format!("{field} = {s:?} is not an IPv4 address with a prefix length (like \"198.18.0.100/24\")"));
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let p: u8 = p.parse().map_err(|_| bad())?;
    if p > 32 {
        return Err(bad());
    }
    Ok((a, p))
}

// The TOML as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    cluster: RawCluster,
    #[serde(default)]
    stack: Vec<RawStack>,
    #[serde(default)]
    dvipa: Vec<RawDvipa>,
    #[serde(default)]
    vipa_range: Vec<RawRange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    region: Option<PathBuf>,
    lease_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    primary_grace_ms: Option<RawGrace>,
    port_quarantine_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawGrace {
    Ms(u64),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStack {
    name: String,
    interface: String,
    address: String,
    #[serde(default)]
    cores: Vec<usize>,
    queues: Option<u32>,
    #[serde(default)]
    source_ipa: Vec<RawSourceIpa>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceIpa {
    address: String,
    apps: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDvipa {
    address: String,
    primary: String,
    #[serde(default)]
    backups: Vec<RawBackup>,
    giveback: Option<String>,
    cluster_ports: Option<toml::Value>,
    distribute: Option<RawDistribute>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAllOr<T> {
    Word(String),
    List(Vec<T>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDistribute {
    ports: RawAllOr<i64>,
    targets: RawAllOr<String>,
    method: Option<String>,
    #[serde(default)]
    weights: std::collections::BTreeMap<String, i64>,
    #[serde(default)]
    backup_targets: std::collections::BTreeMap<String, Vec<String>>,
    grace_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    stack: String,
    rank: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    prefix: String,
    stacks: Option<Vec<String>>,
    cluster_ports: Option<toml::Value>,
}

fn parse_ports_mode(st: &str, v: &Option<toml::Value>) -> Result<Option<PortsMode>, ConfigError> {
    match v {
        None | Some(toml::Value::Boolean(false)) => Ok(None),
        Some(toml::Value::Boolean(true)) => Ok(Some(PortsMode::Port)),
        Some(toml::Value::String(s)) if s == "tuple" => Ok(Some(PortsMode::Tuple)),
        Some(o) => Err(err(st, format!("cluster_ports = {o}: expected true, false or \"tuple\""))),
    }
}

fn parse_distribute(st: &str, rd: &RawDistribute, stacks: &[StackDef], primary: usize, backups: &[(usize, u8)]) -> Result<DistributeDef, ConfigError> {
    let slot = |field: &str, name: &str| {
        stacks.iter().position(|s| s.name == name).ok_or_else(|| err(st, format!("distribute.{field}: no stack named {name:?}")))
    };
    let ports = match &rd.ports {
        RawAllOr::Word(w) if w == "all" => DistPorts::All,
        RawAllOr::Word(w) => return Err(err(st, format!("distribute.ports = {w:?}: expected a list of ports or \"all\""))),
        RawAllOr::List(v) => {
            if v.is_empty() {
                return Err(err(st, "distribute.ports: empty (list at least one port, or \"all\")"));
            }
            let mut out = Vec::new();
            for p in v {
                if !(1..=65535).contains(p) {
                    return Err(err(st, format!("distribute.ports: {p} is not a port (1 to 65535)")));
                }
                if out.contains(&(*p as u16)) {
                    return Err(err(st, format!("distribute.ports: {p} is listed twice")));
                }
                out.push(*p as u16);
            }
            out.sort_unstable();
            DistPorts::List(out)
        }
    };
    let list = |field: &str, names: &[String]| -> Result<Vec<usize>, ConfigError> {
        if names.is_empty() {
            return Err(err(st, format!("distribute.{field}: empty (name at least one stack, or \"all\")")));
        }
        let mut out = Vec::new();
        for n in names {
            let s = slot(field, n)?;
            if out.contains(&s) {
                return Err(err(st, format!("distribute.{field}: {n:?} is listed twice")));
            }
            out.push(s);
        }
        out.sort_unstable();
        Ok(out)
    };
    let (targets, all_targets) = match &rd.targets {
        RawAllOr::Word(w) if w == "all" => ((0..stacks.len()).collect(), true),
        RawAllOr::Word(w) => return Err(err(st, format!("distribute.targets = {w:?}: expected a list of stacks or \"all\""))),
        RawAllOr::List(v) => (list("targets", v)?, false),
    };
    let method = match rd.method.as_deref() {
        None | Some("round_robin") => DistMethod::RoundRobin,
        Some("weighted_round_robin") => DistMethod::WeightedRoundRobin,
        Some("least_connections") => DistMethod::LeastConnections,
        Some("server_weight") => DistMethod::ServerWeight,
        Some(o) => {
            return Err(err(st, format!("distribute.method = {o:?}: expected \"round_robin\", \"weighted_round_robin\", \"least_connections\" or \"server_weight\"")))
        }
    };
    let mut weights = [1u32; MAX_STACKS];
    if !rd.weights.is_empty() && method != DistMethod::WeightedRoundRobin {
        return Err(err(st, format!("distribute.weights: only for method \"weighted_round_robin\" (this one is {:?})", method.name())));
    }
    for (n, w) in &rd.weights {
        let s = slot("weights", n)?;
        if !(1..=1000).contains(w) {
            return Err(err(st, format!("distribute.weights: {n} = {w}: weights are 1 to 1000")));
        }
        weights[s] = *w as u32;
    }
    let mut backup_targets = Vec::new();
    for (n, names) in &rd.backup_targets {
        let b = slot("backup_targets", n)?;
        if b == primary || !backups.iter().any(|(s, _)| *s == b) {
            return Err(err(st, format!("distribute.backup_targets: {n:?} is not a backup of this DVIPA")));
        }
        backup_targets.push((b, list("backup_targets", names)?));
    }
    let grace_ms = rd.grace_ms.unwrap_or(DEFAULT_DIST_GRACE_MS);
    if grace_ms > 600_000 {
        return Err(err(st, format!("distribute.grace_ms = {grace_ms}: at most 600000")));
    }
    Ok(DistributeDef { ports, targets, all_targets, method, weights, backup_targets, grace_ms })
}

impl ClusterConfig {
    /// Parse a cluster config; `origin` names it in errors (a file path).
    pub fn parse(text: &str, origin: &str) -> Result<ClusterConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| err(origin, e.to_string().trim_end().replace('\n', " ")))?;
        let c = &raw.cluster;
        if c.name.is_empty() || c.name.len() > 32 {
            return Err(err("[cluster] name", "must be 1 to 32 bytes"));
        }
        let lease_ms = c.lease_ms.unwrap_or(250);
        let heartbeat_ms = c.heartbeat_ms.unwrap_or(10);
        if heartbeat_ms == 0 || lease_ms < 2 * heartbeat_ms {
            return Err(err("[cluster]", format!("lease_ms ({lease_ms}) must be at least twice heartbeat_ms ({heartbeat_ms}), and heartbeat_ms at least 1")));
        }
        let region = c.region.clone().unwrap_or_else(|| PathBuf::from(format!("/dev/shm/plex-{}", c.name)));
        let port_quarantine_ms = c.port_quarantine_ms.unwrap_or(DEFAULT_PORT_QUARANTINE_MS);
        if port_quarantine_ms > 3_600_000 {
            return Err(err("[cluster]", format!("port_quarantine_ms = {port_quarantine_ms}: at most 3600000 (an hour)")));
        }
        let primary_grace_ms = match &c.primary_grace_ms {
            None => Some(DEFAULT_PRIMARY_GRACE_MS),
            Some(RawGrace::Ms(ms)) => Some(*ms),
            Some(RawGrace::Word(w)) if w == "never" => None,
            Some(RawGrace::Word(w)) => return Err(err("[cluster]", format!("primary_grace_ms = {w:?}: expected milliseconds or \"never\""))),
        };

        if raw.stack.is_empty() {
            return Err(err(origin, "no [[stack]]: a cluster needs at least one stack"));
        }
        if raw.stack.len() > MAX_STACKS {
            return Err(err(origin, format!("{} stacks: at most {MAX_STACKS}", raw.stack.len())));
        }
        let mut stacks: Vec<StackDef> = Vec::new();
        for (i, s) in raw.stack.iter().enumerate() {
            let st = format!("stack[{i}] ({})", s.name);
            if s.name.is_empty() || s.name.len() > 32 {
                return Err(err(st, "name must be 1 to 32 bytes"));
            }
            if stacks.iter().any(|o| o.name == s.name) {
                return Err(err(st, "a stack of this name is defined twice"));
            }
            if s.interface.is_empty() || s.interface.len() > 15 {
                return Err(err(st, format!("interface {:?} is not an interface name (1 to 15 bytes)", s.interface)));
            }
            let (addr, prefix) = parse_cidr(&st, "address", &s.address)?;
            if let Some(o) = stacks.iter().find(|o| o.addr == addr) {
                return Err(err(st, format!("address {addr} is also stack {}'s", o.name)));
            }
            let queues = s.queues.unwrap_or(1);
            if queues != 1 {
                return Err(err(st, format!("queues = {queues}: a cluster stack runs one queue in this version")));
            }
            stacks.push(StackDef {
                name: s.name.clone(),
                interface: s.interface.clone(),
                addr,
                prefix,
                cores: s.cores.clone(),
                queues,
                source_ipa: Vec::new(),
            });
        }
        let slot_of = |st: &str, name: &str| {
            stacks.iter().position(|s| s.name == name).ok_or_else(|| err(st, format!("stack {name:?} is not defined by any [[stack]]")))
        };

        if raw.dvipa.len() > MAX_DVIPAS {
            return Err(err(origin, format!("{} DVIPAs: at most {MAX_DVIPAS}", raw.dvipa.len())));
        }
        let mut dvipas: Vec<DvipaDef> = Vec::new();
        for (i, d) in raw.dvipa.iter().enumerate() {
            let st = format!("dvipa[{i}] ({})", d.address);
            let (addr, prefix) = parse_cidr(&st, "address", &d.address)?;
            if let Some(s) = stacks.iter().find(|s| s.addr == addr) {
                return Err(err(st, format!("{addr} is stack {}'s own address", s.name)));
            }
            if dvipas.iter().any(|o| o.addr == addr) {
                return Err(err(st, format!("{addr} has two primaries (it is defined twice)")));
            }
            let primary = slot_of(&st, &d.primary)?;
            let mut backups: Vec<(usize, u8)> = Vec::new();
            for b in &d.backups {
                let slot = slot_of(&st, &b.stack)?;
                if !(1..=254).contains(&b.rank) {
                    return Err(err(st, format!("backup {} has rank {}: ranks are 1 to 254 (255 is reserved for a primary awaiting a delayed giveback)", b.stack, b.rank)));
                }
                if slot == primary {
                    return Err(err(st, format!("{} is both primary and backup", b.stack)));
                }
                if backups.iter().any(|(s, _)| *s == slot) {
                    return Err(err(st, format!("backup {} is listed twice", b.stack)));
                }
                backups.push((slot, b.rank as u8));
            }
            let giveback = match d.giveback.as_deref() {
                None | Some("auto") => Giveback::Auto,
                Some("handoff") => Giveback::Handoff,
                Some(o) => return Err(err(st, format!("giveback = {o:?}: expected \"auto\" or \"handoff\""))),
            };
            let distribute = match &d.distribute {
                None => None,
                Some(rd) => Some(parse_distribute(&st, rd, &stacks, primary, &backups)?),
            };
            let cluster_ports = parse_ports_mode(&st, &d.cluster_ports)?;
            dvipas.push(DvipaDef { addr, prefix, primary, backups, giveback, distribute, cluster_ports });
        }

        let with_ports = dvipas.iter().filter(|d| d.cluster_ports.is_some()).count();
        if with_ports > MAX_PORT_REGISTRIES {
            return Err(err(origin, format!("{with_ports} DVIPAs with cluster_ports: the coupling region has {MAX_PORT_REGISTRIES} port registries")));
        }

        let mut ranges: Vec<RangeDef> = Vec::new();
        for (i, r) in raw.vipa_range.iter().enumerate() {
            let st = format!("vipa_range[{i}] ({})", r.prefix);
            let (net, prefix) = parse_cidr(&st, "prefix", &r.prefix)?;
            if u32::from(net) & !mask(prefix) != 0 {
                return Err(err(st, format!("{net} has host bits set for /{prefix}")));
            }
            if let Some(d) = dvipas.iter().find(|d| contains(net, prefix, d.addr)) {
                return Err(err(st, format!("overlaps the primary/backup DVIPA {}", d.addr)));
            }
            if let Some(s) = stacks.iter().find(|s| contains(net, prefix, s.addr)) {
                return Err(err(st, format!("contains stack {}'s own address {}", s.name, s.addr)));
            }
            if let Some(o) = ranges.iter().find(|o| contains(net, prefix, o.net) || contains(o.net, o.prefix, net)) {
                return Err(err(st, format!("overlaps vipa_range {}/{}", o.net, o.prefix)));
            }
            let slots = match &r.stacks {
                None => (0..stacks.len()).collect(),
                Some(names) => names.iter().map(|n| slot_of(&st, n)).collect::<Result<Vec<_>, _>>()?,
            };
            let cluster_ports = parse_ports_mode(&st, &r.cluster_ports)?;
            ranges.push(RangeDef { net, prefix, stacks: slots, cluster_ports });
        }

        // SOURCEIPA, once every address of the cluster is known.
        for (i, s) in raw.stack.iter().enumerate() {
            let st = format!("stack[{i}] ({})", s.name);
            let mut seen: Vec<&str> = Vec::new();
            let mut out = Vec::new();
            for (j, e) in s.source_ipa.iter().enumerate() {
                let a: Ipv4Addr = e.address.parse().map_err(|_| {
                    err(&st, format!("source_ipa[{j}]: address = {:?} is not an IPv4 address (like \"198.18.0.102\", no prefix length)", e.address))
                })?;
                if !dvipas.iter().any(|d| d.addr == a) && !ranges.iter().any(|r| r.contains(a)) {
                    return Err(err(&st, format!("source_ipa[{j}]: {a} is neither a configured DVIPA nor inside a vipa_range of the cluster")));
                }
                if e.apps.is_empty() {
                    return Err(err(&st, format!("source_ipa[{j}] ({a}): apps is empty (name at least one application)")));
                }
                for app in &e.apps {
                    if app.is_empty() {
                        return Err(err(&st, format!("source_ipa[{j}] ({a}): an application name is empty")));
                    }
                    if seen.contains(&app.as_str()) {
                        return Err(err(&st, format!("source_ipa[{j}] ({a}): application {app:?} is listed twice for this stack")));
                    }
                    seen.push(app);
                }
                out.push((a, e.apps.clone()));
            }
            stacks[i].source_ipa = out;
        }
        Ok(ClusterConfig { name: c.name.clone(), region, primary_grace_ms, lease_ms, heartbeat_ms, stacks, dvipas, ranges, port_quarantine_ms })
    }

    /// The embedded testbed config ([`TESTBED`]), parsed. Cannot fail: a test parses it.
    pub fn testbed() -> ClusterConfig {
        match ClusterConfig::parse(TESTBED, "embedded testbed config") {
            Ok(c) => c,
            // The embedded config is checked by a test; this cannot be reached from a release.
            Err(e) => unreachable!("embedded testbed config: {e}"),
        }
    }

    /// The slot of stack `name`, if the config has it.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.stacks.iter().position(|s| s.name == name)
    }

    /// A hash of everything the stacks must agree on (FNV-1a over the parsed config), stored in
    /// the region header: a stack started from another config refuses to attach.
    pub fn hash(&self) -> u64 {
        let text = format!("{self:?}");
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    }

    /// The row of configured DVIPA `addr` (its index in [`ClusterConfig::dvipas`]), if it is one.
    pub fn dvipa_index(&self, addr: Ipv4Addr) -> Option<usize> {
        self.dvipas.iter().position(|d| d.addr == addr)
    }

    /// How the stacks share the ports of `addr`: the configured DVIPA's `cluster_ports` if it
    /// is one, else that of the VIPA range it lies in; `None` when the address has none.
    pub fn ports_mode(&self, addr: Ipv4Addr) -> Option<PortsMode> {
        match self.dvipas.iter().find(|d| d.addr == addr) {
            Some(d) => d.cluster_ports,
            None => self.range_for(addr).and_then(|r| r.cluster_ports),
        }
    }

    /// SOURCEIPA: the source address stack `slot` gives application `app` when it connects
    /// without binding; `None` when the stack lists no address for it (or has no slot `slot`).
    pub fn source_ipa(&self, slot: usize, app: &str) -> Option<Ipv4Addr> {
        self.stacks.get(slot)?.source_ipa.iter().find(|(_, apps)| apps.iter().any(|a| a == app)).map(|(a, _)| *a)
    }

    /// The VIPA range `addr` lies in, if any (ranges do not overlap, so there is at most one).
    /// Which stacks may activate it there is [`RangeDef::stacks`].
    pub fn range_for(&self, addr: Ipv4Addr) -> Option<&RangeDef> {
        self.ranges.iter().find(|r| r.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[cluster]
name = "t"
[[stack]]
name = "s1"
interface = "plx-s1"
address = "198.18.0.11/24"
[[stack]]
name = "s2"
interface = "plx-s2"
address = "198.18.0.12/24"
"#;

    fn parse_with(extra: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(&format!("{BASE}{extra}"), "test.toml")
    }

    #[test]
    fn testbed_config_parses() {
        let c = ClusterConfig::testbed();
        assert_eq!(c.stacks.len(), 3);
        assert!(c.region.starts_with("/dev/shm"));
        assert!(!c.dvipas.is_empty() && !c.ranges.is_empty());
        assert_eq!(c.hash(), ClusterConfig::testbed().hash());
    }

    #[test]
    fn a_full_config() {
        let c = parse_with(
            r#"
[[dvipa]]
address = "198.18.0.100/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
[[vipa_range]]
prefix = "198.18.0.128/28"
stacks = ["s2"]
"#,
        )
        .unwrap();
        assert_eq!(c.region, PathBuf::from("/dev/shm/plex-t"));
        assert_eq!(c.dvipas[0].backups, vec![(1, 20)]);
        assert_eq!(c.dvipas[0].role_of(0), crate::layout::ROLE_PRIMARY);
        assert_eq!(c.dvipas[0].role_of(1), 20);
        assert!(c.ranges[0].contains("198.18.0.140".parse().unwrap()));
        assert!(!c.ranges[0].contains("198.18.0.144".parse().unwrap()));
        assert_eq!(c.ranges[0].stacks, vec![1]);
    }

    #[test]
    fn every_error_names_its_statement() {
        let cases: &[(&str, &str, &str)] = &[
            ("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s9\"", "dvipa[0] (198.18.0.100/24)", "stack \"s9\" is not defined"),
            ("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\nbackups = [{ stack = \"s2\", rank = 255 }]", "dvipa[0]", "ranks are 1 to 254"),
            ("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\nbackups = [{ stack = \"s2\", rank = 0 }]", "dvipa[0]", "ranks are 1 to 254"),
            ("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\n[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s2\"", "dvipa[1]", "two primaries"),
            ("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\nbackups = [{ stack = \"s1\", rank = 3 }]", "dvipa[0]", "both primary and backup"),
            ("[[dvipa]]\naddress = \"198.18.0.11/24\"\nprimary = \"s2\"", "dvipa[0]", "own address"),
            ("[[dvipa]]\naddress = \"198.18.0.300/24\"\nprimary = \"s2\"", "dvipa[0]", "not an IPv4 address"),
            ("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\ngiveback = \"later\"", "dvipa[0]", "expected \"auto\" or \"handoff\""),
            ("[[dvipa]]\naddress = \"198.18.0.130/24\"\nprimary = \"s1\"\n[[vipa_range]]\nprefix = \"198.18.0.128/28\"", "vipa_range[0]", "overlaps the primary/backup DVIPA 198.18.0.130"),
            ("[[vipa_range]]\nprefix = \"198.18.0.129/28\"", "vipa_range[0]", "host bits"),
            ("[[vipa_range]]\nprefix = \"198.18.0.0/24\"", "vipa_range[0]", "contains stack s1's own address"),
            ("[[vipa_range]]\nprefix = \"198.18.0.128/28\"\n[[vipa_range]]\nprefix = \"198.18.0.128/27\"", "vipa_range[1]", "overlaps vipa_range"),
            ("[[vipa_range]]\nprefix = \"198.18.0.128/28\"\nstacks = [\"nope\"]", "vipa_range[0]", "\"nope\" is not defined"),
            ("[[stack]]\nname = \"s1\"\ninterface = \"x\"\naddress = \"198.18.0.13/24\"", "stack[2] (s1)", "defined twice"),
            ("[[stack]]\nname = \"s3\"\ninterface = \"x\"\naddress = \"198.18.0.12/24\"", "stack[2] (s3)", "also stack s2's"),
            ("[[stack]]\nname = \"s3\"\ninterface = \"x\"\naddress = \"198.18.0.13/24\"\nqueues = 2", "stack[2] (s3)", "one queue"),
            ("[[stack]]\nname = \"s3\"\ninterface = \"a-very-long-interface-name\"\naddress = \"198.18.0.13/24\"", "stack[2]", "not an interface name"),
            ("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\ncolour = 3", "test.toml", "unknown field `colour`"),
        ];
        for (extra, statement, reason) in cases {
            let e = parse_with(extra).unwrap_err();
            assert!(e.statement.starts_with(statement), "{extra}: {e}");
            assert!(e.reason.contains(reason), "{extra}: {e}");
        }
        let e = ClusterConfig::parse("[cluster]\nname = \"t\"\nlease_ms = 10\nheartbeat_ms = 10\n", "x").unwrap_err();
        assert!(e.to_string().contains("twice heartbeat_ms"), "{e}");
        let e = parse_with("").map(|c| c.primary_grace_ms);
        assert_eq!(e, Ok(Some(DEFAULT_PRIMARY_GRACE_MS)));
        let c = ClusterConfig::parse(&BASE.replace("name = \"t\"", "name = \"t\"\nprimary_grace_ms = \"never\""), "x").unwrap();
        assert_eq!(c.primary_grace_ms, None);
        let c = ClusterConfig::parse(&BASE.replace("name = \"t\"", "name = \"t\"\nprimary_grace_ms = 500"), "x").unwrap();
        assert_eq!(c.primary_grace_ms, Some(500));
        let e = ClusterConfig::parse(&BASE.replace("name = \"t\"", "name = \"t\"\nprimary_grace_ms = \"soon\""), "x").unwrap_err();
        assert!(e.to_string().contains("\"never\""), "{e}");
        let e = ClusterConfig::parse("[cluster]\nname = \"t\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("no [[stack]]"), "{e}");
        let e = ClusterConfig::parse("this is not toml", "cfg.toml").unwrap_err();
        assert!(e.to_string().starts_with("cfg.toml: "), "{e}");
    }

    #[test]
    fn cluster_ports_and_source_ipa() {
        let c = parse_with(
            r#"
[[dvipa]]
address = "198.18.0.100/24"
primary = "s1"
cluster_ports = true
[[dvipa]]
address = "198.18.0.101/24"
primary = "s2"
cluster_ports = "tuple"
[[dvipa]]
address = "198.18.0.102/24"
primary = "s2"
cluster_ports = false
[[vipa_range]]
prefix = "198.18.0.128/28"
cluster_ports = "tuple"
[[vipa_range]]
prefix = "198.18.0.144/28"
"#,
        )
        .unwrap();
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(c.ports_mode(a("198.18.0.100")), Some(PortsMode::Port));
        assert_eq!(c.ports_mode(a("198.18.0.101")), Some(PortsMode::Tuple));
        assert_eq!(c.ports_mode(a("198.18.0.102")), None);
        assert_eq!(c.ports_mode(a("198.18.0.130")), Some(PortsMode::Tuple));
        assert_eq!(c.ports_mode(a("198.18.0.150")), None);
        assert_eq!(c.ports_mode(a("198.18.0.11")), None);
        assert_eq!(c.port_quarantine_ms, DEFAULT_PORT_QUARANTINE_MS);
        assert_eq!(ClusterConfig::testbed().port_quarantine_ms, DEFAULT_PORT_QUARANTINE_MS);

        let text = format!(
            "[cluster]\nname = \"t\"\nport_quarantine_ms = 5000\n{}",
            r#"
[[stack]]
name = "s1"
interface = "plx-s1"
address = "198.18.0.11/24"
source_ipa = [{ address = "198.18.0.100", apps = ["db-client", "batch"] }, { address = "198.18.0.130", apps = ["web"] }]
[[stack]]
name = "s2"
interface = "plx-s2"
address = "198.18.0.12/24"
[[dvipa]]
address = "198.18.0.100/24"
primary = "s1"
[[vipa_range]]
prefix = "198.18.0.128/28"
"#
        );
        let c = ClusterConfig::parse(&text, "x").unwrap();
        assert_eq!(c.port_quarantine_ms, 5000);
        assert_eq!(c.source_ipa(0, "batch"), Some(a("198.18.0.100")));
        assert_eq!(c.source_ipa(0, "web"), Some(a("198.18.0.130")));
        assert_eq!(c.source_ipa(0, "other"), None);
        assert_eq!(c.source_ipa(1, "web"), None);
        assert_eq!(c.source_ipa(7, "web"), None);
        // The hash covers the new fields.
        let c2 = ClusterConfig::parse(&text.replace("\"batch\"", "\"batch2\""), "x").unwrap();
        assert_ne!(c.hash(), c2.hash());
        let c3 = ClusterConfig::parse(&text.replace("5000", "6000"), "x").unwrap();
        assert_ne!(c.hash(), c3.hash());
        let base = parse_with("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\n").unwrap();
        let tuple = parse_with("[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\ncluster_ports = \"tuple\"\n").unwrap();
        assert_ne!(base.hash(), tuple.hash());
    }

    #[test]
    fn cluster_ports_and_source_ipa_errors() {
        let d = "[[dvipa]]\naddress = \"198.18.0.100/24\"\nprimary = \"s1\"\n";
        let stack3 = |sip: &str| format!("{d}[[stack]]\nname = \"s3\"\ninterface = \"x\"\naddress = \"198.18.0.13/24\"\nsource_ipa = {sip}\n");
        let cases: Vec<(String, &str, &str)> = vec![
            (format!("{d}cluster_ports = 3"), "dvipa[0] (198.18.0.100/24)", "cluster_ports = 3: expected true, false or \"tuple\""),
            (format!("{d}cluster_ports = \"port\""), "dvipa[0] (198.18.0.100/24)", "cluster_ports = \"port\": expected true, false or \"tuple\""),
            ("[[vipa_range]]\nprefix = \"198.18.0.128/28\"\ncluster_ports = [1]".into(), "vipa_range[0] (198.18.0.128/28)", "expected true, false or \"tuple\""),
            (stack3("[{ address = \"198.18.0.99\", apps = [\"a\"] }]"), "stack[2] (s3)", "source_ipa[0]: 198.18.0.99 is neither a configured DVIPA nor inside a vipa_range"),
            (stack3("[{ address = \"198.18.0.100/24\", apps = [\"a\"] }]"), "stack[2] (s3)", "source_ipa[0]: address = \"198.18.0.100/24\" is not an IPv4 address"),
            (stack3("[{ address = \"198.18.0.100\", apps = [] }]"), "stack[2] (s3)", "source_ipa[0] (198.18.0.100): apps is empty"),
            (stack3("[{ address = \"198.18.0.100\", apps = [\"\"] }]"), "stack[2] (s3)", "source_ipa[0] (198.18.0.100): an application name is empty"),
            (
                stack3("[{ address = \"198.18.0.100\", apps = [\"a\"] }, { address = \"198.18.0.100\", apps = [\"b\", \"a\"] }]"),
                "stack[2] (s3)",
                "source_ipa[1] (198.18.0.100): application \"a\" is listed twice",
            ),
            (stack3("[{ address = \"198.18.0.100\", app = [\"a\"] }]"), "test.toml", "unknown field `app`"),
        ];
        for (extra, statement, reason) in &cases {
            let e = parse_with(extra).unwrap_err();
            assert!(e.statement.starts_with(statement), "{extra}: {e}");
            assert!(e.reason.contains(reason), "{extra}: {e}");
        }
        let e = parse_with(&stack3("[{ address = \"198.18.0.99\", apps = [\"a\"] }]")).unwrap_err();
        assert!(e.to_string().starts_with("stack[2] (s3): source_ipa[0]"), "{e}");
        let many: String = (0..17).map(|i| format!("[[dvipa]]\naddress = \"198.18.0.{}/24\"\nprimary = \"s1\"\ncluster_ports = true\n", 100 + i)).collect();
        let e = parse_with(&many).unwrap_err();
        assert_eq!(e.to_string(), "test.toml: 17 DVIPAs with cluster_ports: the coupling region has 16 port registries");
        let e = ClusterConfig::parse(&BASE.replace("name = \"t\"", "name = \"t\"\nport_quarantine_ms = 99999999"), "x").unwrap_err();
        assert!(e.to_string().contains("port_quarantine_ms"), "{e}");
    }
}

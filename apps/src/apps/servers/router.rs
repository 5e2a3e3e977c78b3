//! The content router: HTTP/1.1 requests routed to stacks by path prefix and Host, by moving the
//! live connection (spec/04), not by proxying it.
//!
//! Every stack of the cluster runs it with the same rules (`plex run --stack sN router --rules
//! FILE`). The stack that holds the address accepts the client's connection, peeks at the
//! request line and the Host header (nothing is read: the bytes travel with the connection) and,
//! when the rules name another stack, transfers the connection there; the stack named serves
//! the request itself. A keep-alive connection whose next request belongs elsewhere is
//! transferred again, from wherever it is. A rejected or failed transfer is served where the
//! connection is. The response names the stack that served it (`X-Served-By`).
//!
//! Rules file: one rule per line, the first that matches wins; `#` starts a comment.
//! ```text
//! prefix /api     s2     # request path starts with /api
//! host   img.test s3     # Host header (port ignored)
//! default         s1
//! ```

use std::collections::HashMap;
use std::net::SocketAddrV4;

use poll_loop::handoff::{TransferDecision, TransferOffer, TransferOutcome};
use poll_loop::runner::App;
use stack::iface::{SocketEvent, SocketHandle, Stack};
use stack::tcp::Event;
use stack::time::Instant;

use crate::apps::{accept_all, listen};

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The request path starts with this.
    Prefix(String, String),
    /// The Host header (without its port) is this.
    Host(String, String),
    /// Everything else.
    Default(String),
}

/// Parse a rules file; errors name the line.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let r = match w.as_slice() {
            ["prefix", p, s] if p.starts_with('/') => Rule::Prefix(p.to_string(), s.to_string()),
            ["host", h, s] => Rule::Host(h.to_ascii_lowercase(), s.to_string()),
            ["default", s] => Rule::Default(s.to_string()),
            _ => {
                return Err(format!(
                    "rules line {}: {line:?}: expected `prefix /PATH STACK`, `host NAME STACK` or `default STACK`",
                    i + 1
                ))
            }
        };
        rules.push(r);
    }
    if rules.is_empty() {
        return Err("rules: no rule (give at least `default STACK`)".into());
    }
    Ok(rules)
}

/// The stack the rules give a request, if any.
pub fn route<'a>(rules: &'a [Rule], path: &str, host: Option<&str>) -> Option<&'a str> {
    let host = host.map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase());
    rules.iter().find_map(|r| match r {
        Rule::Prefix(p, s) if path.starts_with(p.as_str()) => Some(s.as_str()),
        Rule::Host(h, s) if host.as_deref() == Some(h.as_str()) => Some(s.as_str()),
        Rule::Default(s) => Some(s.as_str()),
        _ => None,
    })
}

/// A complete request head at the start of `buf`: (head length, path, Host).
fn parse_head(buf: &[u8]) -> Option<(usize, String, Option<String>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let host = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("host").then(|| v.trim().to_string())
    });
    Some((end, path, host))
}

/// The content router (see the module documentation).
pub struct Router {
    addr: SocketAddrV4,
    rules: Vec<Rule>,
    me: String,
    listener: Option<SocketHandle>,
    /// Connections here, and whether a transfer of theirs is in flight.
    conns: HashMap<SocketHandle, bool>,
    buf: Vec<u8>,
    /// Requests served here, connections transferred away, transfers that came back,
    /// connections that arrived by transfer.
    pub served: u64,
    pub transferred: u64,
    pub returned: u64,
    pub arrived: u64,
}

impl Router {
    /// Route by `rules` on `addr`; this stack is `me`.
    pub fn new(addr: SocketAddrV4, rules: Vec<Rule>, me: &str) -> Router {
        Router {
            addr,
            rules,
            me: me.to_string(),
            listener: None,
            conns: HashMap::new(),
            buf: vec![0u8; 16 * 1024],
            served: 0,
            transferred: 0,
            returned: 0,
            arrived: 0,
        }
    }

    /// Serve or route every complete request waiting on `h`.
    fn drive(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle) {
        loop {
            if self.conns.get(&h) != Some(&false) {
                return;
            }
            let n = stack.tcp_peek(h, &mut self.buf).unwrap_or(0);
            let Some((len, path, host)) = parse_head(&self.buf[..n]) else {
                if n == 0 && stack.tcp(h).is_some_and(|c| c.peer_closed()) {
                    let _ = stack.close(now, h);
                    self.conns.remove(&h);
                }
                return;
            };
            let target = route(&self.rules, &path, host.as_deref()).unwrap_or(&self.me).to_string();
            if target != self.me {
                match poll_loop::handoff::transfer(stack, now, h, &target, b"", false) {
                    Ok(_) => {
                        self.conns.remove(&h);
                        self.transferred += 1;
                        return;
                    }
                    Err(e) => {
                        eprintln!("router: transfer to {target} failed ({e}); serving here");
                        if let poll_loop::handoff::TransferError::Offer { restored: Some(nh), .. } = e {
                            self.conns.remove(&h);
                            self.conns.insert(nh, false);
                            return self.drive(now, stack, nh);
                        }
                    }
                }
            }
            // Serve it here: consume the head, answer.
            let mut sink = vec![0u8; len];
            if stack.tcp_recv(now, h, &mut sink) != Ok(len) {
                return;
            }
            let body = format!("stack {} served {path} for host {}\n", self.me, host.as_deref().unwrap_or("-"));
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Served-By: {}\r\n\r\n{body}",
                body.len(),
                self.me
            );
            let _ = stack.tcp_send(now, h, resp.as_bytes());
            self.served += 1;
        }
    }
}

impl App for Router {
    fn start(&mut self, now: Instant, stack: &mut Stack) -> Result<(), String> {
        self.listener = Some(listen(now, stack, self.addr)?);
        Ok(())
    }

    fn event(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, ev: SocketEvent) {
        if Some(h) == self.listener {
            let mut new = Vec::new();
            accept_all(stack, h, |c| new.push(c));
            for c in new {
                self.conns.insert(c, false);
                self.drive(now, stack, c);
            }
            return;
        }
        match ev {
            SocketEvent::Tcp(Event::Readable | Event::Connected) => self.drive(now, stack, h),
            SocketEvent::Tcp(Event::PeerClosed) => self.drive(now, stack, h),
            SocketEvent::Tcp(Event::Closed) if self.conns.remove(&h).is_some() => {
                let _ = stack.close(now, h);
            }
            _ => {}
        }
    }

    fn transfer_offer(&mut self, _now: Instant, _stack: &mut Stack, _offer: &TransferOffer) -> TransferDecision {
        TransferDecision::Accept
    }

    fn transferred(&mut self, now: Instant, stack: &mut Stack, h: SocketHandle, _app_state: &[u8]) {
        self.arrived += 1;
        self.conns.insert(h, false);
        self.drive(now, stack, h);
    }

    fn transfer_done(&mut self, now: Instant, stack: &mut Stack, _id: coupling::handoff::TransferId, outcome: TransferOutcome) {
        match outcome {
            TransferOutcome::Accepted { .. } => {}
            TransferOutcome::Rejected { handle: Some(h), .. } | TransferOutcome::Aborted { handle: Some(h) } => {
                // Back here: serve what the other stack would not take.
                self.returned += 1;
                self.conns.insert(h, false);
                let me = self.me.clone();
                let rules = std::mem::replace(&mut self.rules, vec![Rule::Default(me)]);
                self.drive(now, stack, h);
                self.rules = rules;
            }
            _ => {}
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        eprintln!(
            "router {}: served {} requests, transferred {} connections away, {} came back, {} arrived",
            self.me, self.served, self.transferred, self.returned, self.arrived
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_route_first_match() {
        let r = parse_rules("# rules\nprefix /api s2\nhost img.test s3 # images\ndefault s1\n").unwrap();
        assert_eq!(route(&r, "/api/x", Some("img.test")), Some("s2"));
        assert_eq!(route(&r, "/x", Some("IMG.test:80")), Some("s3"));
        assert_eq!(route(&r, "/x", None), Some("s1"));
        assert!(parse_rules("prefix api s2").unwrap_err().contains("line 1"));
        assert!(parse_rules("# nothing").is_err());
    }

    #[test]
    fn request_heads_parse_only_when_complete() {
        assert_eq!(parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\n"), None);
        let (n, p, h) = parse_head(b"GET /a HTTP/1.1\r\nhost: x:80\r\n\r\nGET /b").unwrap();
        assert_eq!((n, p.as_str(), h.as_deref()), (31, "/a", Some("x:80")));
    }
}

//! The simulated network: byte streams between named nodes, with delay (so messages on
//! different connections reorder), partitions that hold or reset the connections crossing
//! them (both ways or one way), and bursts of loss (a lost segment that TCP gives up on
//! resets the connection).
//!
//! A connection is two one-way links. A write lands in its link's queue with a delivery
//! time (never before the previous segment: one connection stays in order); a read takes
//! what is due, unless the link is cut, in which case the data waits for the heal (TCP
//! retransmitting) or the connection is reset when the cut began.

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use net::sync::lock;
use net::transport::{SimAccept, SimNet, SimStream};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

#[derive(Default)]
struct LinkState {
    queue: VecDeque<(Instant, Bytes)>,
    /// The writer closed its end: EOF once the queue is drained.
    closed: bool,
    /// The connection was reset: both ends fail.
    reset: bool,
    last_at: Option<Instant>,
    reader: Option<Waker>,
}

/// One direction of a connection.
struct Link {
    from: String,
    to: String,
    state: Mutex<LinkState>,
}

impl Link {
    fn wake(st: &mut LinkState) {
        if let Some(w) = st.reader.take() {
            w.wake();
        }
    }
}

/// Hands an accepted connection (and the connecting node's name) to a listener.
type Acceptor = mpsc::UnboundedSender<(Box<dyn SimStream>, String)>;

struct State {
    rng: rand::rngs::StdRng,
    /// addr → (node, acceptor)
    listeners: BTreeMap<String, (String, Acceptor)>,
    next_port: u16,
    /// (from, to): traffic from → to does not get through.
    cut: BTreeSet<(String, String)>,
    /// Probability that a write resets its connection.
    loss: f64,
    /// Extra delay on every segment (a slow network).
    slow: Duration,
    links: Vec<Weak<Link>>,
    pub segments: u64,
    pub resets: u64,
}

pub struct Network {
    state: Mutex<State>,
}

impl Network {
    pub fn new(seed: u64) -> Arc<Network> {
        Arc::new(Network {
            state: Mutex::new(State {
                rng: rand::rngs::StdRng::seed_from_u64(seed),
                listeners: BTreeMap::new(),
                next_port: 7000,
                cut: BTreeSet::new(),
                loss: 0.0,
                slow: Duration::ZERO,
                links: Vec::new(),
                segments: 0,
                resets: 0,
            }),
        })
    }

    /// Whether traffic from `from` to `to` is cut now.
    pub fn is_cut(&self, from: &str, to: &str) -> bool {
        let s = lock(&self.state);
        s.cut.contains(&(from.to_string(), to.to_string()))
    }

    /// Cuts traffic from every node of `a` to every node of `b` (and back when `both`).
    /// With `reset`, connections crossing the cut are reset now; otherwise their data
    /// waits for the heal.
    /// Returns the pairs it cut (those not cut already), for [`Network::uncut`].
    pub fn cut(
        &self,
        a: &[String],
        b: &[String],
        both: bool,
        reset: bool,
    ) -> Vec<(String, String)> {
        let mut s = lock(&self.state);
        let mut added = Vec::new();
        for x in a {
            for y in b {
                if x == y {
                    continue;
                }
                let mut pairs = vec![(x.clone(), y.clone())];
                if both {
                    pairs.push((y.clone(), x.clone()));
                }
                for p in pairs {
                    if s.cut.insert(p.clone()) {
                        added.push(p);
                    }
                }
            }
        }
        if reset {
            let cut = s.cut.clone();
            let mut resets = 0;
            for l in s.links.iter().filter_map(Weak::upgrade) {
                if cut.contains(&(l.from.clone(), l.to.clone())) {
                    resets += reset_link(&l);
                }
            }
            s.resets += resets;
        }
        added
    }

    /// Heals the pairs a [`Network::cut`] returned.
    pub fn uncut(&self, pairs: &[(String, String)]) {
        let mut s = lock(&self.state);
        for p in pairs {
            s.cut.remove(p);
        }
        s.wake_all();
    }

    /// `node` lost power: what it had on the wire is gone and its connections reset.
    pub fn power_off(&self, node: &str) {
        let mut s = lock(&self.state);
        let mut resets = 0;
        for l in s.links.iter().filter_map(Weak::upgrade) {
            if l.from == node || l.to == node {
                resets += reset_link(&l);
            }
        }
        s.resets += resets;
    }

    pub fn heal(&self) {
        let mut s = lock(&self.state);
        s.cut.clear();
        s.loss = 0.0;
        s.slow = Duration::ZERO;
        s.wake_all();
    }

    pub fn set_loss(&self, p: f64) {
        lock(&self.state).loss = p;
    }

    pub fn set_slow(&self, d: Duration) {
        lock(&self.state).slow = d;
    }

    pub fn counters(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.segments, s.resets)
    }

    /// The node listening on `addr`, if any.
    pub fn node_at(&self, addr: &str) -> Option<String> {
        lock(&self.state)
            .listeners
            .get(addr)
            .map(|(n, _)| n.clone())
    }

    fn delay(s: &mut State) -> Duration {
        let base = if s.rng.random_bool(0.03) {
            Duration::from_millis(s.rng.random_range(2..40))
        } else {
            Duration::from_micros(s.rng.random_range(30..400))
        };
        base + s.slow
    }
}

/// Resets both directions of the connection `l` belongs to (its peer link is found by the
/// ends, which hold both). Returns 1.
fn reset_link(l: &Link) -> u64 {
    let mut st = lock(&l.state);
    st.reset = true;
    st.queue.clear();
    Link::wake(&mut st);
    1
}

impl State {
    /// Held data may flow again: every reader looks.
    fn wake_all(&mut self) {
        self.links.retain(|l| l.strong_count() > 0);
        for l in self.links.iter().filter_map(Weak::upgrade) {
            Link::wake(&mut lock(&l.state));
        }
    }
}

impl SimNet for Network {
    fn connect(
        self: Arc<Self>,
        from: &str,
        addr: &str,
    ) -> BoxFuture<'static, Result<Box<dyn SimStream>, String>> {
        let net = self;
        let (from, addr) = (from.to_string(), addr.to_string());
        Box::pin(async move {
            let (d, target) = {
                let mut s = lock(&net.state);
                let d = Network::delay(&mut s);
                (d, s.listeners.get(&addr).cloned())
            };
            tokio::time::sleep(d).await;
            let Some((to, acceptor)) = target.filter(|(_, tx)| !tx.is_closed()) else {
                return Err("Connection refused (os error 111)".into());
            };
            if net.is_cut(&from, &to) || net.is_cut(&to, &from) {
                // SYNs are lost: the caller's timeout decides.
                std::future::pending::<()>().await;
            }
            let up = Arc::new(Link {
                from: from.clone(),
                to: to.clone(),
                state: Mutex::new(LinkState::default()),
            });
            let down = Arc::new(Link {
                from: to.clone(),
                to: from.clone(),
                state: Mutex::new(LinkState::default()),
            });
            {
                let mut s = lock(&net.state);
                s.links.push(Arc::downgrade(&up));
                s.links.push(Arc::downgrade(&down));
                if s.links.len() > 4096 {
                    s.links.retain(|l| l.strong_count() > 0);
                }
            }
            tracing::trace!(target: "sim::net", %from, %to, %addr, "connected");
            let client = End::new(&net, Arc::clone(&up), Arc::clone(&down));
            let server = End::new(&net, down, up);
            if acceptor.send((Box::new(server), from)).is_err() {
                return Err("Connection refused (os error 111)".into());
            }
            Ok(Box::new(client) as Box<dyn SimStream>)
        })
    }

    fn bind(&self, node: &str, addr: &str) -> Result<(String, SimAccept), String> {
        let mut s = lock(&self.state);
        let addr = match addr.rsplit_once(':') {
            Some((ip, "0")) => {
                s.next_port += 1;
                format!("{ip}:{}", s.next_port)
            }
            _ => addr.to_string(),
        };
        if let Some((_, tx)) = s.listeners.get(&addr) {
            if !tx.is_closed() {
                return Err(format!("{addr}: Address already in use"));
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.listeners.insert(addr.clone(), (node.to_string(), tx));
        Ok((addr, rx))
    }
}

/// One end of a connection: writes go out on `out`, reads come from `inc`.
struct End {
    net: Arc<Network>,
    out: Arc<Link>,
    inc: Arc<Link>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl End {
    fn new(net: &Arc<Network>, out: Arc<Link>, inc: Arc<Link>) -> End {
        End {
            net: Arc::clone(net),
            out,
            inc,
            timer: None,
        }
    }

    fn reset_err() -> io::Error {
        io::Error::from(io::ErrorKind::ConnectionReset)
    }
}

impl AsyncRead for End {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let held = this.net.is_cut(&this.inc.from, &this.inc.to);
        let mut st = lock(&this.inc.state);
        if st.reset || lock(&this.out.state).reset {
            return Poll::Ready(Err(End::reset_err()));
        }
        let now = Instant::now();
        let mut wake_at = None;
        if let Some((at, _)) = st.queue.front() {
            if held {
                wake_at = Some(now + Duration::from_millis(20));
            } else if *at <= now {
                let mut copied = false;
                while buf.remaining() > 0 {
                    let Some((at, seg)) = st.queue.front_mut() else {
                        break;
                    };
                    if *at > now {
                        break;
                    }
                    let n = seg.len().min(buf.remaining());
                    buf.put_slice(&seg[..n]);
                    seg.advance(n);
                    copied = true;
                    if seg.is_empty() {
                        st.queue.pop_front();
                    }
                }
                if copied {
                    return Poll::Ready(Ok(()));
                }
            } else {
                wake_at = Some(*at);
            }
        } else if st.closed {
            return Poll::Ready(Ok(()));
        }
        st.reader = Some(cx.waker().clone());
        drop(st);
        if let Some(at) = wake_at {
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            timer.as_mut().reset(at);
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

use std::future::Future;

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (d, lose) = {
            let mut s = lock(&self.net.state);
            s.segments += 1;
            let loss = s.loss;
            let lose = loss > 0.0 && s.rng.random_bool(loss);
            if lose {
                s.resets += 1;
            }
            (Network::delay(&mut s), lose)
        };
        let mut st = lock(&self.out.state);
        if st.reset || st.closed || lock(&self.inc.state).reset {
            return Poll::Ready(Err(End::reset_err()));
        }
        if lose {
            st.reset = true;
            st.queue.clear();
            Link::wake(&mut st);
            drop(st);
            let mut back = lock(&self.inc.state);
            back.reset = true;
            Link::wake(&mut back);
            return Poll::Ready(Err(End::reset_err()));
        }
        let at = (Instant::now() + d).max(st.last_at.unwrap_or_else(Instant::now));
        tracing::trace!(target: "sim::net", from = %self.out.from, to = %self.out.to, len = data.len(), delay_us = d.as_micros() as u64, "segment");
        st.last_at = Some(at);
        st.queue.push_back((at, Bytes::copy_from_slice(data)));
        Link::wake(&mut st);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = lock(&self.out.state);
        st.closed = true;
        Link::wake(&mut st);
        Poll::Ready(Ok(()))
    }
}

impl Drop for End {
    fn drop(&mut self) {
        // The process closed the socket (or died): the peer reads what was sent, then EOF;
        // its writes fail.
        let mut st = lock(&self.out.state);
        st.closed = true;
        Link::wake(&mut st);
        drop(st);
        let mut back = lock(&self.inc.state);
        back.closed = true;
        back.queue.clear();
        Link::wake(&mut back);
    }
}

//! The server: a listener thread, one thread per connection, state behind one mutex, and
//! condvars that writes notify (blocking queries and fault delays wait on them, so they wake
//! on a change, on `stop_listening` and on drop, never by polling). A blocking query waits on
//! the shard of what it reads (one service, the catalog, KV) and a write notifies only the
//! shards of what it touched, so one change among thousands of parked queries wakes a handful
//! of threads, not all of them. Connection threads get small stacks: 5,000 parked blocking
//! queries (one per watched service) cost 5,000 mostly idle threads.

use std::collections::HashMap;
use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::api;
use crate::http::{self, ReadError, Response};
use crate::model::{Fault, Health, Instance, Options, RecordedRequest};
use crate::state::{State, WaitKey};

/// Condvars blocking queries are spread over by what they read.
const SHARDS: usize = 512;
/// Stack size of a connection thread (requests are parsed and answered without recursion
/// deeper than the bounded filter parser).
const CONN_STACK_BYTES: usize = 512 * 1024;

/// What the connection threads share with the handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Notified on every state change (and on stop and drop): fault delays wait on it.
    changed: Condvar,
    /// Notified when a write touches a key hashing to the shard (all on stop and drop).
    shards: Vec<Condvar>,
    /// Notified on every recorded request.
    recorded: Condvar,
    pub(crate) opts: Options,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    active: AtomicUsize,
}

impl Shared {
    /// Whether `dc` is one of the datacenters the fake serves.
    pub(crate) fn serves(&self, dc: &str) -> bool {
        dc == self.opts.datacenter || self.opts.datacenters.iter().any(|d| d == dc)
    }

    /// The served datacenters: the local one first, then [`Options::datacenters`] in order
    /// (Consul orders them by round-trip time from the agent, so its own comes first).
    pub(crate) fn datacenters(&self) -> Vec<String> {
        let mut out = vec![self.opts.datacenter.clone()];
        for dc in &self.opts.datacenters {
            if !out.contains(dc) {
                out.push(dc.clone());
            }
        }
        out
    }

    /// The state, even if a thread panicked while holding it (the state stays consistent:
    /// every write is a single assignment under the lock).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a write and wakes the waiters on what it touched (everyone when it stopped the
    /// fake or moved the epoch).
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.lock();
        let before = (state.epoch, state.shutdown);
        let out = f(&mut state);
        let everyone = before != (state.epoch, state.shutdown);
        let touched = std::mem::take(&mut state.touched);
        drop(state);
        self.changed.notify_all();
        if everyone {
            self.shards.iter().for_each(Condvar::notify_all);
        } else {
            let mut woken: Vec<usize> = touched.iter().map(shard_of).collect();
            woken.sort_unstable();
            woken.dedup();
            for shard in woken {
                if let Some(c) = self.shards.get(shard) {
                    c.notify_all();
                }
            }
        }
        out
    }

    /// Waits until `done(state)`, or `timeout` passes, woken by writes touching `key` (by
    /// every write when `None`). `None` when the request must be abandoned: the fake stopped
    /// listening (epoch moved on) or is dropped.
    pub(crate) fn block(
        &self,
        timeout: Duration,
        epoch: u64,
        key: Option<&WaitKey>,
        done: impl Fn(&State) -> bool,
    ) -> Option<MutexGuard<'_, State>> {
        let condvar = key
            .and_then(|k| self.shards.get(shard_of(k)))
            .unwrap_or(&self.changed);
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = self.lock();
        loop {
            if guard.shutdown || guard.epoch != epoch {
                return None;
            }
            if done(&guard) {
                return Some(guard);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Some(guard);
            }
            guard = condvar
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The condvar shard of a wait key (FNV-1a over the key).
fn shard_of(key: &WaitKey) -> usize {
    let (tag, dc, text) = match key {
        WaitKey::Service(dc, name) => (0u8, dc.as_str(), name.as_str()),
        WaitKey::Catalog(dc) => (1, dc.as_str(), ""),
        WaitKey::Kv(dc) => (2, dc.as_str(), ""),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = dc.bytes().chain(std::iter::once(0)).chain(text.bytes());
    for b in std::iter::once(tag).chain(bytes) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % SHARDS as u64).unwrap_or(0)
}

/// A running listener: its stop flag and thread.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// An in-process fake Consul agent on 127.0.0.1 serving Consul's HTTP API from state.
/// Stops (closing every connection) on drop.
pub struct FakeConsul {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Mutex<Option<Acceptor>>,
}

impl std::fmt::Debug for FakeConsul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConsul")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeConsul {
    /// Starts a fake on a free port with the default [`Options`] (datacenter `dc1`).
    pub fn start() -> anyhow::Result<FakeConsul> {
        FakeConsul::start_with(Options::default())
    }

    /// Starts a fake on a free port of 127.0.0.1.
    pub fn start_with(opts: Options) -> anyhow::Result<FakeConsul> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("binding the fake consul listener")?;
        let addr = listener
            .local_addr()
            .context("fake consul listener address")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(&opts.datacenter)),
            changed: Condvar::new(),
            shards: (0..SHARDS).map(|_| Condvar::new()).collect(),
            recorded: Condvar::new(),
            opts,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        });
        let acceptor = spawn_acceptor(listener, &shared)?;
        Ok(FakeConsul {
            shared,
            addr,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    /// The listening address (127.0.0.1 and the port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers `instance` (replacing any instance with the same id) with one service
    /// check `service:<id>` in `instance.health`; returns the new raft index.
    pub fn register(&self, instance: Instance) -> u64 {
        self.shared.write(|s| s.register(instance))
    }

    /// Removes the instance `service_id`; `false` (and no new index) when there was none.
    pub fn deregister(&self, service_id: &str) -> bool {
        self.shared.write(|s| s.deregister(service_id))
    }

    /// Sets the status of the instance's service check(s); `false` when there is no such
    /// instance. The index moves only when a status changes.
    pub fn set_health(&self, service_id: &str, status: Health) -> bool {
        self.shared.write(|s| s.set_health(service_id, status))
    }

    /// Stores `value` at `key` (as `PUT /v1/kv/<key>` does); returns the new raft index.
    pub fn kv_put(&self, key: &str, value: &[u8]) -> u64 {
        self.shared.write(|s| {
            let dc = s.datacenter.clone();
            s.kv_put(&dc, key, value, 0)
        })
    }

    /// The value at `key`.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared
            .lock()
            .local()
            .kv
            .get(key)
            .map(|e| e.value.clone())
    }

    /// The local datacenter's current raft index; starts at 1, never 0. Reads answer the
    /// index of what they read, at most this: see [`FakeConsul::service_index`].
    pub fn index(&self) -> u64 {
        self.shared.lock().local().index
    }

    /// The raft index of datacenter `dc` (each datacenter is its own cluster; 1 before its
    /// first write).
    pub fn dc_index(&self, dc: &str) -> u64 {
        self.shared.lock().dc(dc).index
    }

    /// The `X-Consul-Index` a read of `service`'s instances or checks answers in the local
    /// datacenter: the last change to one of its instances (registration, deregistration,
    /// check), as Consul's per-service index.
    pub fn service_index(&self, service: &str) -> u64 {
        let state = self.shared.lock();
        state.index_of_service(&state.datacenter, service)
    }

    /// [`FakeConsul::service_index`] in datacenter `dc`.
    pub fn dc_service_index(&self, dc: &str, service: &str) -> u64 {
        self.shared.lock().index_of_service(dc, service)
    }

    /// The `X-Consul-Index` of the local `/v1/catalog/services`: the last registration or
    /// deregistration (health changes do not move it).
    pub fn catalog_index(&self) -> u64 {
        self.shared.lock().local().services_index
    }

    /// Injects `fault` into every answer from now on until [`FakeConsul::clear_fault`], also
    /// into blocking queries parked before (they get it when they are answered).
    /// Requests already blocking are not affected.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.write(|s| s.fault = Some(fault));
    }

    /// Stops injecting faults.
    pub fn clear_fault(&self) {
        self.shared.write(|s| s.fault = None);
    }

    /// "Consul is down": closes the listener (new connections are refused) and every open
    /// connection, abandoning requests that are blocking. State is kept.
    pub fn stop_listening(&self) {
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(acceptor) = acceptor {
            stop_acceptor(acceptor, self.addr);
        }
        self.shared.write(|s| s.epoch += 1);
        close_connections(&self.shared);
    }

    /// Listens again on the same port after [`FakeConsul::stop_listening`] (a no-op when
    /// listening).
    pub fn resume_listening(&self) -> anyhow::Result<()> {
        let mut slot = self.acceptor.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return Ok(());
        }
        let listener = listen(self.addr)
            .with_context(|| format!("re-binding the fake consul listener on {}", self.addr))?;
        *slot = Some(spawn_acceptor(listener, &self.shared)?);
        Ok(())
    }

    /// Every request received, in order (the most recent
    /// [`Options::max_recorded_requests`]). Requests too malformed to parse (answered 400,
    /// 413 or 431 before routing) are not recorded.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Waits until the fake has received at least `n` requests in total, at most `timeout`;
    /// `false` on timeout. A request counts once it is read, before it is answered, so a
    /// test can tell that a blocking query is parked before changing the state.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = self.shared.lock();
        loop {
            if guard.recorded_total >= n {
                return true;
            }
            let left = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return false;
            }
            guard = self
                .shared
                .recorded
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The instances of `service` (any datacenter), ordered by id, with the aggregated
    /// health of their service checks.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.shared
            .lock()
            .services
            .values()
            .filter(|s| s.instance.service == service)
            .map(crate::state::Service::view)
            .collect()
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        let acceptor = self
            .acceptor
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(acceptor) = acceptor {
            stop_acceptor(acceptor, self.addr);
        }
        self.shared.write(|s| {
            s.shutdown = true;
            s.epoch += 1;
        });
        close_connections(&self.shared);
    }
}

/// Most connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`).
/// std's 128 drops SYNs when a client opens thousands of watches at once, and each drop
/// costs that client a 1 s retransmission; Consul (Go) listens with `somaxconn`.
const BACKLOG: i32 = 4096;

/// A listener on `addr` with [`BACKLOG`] and `SO_REUSEADDR` (as std sets it on Unix).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn spawn_acceptor(listener: TcpListener, shared: &Arc<Shared>) -> anyhow::Result<Acceptor> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("fake-consul-accept".into())
        .spawn({
            let shared = Arc::clone(shared);
            let stop = Arc::clone(&stop);
            move || accept_loop(&listener, &shared, &stop)
        })
        .context("spawning the fake consul acceptor")?;
    Ok(Acceptor { stop, thread })
}

/// Sets the stop flag, wakes the blocked `accept` with a connection of our own, and waits
/// for the thread (which drops the listener). If the wake-up connection cannot be made the
/// thread is left to exit on its next connection rather than hanging the caller.
fn stop_acceptor(acceptor: Acceptor, addr: SocketAddr) {
    acceptor.stop.store(true, Ordering::SeqCst);
    if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        let _ = acceptor.thread.join();
    }
}

fn close_connections(shared: &Shared) {
    let conns: Vec<TcpStream> = shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .map(|(_, s)| s)
        .collect();
    for c in conns {
        let _ = c.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // Out of descriptors or a similar transient failure: back off instead of
            // spinning on the same error.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.active.load(Ordering::SeqCst) >= shared.opts.max_connections {
            continue; // dropping the stream closes it
        }
        let Ok(tracked) = stream.try_clone() else {
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        let epoch = shared.lock().epoch;
        shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tracked);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("fake-consul-conn".into())
            .stack_size(CONN_STACK_BYTES)
            .spawn({
                let shared = Arc::clone(shared);
                move || {
                    serve(stream, &shared, epoch);
                    forget_connection(&shared, id);
                }
            });
        if spawned.is_err() {
            forget_connection(shared, id);
        }
    }
}

fn forget_connection(shared: &Shared, id: u64) {
    if let Some(s) = shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id)
    {
        let _ = s.shutdown(Shutdown::Both);
    }
    shared.active.fetch_sub(1, Ordering::SeqCst);
}

/// Serves one connection: requests in order until the peer closes, asks to close, sends
/// something unreadable, or the fake stops.
fn serve(stream: TcpStream, shared: &Shared, epoch: u64) {
    // Reads and writes share the one descriptor (`Read`/`Write` for `&TcpStream`).
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    loop {
        let req = match http::read_request(
            &mut reader,
            &mut writer,
            shared.opts.max_header_bytes,
            shared.opts.max_body_bytes,
        ) {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Closed) => return,
            Err(ReadError::Reject(status, text)) => {
                let _ = http::write_response(&mut writer, &Response::text(status, text), true);
                return;
            }
        };
        let Some(resp) = handle(shared, req.recorded, epoch) else {
            return;
        };
        if http::write_response(&mut writer, &resp, req.close).is_err() || req.close {
            return;
        }
    }
}

/// Records the request, applies the fault, and answers. `None`: close without answering.
fn handle(shared: &Shared, req: RecordedRequest, epoch: u64) -> Option<Response> {
    let fault = {
        let mut st = shared.lock();
        if st.epoch != epoch || st.shutdown {
            return None;
        }
        if shared.opts.max_recorded_requests > 0 {
            while st.requests.len() >= shared.opts.max_recorded_requests {
                st.requests.pop_front();
            }
            st.requests.push_back(req.clone());
        }
        st.recorded_total += 1;
        st.fault.clone()
    };
    shared.recorded.notify_all();
    match &fault {
        Some(Fault::Reset) => return None,
        Some(Fault::Status(code)) => {
            return Some(Response::text(
                *code,
                format!("fake consul: injected {} {}\n", code, http::reason(*code)),
            ));
        }
        Some(Fault::Delay(d)) => {
            drop(shared.block(*d, epoch, None, |_| false)?);
        }
        _ => {}
    }
    let mut resp = api::route(shared, &req, epoch, fault.as_ref())?;
    // A blocking query may have been parked before the fault was set (or cleared): the fault in
    // force when the answer leaves is the one that applies, as with a Consul that fails while
    // a client waits.
    let fault = shared.lock().fault.clone();
    match &fault {
        Some(Fault::Reset) => return None,
        Some(Fault::Status(code)) => {
            return Some(Response::text(
                *code,
                format!("fake consul: injected {} {}\n", code, http::reason(*code)),
            ));
        }
        _ => {}
    }
    if resp.header("X-Consul-Index").is_some() {
        match fault {
            Some(Fault::IndexZero) => resp.set_header("X-Consul-Index", "0".into()),
            Some(Fault::IndexGoesBackwards) => {
                let asked = req
                    .query_param("index")
                    .and_then(|i| i.parse::<u64>().ok())
                    .filter(|&i| i > 0);
                let current = resp
                    .header("X-Consul-Index")
                    .and_then(|i| i.parse::<u64>().ok())
                    .unwrap_or(1);
                let lower = asked.unwrap_or(current).saturating_sub(1);
                resp.set_header("X-Consul-Index", lower.to_string());
            }
            Some(Fault::MalformedBody) if resp.status == 200 => {
                let cut = resp.body.len() / 2;
                resp.body.truncate(cut);
                if resp.body.is_empty() {
                    resp.body = b"[".to_vec();
                }
            }
            _ => {}
        }
    }
    Some(resp)
}

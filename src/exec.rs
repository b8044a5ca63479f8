//! A shard's task executor: one thread, no I/O of its own.
//!
//! The shard's loop (`shard::io`) owns the thread and the waiting; this module
//! keeps what that loop runs besides datagrams: spawned tasks (routes that
//! suspended for the database, write-behind, the usrloc timer) and their
//! timers. It replaces glommio on the shard: glommio's reactor re-armed two
//! timers on two rings at every park and cost ~4× a blocking responder per
//! request at low rate (docs/ARCHITECTURE.md has the measurements).
//!
//! Wake-ups from other threads (a database reply, a control command, a
//! message another shard hands over) go through the shard's [`Doorbell`]:
//! the waker queues the task id, and rings (one `eventfd` write) only when
//! the shard is parked, so a busy shard costs its wakers no syscall.
//!
//! Never: block, or poll a task while another is being polled on the same
//! thread (tasks are taken out of their slot while polled).

#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Wakes a parked shard. `parked` is set by the shard just before it waits;
/// producers push their work first, then [`Doorbell::ring`] (Dekker-style
/// with a SeqCst fence on both sides, so no wake-up is lost).
pub struct Doorbell {
    parked: AtomicBool,
    bell: Box<dyn Fn() + Send + Sync>,
}

impl Doorbell {
    pub fn new(bell: impl Fn() + Send + Sync + 'static) -> Doorbell {
        Doorbell {
            parked: AtomicBool::new(false),
            bell: Box::new(bell),
        }
    }

    /// Call after publishing work for the shard.
    #[inline]
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            (self.bell)();
        }
    }

    /// The shard is about to wait: call, then check every work source once
    /// more before waiting (and [`Doorbell::unpark`] if there is work).
    #[inline]
    pub fn park(&self) {
        self.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    #[inline]
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
    }
}

/// Task ids woken from any thread.
struct Ready {
    ids: Mutex<Vec<usize>>,
    bell: Arc<Doorbell>,
}

struct TaskWaker {
    id: usize,
    ready: Arc<Ready>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.id);
        self.ready.bell.ring();
    }
}

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

struct Slot {
    fut: Option<LocalTask>,
    waker: Waker,
}

struct TimerEntry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for TimerEntry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One shard's tasks and timers.
pub struct Executor {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    /// Spawned or woken on this thread: no lock needed.
    local: RefCell<Vec<usize>>,
    ready: Arc<Ready>,
    timers: RefCell<BinaryHeap<Reverse<TimerEntry>>>,
    timer_seq: Cell<u64>,
    live: Cell<usize>,
    max_tasks: usize,
    panics: Cell<u64>,
}

/// `spawn_local` refused: the shard already runs its maximum of tasks.
#[derive(Debug, thiserror::Error)]
#[error("the shard's task table is full")]
pub struct TasksFull;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Executor>>> = const { RefCell::new(None) };
}

impl Executor {
    pub fn new(bell: Arc<Doorbell>, max_tasks: usize) -> Rc<Executor> {
        Rc::new(Executor {
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            local: RefCell::new(Vec::new()),
            ready: Arc::new(Ready {
                ids: Mutex::new(Vec::new()),
                bell,
            }),
            timers: RefCell::new(BinaryHeap::new()),
            timer_seq: Cell::new(0),
            live: Cell::new(0),
            max_tasks: max_tasks.max(1),
            panics: Cell::new(0),
        })
    }

    /// Makes `ex` this thread's executor (for [`spawn_local`], [`sleep`]).
    pub fn enter(ex: &Rc<Executor>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(ex.clone()));
    }

    pub fn leave() {
        CURRENT.with(|c| c.borrow_mut().take());
    }

    /// Tasks alive (spawned, not finished).
    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Task polls that panicked (each was dropped, the shard went on).
    pub fn panics(&self) -> u64 {
        self.panics.get()
    }

    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) -> Result<(), TasksFull> {
        if self.live.get() >= self.max_tasks {
            return Err(TasksFull);
        }
        let fut: LocalTask = Box::pin(fut);
        let id = match self.free.borrow_mut().pop() {
            Some(id) => {
                self.slots.borrow_mut()[id].fut = Some(fut);
                id
            }
            None => {
                let mut slots = self.slots.borrow_mut();
                let id = slots.len();
                let waker = Waker::from(Arc::new(TaskWaker {
                    id,
                    ready: self.ready.clone(),
                }));
                slots.push(Slot {
                    fut: Some(fut),
                    waker,
                });
                id
            }
        };
        self.live.set(self.live.get() + 1);
        self.local.borrow_mut().push(id);
        Ok(())
    }

    /// Something is runnable now (checked by the loop before it parks).
    pub fn has_ready(&self) -> bool {
        !self.local.borrow().is_empty()
            || !self
                .ready
                .ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }

    /// Polls every woken task once (tasks woken meanwhile wait for the next
    /// call, so a task that keeps waking itself cannot starve the socket).
    /// A panicking task is dropped and counted; `on_panic` gets its message.
    pub fn run_ready(&self, on_panic: &mut dyn FnMut(&str)) -> usize {
        let mut ids = std::mem::take(&mut *self.local.borrow_mut());
        {
            let mut remote = self.ready.ids.lock().unwrap_or_else(|p| p.into_inner());
            ids.append(&mut remote);
        }
        let n = ids.len();
        for id in ids {
            let (fut, waker) = {
                let mut slots = self.slots.borrow_mut();
                let Some(slot) = slots.get_mut(id) else {
                    continue;
                };
                // A stale wake (the task finished, or was woken twice).
                let Some(fut) = slot.fut.take() else { continue };
                (fut, slot.waker.clone())
            };
            let mut fut = fut;
            let mut cx = Context::from_waker(&waker);
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
            match polled {
                Ok(Poll::Pending) => {
                    self.slots.borrow_mut()[id].fut = Some(fut);
                }
                Ok(Poll::Ready(())) => self.finish(id),
                Err(payload) => {
                    self.panics.set(self.panics.get() + 1);
                    on_panic(panic_text(&*payload));
                    drop(fut);
                    self.finish(id);
                }
            }
        }
        n
    }

    fn finish(&self, id: usize) {
        self.live.set(self.live.get() - 1);
        self.free.borrow_mut().push(id);
    }

    fn add_timer(&self, at: Instant, waker: Waker) {
        let seq = self.timer_seq.get();
        self.timer_seq.set(seq + 1);
        self.timers
            .borrow_mut()
            .push(Reverse(TimerEntry { at, seq, waker }));
    }

    /// Wakes the tasks whose timers are due.
    pub fn fire_timers(&self, now: Instant) {
        loop {
            let due = {
                let mut t = self.timers.borrow_mut();
                match t.peek() {
                    Some(Reverse(e)) if e.at <= now => t.pop(),
                    _ => None,
                }
            };
            match due {
                Some(Reverse(e)) => e.waker.wake(),
                None => break,
            }
        }
    }

    /// The earliest timer, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.borrow().peek().map(|Reverse(e)| e.at)
    }

    /// Drops every task (shutdown).
    pub fn clear(&self) {
        let futs: Vec<LocalTask> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(|s| s.fut.take())
            .collect();
        drop(futs);
        self.live.set(0);
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that, besides the default
/// report, remembers the panic's text and location on the panicking thread:
/// a panic that Lua's pcall turned into an error value is still known to be
/// a panic when the route ends ([`take_panic`]).
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = panic_text(info.payload());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{text}{at}")));
            previous(info);
        }));
    });
}

/// The last panic on this thread since the previous call, with its location.
pub fn take_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}

/// The text of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "panic"
    }
}

fn with_current<R>(f: impl FnOnce(&Executor) -> R) -> Option<R> {
    CURRENT.with(|c| c.borrow().as_deref().map(f))
}

/// Spawns a task on this thread's shard. Refused when there is no executor
/// (outside a shard) or its task table is full.
pub fn spawn_local(fut: impl Future<Output = ()> + 'static) -> Result<(), TasksFull> {
    with_current(|ex| ex.spawn(fut)).unwrap_or(Err(TasksFull))
}

/// Completes at `at` (or later). Outside a shard it never completes.
pub struct Sleep {
    at: Instant,
    registered: Option<Waker>,
}

pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        at: Instant::now() + d,
        registered: None,
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.at {
            return Poll::Ready(());
        }
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let at = this.at;
            let w = cx.waker().clone();
            with_current(|ex| ex.add_timer(at, w.clone()));
            this.registered = Some(w);
        }
        Poll::Pending
    }
}

/// `fut` did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct Elapsed;

/// Runs `fut` for at most `d`.
pub async fn timeout<T>(d: Duration, fut: impl Future<Output = T>) -> Result<T, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let mut timer = std::pin::pin!(sleep(d));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn executor() -> (Rc<Executor>, Arc<AtomicUsize>) {
        let rings = Arc::new(AtomicUsize::new(0));
        let r = rings.clone();
        let bell = Arc::new(Doorbell::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        (Executor::new(bell, 4), rings)
    }

    #[test]
    fn cross_thread_wake_rings_only_when_parked() {
        let (ex, rings) = executor();
        Executor::enter(&ex);
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let got = Rc::new(Cell::new(0));
        let g = got.clone();
        spawn_local(async move {
            g.set(rx.await.unwrap_or(0));
        })
        .unwrap();
        assert_eq!(ex.run_ready(&mut |_| {}), 1);
        assert_eq!(ex.live(), 1);
        // Not parked: the wake queues the task without ringing.
        let t = std::thread::spawn(move || tx.send(7).unwrap());
        t.join().unwrap();
        assert_eq!(rings.load(Ordering::SeqCst), 0);
        assert!(ex.has_ready());
        ex.run_ready(&mut |_| {});
        assert_eq!(got.get(), 7);
        assert_eq!(ex.live(), 0);
        // Parked: a wake rings once.
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        spawn_local(async move {
            let _ = rx.await;
        })
        .unwrap();
        ex.run_ready(&mut |_| {});
        ex.ready.bell.park();
        std::thread::spawn(move || tx.send(1).unwrap())
            .join()
            .unwrap();
        assert_eq!(rings.load(Ordering::SeqCst), 1);
        Executor::leave();
    }

    #[test]
    fn task_table_is_bounded_and_panics_are_contained() {
        let (ex, _) = executor();
        Executor::enter(&ex);
        for _ in 0..4 {
            spawn_local(std::future::pending()).unwrap();
        }
        assert!(spawn_local(async {}).is_err());
        ex.clear();
        spawn_local(async { panic!("boom") }).unwrap();
        let mut msgs = Vec::new();
        ex.run_ready(&mut |m| msgs.push(m.to_string()));
        assert_eq!(ex.panics(), 1);
        assert_eq!(msgs, vec!["boom".to_string()]);
        assert_eq!(ex.live(), 0);
        Executor::leave();
    }

    #[test]
    fn timers_fire_in_order_and_timeout_elapses() {
        let (ex, _) = executor();
        Executor::enter(&ex);
        let out = Rc::new(RefCell::new(Vec::new()));
        let o = out.clone();
        spawn_local(async move {
            let r = timeout(Duration::from_millis(1), std::future::pending::<()>()).await;
            o.borrow_mut().push(r.is_err());
        })
        .unwrap();
        ex.run_ready(&mut |_| {});
        let at = ex.next_deadline().expect("a timer");
        ex.fire_timers(at - Duration::from_micros(1));
        assert!(!ex.has_ready());
        std::thread::sleep(Duration::from_millis(2));
        ex.fire_timers(Instant::now());
        ex.run_ready(&mut |_| {});
        assert_eq!(*out.borrow(), vec![true]);
        Executor::leave();
    }
}

//! Thread per core with tokio (feature `tokio`): each poll thread also runs a tokio
//! current-thread runtime, and the application's tasks run there, on the poll thread, beside
//! its stack shard ([`crate::Plex::serve_tokio`]).
//!
//! The poll loop is one task of that runtime. A turn that did work wakes the tasks whose
//! sockets had news; the loop then reschedules itself behind them (a wake of its own task,
//! no syscall), so the tasks run before its next turn and their writes go out with it. Every
//! wake-up between the loop and the tasks stays on the thread: no futex, no eventfd, no other
//! core's cache. Idle past its spin budget (adaptive mode), the loop arms its waker and waits
//! in the runtime's own epoll for the AF_XDP socket's fd, the waker's eventfd (another thread
//! or shard wants it) or the stack's next deadline, so a quiet server sleeps.
//!
//! Against a tokio runtime on threads of its own ([`crate::Plex::net`] and the readiness
//! API), the cost is the application's work sharing the poll thread's core: a task that
//! blocks or computes long delays every connection of its queue.

use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::runner::{App, PollMode, Runner};

/// Turns in a row the loop takes before it lets the runtime poll its driver (timers, other
/// threads' wakes) while it is busy: tokio's own default.
const EVENT_INTERVAL: u32 = 61;

/// Once pending, then ready: the loop's own task goes to the back of the run queue (behind
/// the tasks its turn woke). Unlike `tokio::task::yield_now`, it does not ask the runtime to
/// poll its driver first (a syscall per turn).
struct Requeue(bool);

impl Future for Requeue {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Run `runner` with `app` (the readiness API's bridge) as one task of a tokio current-thread
/// runtime on this thread, and `main` (the application's future for this queue) as another,
/// until the stop flag is set, `main` returns, or the application is done. `main` may spawn
/// tasks (`tokio::spawn`): they run on this thread too. Gives the runner and the application
/// back, with the application's start error or its main task's panic.
pub(crate) fn run<A, F>(mut runner: Runner, mut app: A, main: F) -> (Runner, A, Result<(), String>)
where
    A: App + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().event_interval(EVENT_INTERVAL).build() {
        Ok(rt) => rt,
        Err(e) => return (runner, app, Err(format!("building the poll thread's tokio runtime: {e}"))),
    };
    crate::api::mark_poll_thread();
    if let Err(e) = runner.begin(&mut app) {
        return (runner, app, Err(e));
    }
    // The loop is a task of the runtime, not the future `block_on` polls: a task that wakes
    // itself goes back on the run queue, `block_on`'s future would wake the driver (a
    // syscall each time).
    let task = rt.spawn(async move {
        let main = tokio::spawn(main);
        let result = poll_loop(&mut runner, &mut app, &main).await;
        let result = match (result, main.is_finished()) {
            (Ok(()), true) => match main.await {
                Err(e) if e.is_panic() => Err(format!("the application's main task panicked: {}", panic_message(e.into_panic()))),
                _ => Ok(()),
            },
            (r, _) => r,
        };
        (runner, app, result)
    });
    let joined = rt.block_on(task);
    // The application's tasks (and their sockets) end with the runtime; the segments their
    // closing queued go out in the runner's last turns.
    drop(rt);
    match joined {
        Ok((mut runner, mut app, result)) => {
            runner.finish(&mut app);
            (runner, app, result)
        }
        // A poll loop that panics panics its thread, as outside a runtime.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(no message)".into())
}

/// The poll loop of [`run`]: turns while there is work, spinning in adaptive mode's budget by
/// requeueing itself, then waiting in the runtime's epoll.
async fn poll_loop<A: App>(runner: &mut Runner, app: &mut A, main: &tokio::task::JoinHandle<()>) -> Result<(), String> {
    // Duplicates of the descriptors, owned by their registrations.
    let xsk = crate::xsk::async_fd(runner.xsk().as_fd())
        .map_err(|e| format!("registering the AF_XDP socket with tokio: {e}"))?;
    let waker = runner.waker().cloned();
    let wake_fd = match &waker {
        Some(w) => Some(crate::xsk::async_fd(w.event_fd().as_fd()).map_err(|e| format!("registering the poll thread's eventfd with tokio: {e}"))?),
        None => None,
    };
    let spin = match runner.mode() {
        PollMode::Busy => u32::MAX,
        PollMode::Adaptive { spin } => spin,
    };
    let mut idle = 0u32;
    while !runner.stopping() && !main.is_finished() && !app.done() {
        if runner.turn(app) {
            idle = 0;
            Requeue(false).await;
            continue;
        }
        idle = idle.saturating_add(1);
        if idle <= spin {
            Requeue(false).await;
            continue;
        }
        idle = 0;
        // Arm the waker, then look once more: work that came before the arm is seen by this
        // turn, work after it writes the eventfd (xsk::Waker).
        if let Some(w) = &waker {
            w.arm();
            if runner.stopping() || runner.turn(app) {
                w.disarm();
                continue;
            }
        }
        if let Some(wait) = runner.sleep_for() {
            let mut timer = std::pin::pin!(tokio::time::sleep(wait));
            // A frame, a wake-up from another thread or shard, or the next deadline. A
            // readiness is cleared before the turn that takes the work: what arrives after
            // it is a new edge of the runtime's (edge-triggered) epoll.
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = xsk.poll_read_ready(cx) {
                    if let Ok(mut g) = r {
                        g.clear_ready();
                    }
                    return Poll::Ready(());
                }
                if let (Some(f), Some(w)) = (&wake_fd, &waker) {
                    if let Poll::Ready(r) = f.poll_read_ready(cx) {
                        w.event_fd().drain();
                        if let Ok(mut g) = r {
                            g.clear_ready();
                        }
                        return Poll::Ready(());
                    }
                }
                timer.as_mut().poll(cx)
            })
            .await;
            runner.slept();
        }
        if let Some(w) = &waker {
            w.disarm();
        }
    }
    Ok(())
}

//! Unix signals delivered on the GLib main loop.
//!
//! GLib's unix signal source (`g_unix_signal_add`, through glib-unix) installs a real
//! `sigaction` handler that only wakes the main context; the work happens later
//! in the main loop, where taking locks and changing pipeline states is safe.
//! Because a handler is installed, the signals also reach the process when it
//! runs as PID 1 in a container, where the kernel drops signals left at their
//! default disposition.

use std::cell::RefCell;
use std::rc::Rc;

use nix::sys::signal::Signal;

/// The signals `cpuguard-run` handles, in the order they are installed.
/// SIGUSR1 (a CPU-limit drain) is how a multi-pipeline parent drains the
/// worker it chose; left at its default, it would kill the process.
pub const HANDLED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

type Callback = Box<dyn FnMut(Signal)>;

/// Routes handled signals to whoever supervises the run. Signals that arrive
/// before a handler is set are kept and replayed to it (in practice they wait in
/// GLib until the main loop runs, which is after the handler is set).
#[derive(Clone, Default)]
pub struct Router {
    inner: Rc<RefCell<RouterInner>>,
}

#[derive(Default)]
struct RouterInner {
    handler: Option<Callback>,
    pending: Vec<Signal>,
}

impl Router {
    /// Installs GLib signal sources for every signal in [`HANDLED`]. Must be
    /// called on the thread that runs the default main loop.
    pub fn install() -> Result<Self, String> {
        let router = Router::default();
        let context = glib::MainContext::default();
        // The callbacks are not `Send`, so this thread must own the default
        // context; glib-unix panics otherwise, so check first and report it.
        let _owner = context
            .acquire()
            .map_err(|err| format!("cannot own the main context: {err}"))?;
        for signal in HANDLED {
            let route = router.clone();
            add_local(signal, move || route.deliver(signal));
        }
        Ok(router)
    }

    /// Sets the function that receives signals from now on; replays pending ones.
    pub fn set_handler(&self, handler: impl FnMut(Signal) + 'static) {
        let pending = {
            let mut inner = self.inner.borrow_mut();
            inner.handler = Some(Box::new(handler));
            std::mem::take(&mut inner.pending)
        };
        for signal in pending {
            self.deliver(signal);
        }
    }

    fn deliver(&self, signal: Signal) {
        // Take the handler out while it runs so a handler that (indirectly)
        // reaches the router again cannot hit a RefCell double borrow.
        let handler = self.inner.borrow_mut().handler.take();
        match handler {
            Some(mut handler) => {
                handler(signal);
                let mut inner = self.inner.borrow_mut();
                if inner.handler.is_none() {
                    inner.handler = Some(handler);
                }
            }
            None => self.inner.borrow_mut().pending.push(signal),
        }
    }
}

/// Calls `func` on the default main loop each time `signal` arrives.
fn add_local<F>(signal: Signal, mut func: F)
where
    F: FnMut() + 'static,
{
    glib_unix::unix_signal_add_local(signal as i32, move || {
        func();
        glib::ControlFlow::Continue
    });
}

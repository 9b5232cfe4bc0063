//! The per-thread last-error message, and the panic boundary every export
//! runs its body in.
//!
//! Why a Rust `thread_local!` and not a C `_Thread_local` buffer: the
//! problems reported with Rust thread-locals in C hosts come from lazily
//! initialised values with destructors, which register a thread-exit hook
//! (and pin the library against `dlclose`). This one is a `const`-initialised
//! byte array with no destructor, which the compiler lowers to a plain ELF
//! TLS slot exactly like a C `_Thread_local char[]`, and the build needs no
//! C compiler.

use crate::error::Error;
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Capacity of the message buffer, NUL included; longer messages are cut.
/// Room for a full path and a 1023-byte add-cow name in one message.
const MSG_CAP: usize = 4096;

thread_local! {
    static MSG: RefCell<[u8; MSG_CAP]> = const { RefCell::new([0; MSG_CAP]) };
}

/// Stores `msg` as this thread's last error (cut at a character boundary).
pub(crate) fn set_message(msg: &str) {
    let mut end = msg.len().min(MSG_CAP - 1);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &msg.as_bytes()[..end];
    // A NUL inside would hide the rest; C sees the message up to it anyway.
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    MSG.with(|m| {
        let mut m = m.borrow_mut();
        m[..end].copy_from_slice(&bytes[..end]);
        m[end] = 0;
    });
}

fn clear_message() {
    MSG.with(|m| m.borrow_mut()[0] = 0);
}

/// Records `e` and returns its negative errno.
pub(crate) fn fail(e: &Error) -> i32 {
    set_message(&e.to_string());
    let errno = e.errno();
    -(if errno > 0 { errno } else { libc::EIO })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in cowblk (a bug, please report it): {what}")
}

/// Runs an export's body: clears the message, turns an `Err` into a
/// negative errno plus message and a panic into -EIO plus message.
/// Inlined: an export's body then runs in the export's own frame.
#[inline(always)]
pub(crate) fn guard<F>(f: F) -> i32
where
    F: FnOnce() -> Result<i32, Error>,
{
    clear_message();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => fail(&e),
        Err(p) => {
            set_message(&panic_text(&*p));
            -libc::EIO
        }
    }
}

/// Like `guard` for exports that return a value instead of an errno: on
/// error or panic the message is set and `default` returned.
pub(crate) fn guard_value<T, F>(default: T, f: F) -> T
where
    F: FnOnce() -> Result<T, Error>,
{
    clear_message();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            fail(&e);
            default
        }
        Err(p) => {
            set_message(&panic_text(&*p));
            default
        }
    }
}

/// The message of the last failed cowblk call on the calling thread, or ""
/// if the last call succeeded. Every call except this one,
/// `cowblk_version` and `cowblk_abi_version` clears it first.
///
/// The string belongs to the library and lives in thread-local storage: it
/// stays valid until the next cowblk call on the same thread (which may
/// overwrite it) or until the thread exits. Copy it to keep it. Each thread
/// has its own message; this call never fails and never changes it.
#[no_mangle]
pub extern "C" fn cowblk_last_error() -> *const c_char {
    MSG.with(|m| m.as_ptr() as *const c_char)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: the buffer is always NUL-terminated.
        unsafe { CStr::from_ptr(cowblk_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn panic_becomes_eio_with_message() {
        let r = guard(|| -> Result<i32, Error> { panic!("boom") });
        assert_eq!(r, -libc::EIO);
        assert!(last().contains("boom"), "{}", last());
        // The next successful call clears it.
        assert_eq!(guard(|| Ok(3)), 3);
        assert_eq!(last(), "");
    }

    #[test]
    fn error_becomes_negative_errno() {
        let r = guard(|| Err(Error::NotFound("x.img".into())));
        assert_eq!(r, -libc::ENOENT);
        assert_eq!(last(), "no such file: x.img");
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MSG_CAP);
        set_message(&long);
        let m = last();
        assert!(m.len() < MSG_CAP && m.len() >= MSG_CAP - 2);
        assert!(m.chars().all(|c| c == 'é'));
    }

    #[test]
    fn messages_are_per_thread() {
        set_message("main thread");
        std::thread::spawn(|| {
            assert_eq!(last(), "");
            set_message("other thread");
        })
        .join()
        .unwrap();
        assert_eq!(last(), "main thread");
    }
}

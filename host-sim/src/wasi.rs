//! The WASI preview1 subset a wasm32-wasip1 proxy-wasm module imports, driven by
//! the virtual clock and the seeded RNG so runs are reproducible.
//!
//! Like proxy-wasm-cpp-host, stdout becomes an `info` log line and stderr an
//! `error` one; there is no file system (preopens report EBADF so libc stops
//! looking, other file calls report ENOSYS).

use wasmtime::{Caller, Linker};

use crate::abi::LogLevel;
use crate::imports::log_line;
use crate::memory::{read, write, write_u32, write_u64};
use crate::shared::lock;
use crate::vm::VmState;

const M: &str = "wasi_snapshot_preview1";
const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;

type C<'a> = Caller<'a, VmState>;

/// Every WASI function host-sim provides, for the import-coverage check.
pub const WASI_IMPORTS: &[&str] = &[
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "path_open",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "clock_time_get",
    "clock_res_get",
    "random_get",
    "proc_exit",
    "sched_yield",
    "poll_oneoff",
];

/// The error that ends a VM whose guest called `proc_exit`.
#[derive(Debug, thiserror::Error)]
#[error("guest called proc_exit({0})")]
pub struct ProcExit(pub i32);

fn errno(r: Result<(), crate::abi::Status>) -> i32 {
    if r.is_ok() {
        ESUCCESS
    } else {
        EFAULT
    }
}

/// Writes a list of strings the way `args_get`/`environ_get` expect: pointers into
/// one buffer of NUL-terminated strings.
fn write_strings(c: &mut C, list: &[String], ptrs: u32, buf: u32) -> i32 {
    let mut offset = buf;
    for (i, s) in list.iter().enumerate() {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        let slot = ptrs.wrapping_add(4 * i as u32);
        if write_u32(c, slot, offset)
            .and_then(|()| write(c, offset, &bytes))
            .is_err()
        {
            return EFAULT;
        }
        offset = offset.wrapping_add(bytes.len() as u32);
    }
    ESUCCESS
}

fn sizes(c: &mut C, list: &[String], count_ptr: u32, size_ptr: u32) -> i32 {
    let size: usize = list.iter().map(|s| s.len() + 1).sum();
    errno(
        write_u32(c, count_ptr, list.len() as u32)
            .and_then(|()| write_u32(c, size_ptr, size as u32)),
    )
}

fn environ(st: &VmState) -> Vec<String> {
    st.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

pub(crate) fn link(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(
        M,
        "fd_write",
        |mut c: C, fd: i32, iovs: u32, n: u32, ret: u32| {
            if fd != 1 && fd != 2 {
                return EBADF;
            }
            let mut out = Vec::new();
            for i in 0..n {
                let Ok(iov) = read(&c, iovs.wrapping_add(8 * i), 8) else {
                    return EFAULT;
                };
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&c, ptr, len) {
                    Ok(b) => out.extend_from_slice(&b),
                    Err(_) => return EFAULT,
                }
            }
            let level = if fd == 1 {
                LogLevel::Info
            } else {
                LogLevel::Error
            };
            let text = String::from_utf8_lossy(&out);
            let text = text.strip_suffix('\n').unwrap_or(&text).to_string();
            if !text.is_empty() {
                log_line(c.data(), level, text);
            }
            errno(write_u32(&mut c, ret, out.len() as u32))
        },
    )?;
    l.func_wrap(
        M,
        "fd_read",
        |_c: C, _fd: i32, _iovs: u32, _n: u32, _ret: u32| ENOSYS,
    )?;
    l.func_wrap(M, "fd_close", |_c: C, _fd: i32| ENOSYS)?;
    l.func_wrap(
        M,
        "fd_seek",
        |_c: C, _fd: i32, _off: i64, _wh: i32, _ret: u32| ENOSYS,
    )?;
    l.func_wrap(M, "fd_fdstat_get", |mut c: C, fd: i32, ret: u32| {
        if !(0..=2).contains(&fd) {
            return EBADF;
        }
        // filetype CHARACTER_DEVICE (2), no flags, rights for read/write.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        errno(write(&mut c, ret, &stat))
    })?;
    l.func_wrap(M, "fd_prestat_get", |_c: C, _fd: i32, _ret: u32| EBADF)?;
    l.func_wrap(
        M,
        "fd_prestat_dir_name",
        |_c: C, _fd: i32, _p: u32, _l: u32| EBADF,
    )?;
    l.func_wrap(
        M,
        "path_open",
        |_c: C,
         _fd: i32,
         _df: i32,
         _p: u32,
         _l: u32,
         _of: i32,
         _rb: i64,
         _ri: i64,
         _ff: i32,
         _ret: u32| { ENOSYS },
    )?;
    l.func_wrap(M, "environ_sizes_get", |mut c: C, count: u32, size: u32| {
        let list = environ(c.data());
        sizes(&mut c, &list, count, size)
    })?;
    l.func_wrap(M, "environ_get", |mut c: C, ptrs: u32, buf: u32| {
        let list = environ(c.data());
        write_strings(&mut c, &list, ptrs, buf)
    })?;
    l.func_wrap(M, "args_sizes_get", |mut c: C, count: u32, size: u32| {
        let list = c.data().args.clone();
        sizes(&mut c, &list, count, size)
    })?;
    l.func_wrap(M, "args_get", |mut c: C, ptrs: u32, buf: u32| {
        let list = c.data().args.clone();
        write_strings(&mut c, &list, ptrs, buf)
    })?;
    l.func_wrap(
        M,
        "clock_time_get",
        |mut c: C, id: i32, _precision: i64, ret: u32| {
            let sh = lock(&c.data().shared);
            let now = match id {
                0 => sh.realtime_ns(),
                // monotonic, process and thread CPU time all follow the virtual clock.
                1..=3 => sh.now_ns,
                _ => return EINVAL,
            };
            drop(sh);
            errno(write_u64(&mut c, ret, now))
        },
    )?;
    l.func_wrap(M, "clock_res_get", |mut c: C, id: i32, ret: u32| {
        if !(0..=3).contains(&id) {
            return EINVAL;
        }
        errno(write_u64(&mut c, ret, 1))
    })?;
    l.func_wrap(M, "random_get", |mut c: C, ptr: u32, len: u32| {
        let mut bytes = vec![0u8; len as usize];
        lock(&c.data().shared).rng().fill(&mut bytes);
        errno(write(&mut c, ptr, &bytes))
    })?;
    l.func_wrap(
        M,
        "proc_exit",
        |mut c: C, code: i32| -> wasmtime::Result<()> {
            c.data_mut().exit_code = Some(code);
            Err(ProcExit(code).into())
        },
    )?;
    l.func_wrap(M, "sched_yield", |_c: C| ESUCCESS)?;
    l.func_wrap(
        M,
        "poll_oneoff",
        |_c: C, _i: u32, _o: u32, _n: u32, _ret: u32| ENOSYS,
    )?;
    Ok(())
}

//! Reading and writing guest memory for host calls.
//!
//! Out-of-bounds pointers are guest misuse and become `InvalidMemoryAccess`; a
//! failing allocator is reported the same way, as Envoy does.

use wasmtime::Caller;

use crate::abi::Status;
use crate::vm::VmState;

/// A host-call result before it is turned into the raw status for the guest.
pub(crate) type HostResult<T = ()> = Result<T, Status>;

pub(crate) fn read(caller: &Caller<'_, VmState>, ptr: u32, len: u32) -> HostResult<Vec<u8>> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data(caller);
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    data.get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

pub(crate) fn read_string(caller: &Caller<'_, VmState>, ptr: u32, len: u32) -> HostResult<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub(crate) fn write(caller: &mut Caller<'_, VmState>, ptr: u32, bytes: &[u8]) -> HostResult {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data_mut(caller);
    let start = ptr as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    data.get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(caller: &mut Caller<'_, VmState>, ptr: u32, v: u32) -> HostResult {
    write(caller, ptr, &v.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, VmState>, ptr: u32, v: u64) -> HostResult {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocates (`malloc`, else
/// `proxy_on_memory_allocate`) and stores its address and size at the two return
/// pointers, as proxy-wasm-cpp-host's `copyToPointerSize` does. A trap inside the
/// guest's allocator is returned as `Err` and propagates as a trap.
pub(crate) fn write_alloc(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<HostResult> {
    // cpp-host's copyToPointerSize allocates nothing for an empty value and writes a
    // null pointer: conformance case `properties_match_envoy` saw an empty property
    // (`plugin_root_id`) read as no value through the SDK in Envoy.
    if bytes.is_empty() {
        return Ok(write_u32(caller, ret_ptr, 0).and_then(|()| write_u32(caller, ret_len, 0)));
    }
    let Some(alloc) = caller.data().alloc.clone() else {
        return Ok(Err(Status::InvalidMemoryAccess));
    };
    let Ok(len) = u32::try_from(bytes.len()) else {
        return Ok(Err(Status::InvalidMemoryAccess));
    };
    *crate::shared::lock(&caller.data().shared)
        .import_calls
        .entry("malloc")
        .or_default() += 1;
    let addr = alloc.call(&mut *caller, len)?;
    if addr == 0 && len > 0 {
        return Ok(Err(Status::InvalidMemoryAccess));
    }
    Ok(write(caller, addr, bytes)
        .and_then(|()| write_u32(caller, ret_ptr, addr))
        .and_then(|()| write_u32(caller, ret_len, len)))
}

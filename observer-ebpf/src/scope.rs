//! `--unit/--container/--cgroup` in the kernel: cgroups userspace found outside the chosen
//! scope. Programs that run in their subject's own context (its exit, a delivery to it,
//! its accept(), its listener and connect transitions) return at once for tasks in them,
//! before any other read. A cgroup's path never changes under cgroup v2 and its id is
//! never reused, so a cgroup once out of scope stays out; an evicted entry only costs
//! userspace the filtering again.
use aya_ebpf::{helpers::bpf_get_current_cgroup_id, macros::map, maps::LruHashMap};

use crate::globals::{SETTINGS, field};

/// cgroup v2 id (its directory's inode) → 1. Filled by userspace only.
#[map]
static OUT_OF_SCOPE_CGROUPS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16_384, 0);

/// Whether the current task is in a cgroup outside `--unit/--container/--cgroup`.
/// Without those flags the check folds away: `scope_filtered` is a load-time constant.
#[inline(always)]
pub fn current_out_of_scope() -> bool {
    if field!(SETTINGS.scope_filtered) == 0 {
        return false;
    }
    // SAFETY: no arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    OUT_OF_SCOPE_CGROUPS.get_ptr(cgroup_id).is_some()
}

//! Container cgroups through cgroups-rs, on the v1 hierarchies (memory, cpu, cpuacct, pids,
//! devices, freezer) or on the unified v2 hierarchy, whichever the machine runs.
//! (to be written)

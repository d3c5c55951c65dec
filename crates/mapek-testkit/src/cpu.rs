//! CPU time of processes, from `/proc`: what a benchmark reports per event for the servers
//! and stores beside the code it measures.

use std::collections::BTreeMap;

/// CPU time, in seconds, of a process or thread (user and system), from its `stat` file
/// (`/proc/<pid>/stat`, `/proc/self/task/<tid>/stat`); 0 if it is gone.
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 12th and 13th of them, in USER_HZ (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU seconds so far of every process whose command is `comm` (`postgres`: the server and
/// its backends), by pid.
pub fn cpu_of(comm: &str) -> BTreeMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .map(|pid| (pid, cpu_seconds(&format!("/proc/{pid}/stat"))))
        .collect()
}

/// CPU seconds spent since `before` ([`cpu_of`]) by the processes named `comm`: those started
/// since count whole, those gone since are not seen (read it before they end).
pub fn cpu_since(comm: &str, before: &BTreeMap<u32, f64>) -> f64 {
    cpu_of(comm)
        .iter()
        .map(|(pid, now)| now - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

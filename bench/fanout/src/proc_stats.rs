//! What `/proc` says about a process: resident memory, CPU time, open files; and this
//! process's own file-descriptor limit.

use std::{fs, io};

use anyhow::{Context, Result};
use serde::Serialize;

/// Memory figures from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident memory, shared pages (the executable) included.
    pub rss_kib: u64,
    /// `RssAnon`: resident private anonymous memory (heap, stacks, buffers).
    pub rss_anon_kib: u64,
    /// `VmSize`: mapped address space, resident or not.
    pub vm_size_kib: u64,
    /// `Threads`.
    pub threads: u64,
    /// Entries in `/proc/<pid>/fd`.
    pub open_files: usize,
}

/// Reads `pid`'s memory figures.
pub fn memory(pid: u32) -> Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let mut memory = Memory::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = || {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match key {
            "VmRSS" => memory.rss_kib = number(),
            "RssAnon" => memory.rss_anon_kib = number(),
            "VmSize" => memory.vm_size_kib = number(),
            "Threads" => memory.threads = number(),
            _ => {}
        }
    }
    memory.open_files = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0);
    Ok(memory)
}

/// `pid`'s `VmRSS` in KiB, read as cheaply as `/proc` allows (for the peak sampler).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// CPU time `pid` has used so far (user + system), in milliseconds. `pid` 0 means this
/// process.
pub fn cpu_ms(pid: u32) -> Result<f64> {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the stat line (utime, stime) are 11 and 12 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("short stat line")?
        .iter()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(ticks as f64 * 1000.0 / per_second as f64)
}

/// Raises this process's soft limit on open files to its hard limit; returns the new soft
/// limit.
pub fn raise_open_files_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error()).context("getrlimit");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(limit.rlim_cur)
}

/// Busy time of each CPU so far (everything but idle and I/O wait), in milliseconds, from
/// `/proc/stat`: compared with keel's and the client's own CPU time it shows what else ran.
pub fn busy_ms_per_cpu() -> Result<Vec<f64>> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(stat
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(|line| {
            let ticks: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal: all but idle and iowait.
            let busy: u64 = ticks
                .iter()
                .take(8)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .map(|(_, t)| t)
                .sum();
            busy as f64 * 1000.0 / per_second
        })
        .collect())
}

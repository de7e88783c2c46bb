//! What the benchmark binaries share.

/// The user and system CPU time process `pid` has used so far (all its
/// threads), in seconds, from `/proc/PID/stat` (`"self"`: this process).
/// 0 if it cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th
    // (14th and 15th of the line), in clock ticks, which Linux reports at 100 a second.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

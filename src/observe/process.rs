//! The `process_*` series of the relay process, with a CPU counter that moves.
//!
//! The prometheus crate's `ProcessCollector` (0.14) keeps `process_cpu_seconds_total` in an
//! integer counter and divides the kernel's clock ticks by the tick rate in integers, so the
//! counter advances in whole seconds: a relay using 0.3 cores shows a flat line with a step now
//! and then, and `rate()` over a few minutes says 0. [`ProcessMetrics`] keeps the crate's
//! collector for the other six series (open and max fds, virtual and resident memory, start
//! time, threads) and replaces that one family by a float counter read from `/proc/self/stat`
//! (user + system ticks / ticks per second), under the same name and help text, so queries and
//! the dashboard are unchanged.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Opts};

/// The name the crate and the Prometheus client conventions give the CPU counter.
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";

/// The relay process' `process_*` series (Linux `/proc`).
pub struct ProcessMetrics {
    inner: ProcessCollector,
    /// Seconds of CPU, user + system; only ever raised to the kernel's figure.
    cpu: Mutex<Counter>,
}

impl ProcessMetrics {
    pub fn for_self() -> ProcessMetrics {
        let cpu = Counter::with_opts(Opts::new(
            CPU_SECONDS,
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("valid metric");
        ProcessMetrics {
            inner: ProcessCollector::for_self(),
            cpu: Mutex::new(cpu),
        }
    }
}

/// CPU seconds (user + system) this process has used so far, with the kernel's tick resolution
/// (10 ms at the usual 100 Hz).
pub fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second();
    (ticks > 0).then(|| (stat.utime + stat.stime) as f64 / ticks as f64)
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        // The crate's descriptors already name `process_cpu_seconds_total` (same name, help
        // and type), so the registry sees exactly the series that are exported.
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<MetricFamily> = self
            .inner
            .collect()
            .into_iter()
            .filter(|f| f.name() != CPU_SECONDS)
            .collect();
        let cpu = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = cpu_seconds() {
            // A counter never goes back; two scrapes at once are serialised by the lock.
            let delta = now - cpu.get();
            if delta > 0.0 {
                cpu.inc_by(delta);
            }
            families.extend(cpu.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_fractional_and_exported_once() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(ProcessMetrics::for_self()))
            .unwrap();
        // Burn a little CPU so the counter is above zero, then read it back.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(150) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let families = registry.gather();
        let cpu: Vec<_> = families
            .iter()
            .filter(|f| f.name() == CPU_SECONDS)
            .collect();
        assert_eq!(cpu.len(), 1, "one CPU family");
        let value = cpu[0].get_metric()[0].get_counter().get_value();
        assert!(value > 0.0, "{value}");
        let names: Vec<_> = families.iter().map(|f| f.name().to_string()).collect();
        for other in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
        ] {
            assert!(
                names.iter().any(|n| n == other),
                "{other} missing: {names:?}"
            );
        }
        // Text form: a value with a fractional part is printed as such (a whole number of
        // ticks is possible but then the next scrape moves on in hundredths).
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }
}

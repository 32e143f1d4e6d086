//! The service manager's protocol (systemd `Type=notify`): `READY=1` once every stage is up,
//! `WATCHDOG=1` only while the alarm path's end-to-end self-test passes, `STOPPING=1` when
//! the ordered shutdown begins, and a `STATUS=` line for `systemctl status`.
//!
//! systemd sets `NOTIFY_SOCKET` (and, with `WatchdogSec=`, `WATCHDOG_USEC` and
//! `WATCHDOG_PID`); outside systemd none is set and everything here does nothing. The pings
//! come from a task on the gateway's own runtime at half the watchdog interval, and are
//! withheld while the self-test is failing (see [`crate::selftest`]): a gateway whose alarm
//! path is wedged, or whose runtime is stuck, stops pinging, and systemd kills and restarts
//! it (`Restart=always` in the packaged unit). Everything accepted is in the outbox by then
//! (a sensor's PUBACK waits for the commit), so the restart loses no alert. A failing
//! self-test is already a red `gateway_fault` on the console and upstream; the restart is
//! the second line, for faults that a restart can clear.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::shutdown::{Lifecycle, Stage};
use crate::supervise::{Health, HealthSnapshot};

/// Whether the service manager asked for watchdog pings, and how often they are due.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Tells the service manager that start-up is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that the ordered shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Starts the watchdog pings when the service manager asked for them.
pub fn spawn_watchdog(life: &Lifecycle, health: Arc<Health>) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tracing::info!(
        interval_s = interval.as_secs_f64(),
        "systemd watchdog: pinging while the self-test passes"
    );
    life.spawn(Stage::Inputs, move |token| async move {
        let mut tick = tokio::time::interval(interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_failing = false;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let verdict = verdict(&health.snapshot());
            match &verdict {
                Verdict::Passing => send(&[NotifyState::Watchdog, NotifyState::Status(PASSING)]),
                Verdict::Failing(why) => send(&[NotifyState::Status(why)]),
            }
            let failing = matches!(verdict, Verdict::Failing(_));
            if failing && !was_failing {
                tracing::error!("systemd watchdog: pings withheld while the alarm path fails");
            }
            was_failing = failing;
        }
    });
}

const PASSING: &str = "alarm path ok (self-test passing)";

/// Whether a watchdog ping is deserved.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Passing,
    /// The `STATUS=` text saying why not.
    Failing(String),
}

/// The self-test decides: failing since some time means no ping. Before the first round
/// trip it is not failing yet (its timeout has not passed), so start-up gets its pings.
fn verdict(health: &HealthSnapshot) -> Verdict {
    match health.self_test.as_ref().and_then(|s| s.failing_since) {
        None => Verdict::Passing,
        Some(since) => Verdict::Failing(format!(
            "FAULT: alarm path not working since {}; watchdog pings withheld",
            since.format("%Y-%m-%d %H:%M:%S UTC")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::SelfTestSnapshot;

    #[test]
    fn a_failing_self_test_withholds_the_ping_and_a_passing_or_pending_one_does_not() {
        let mut health = HealthSnapshot::default();
        assert_eq!(verdict(&health), Verdict::Passing, "no self-test yet");
        health.self_test = Some(SelfTestSnapshot::default());
        assert_eq!(
            verdict(&health),
            Verdict::Passing,
            "first round trip pending"
        );
        health.self_test = Some(SelfTestSnapshot {
            failing_since: Some(chrono::Utc::now()),
            ..Default::default()
        });
        assert!(matches!(verdict(&health), Verdict::Failing(s) if s.contains("alarm path")));
    }
}

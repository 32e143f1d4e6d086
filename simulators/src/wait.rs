//! Waiting for a condition instead of sleeping: shared by the simulators' own tests and the
//! end-to-end scenarios (`e2e::eventually` is this one).

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it yields a value or `timeout` passes; then panics with
/// `what` and the last thing `check` saw. Waits for a condition instead of sleeping.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A check for [`eventually`]: `value` once it reaches `at_least`, else what it is.
pub fn reached(value: u64, at_least: u64) -> Result<u64, String> {
    if value >= at_least {
        Ok(value)
    } else {
        Err(format!("{value} of {at_least}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value_the_check_yields() {
        let mut calls = 0;
        let got = eventually(Duration::from_secs(5), "the third call", || {
            calls += 1;
            reached(calls, 3)
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not within 100ms; last seen: 0 of 1")]
    async fn eventually_panics_with_what_it_waited_for_and_the_last_thing_seen() {
        eventually(Duration::from_millis(100), "never", || reached(0, 1)).await;
    }
}

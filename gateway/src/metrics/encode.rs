//! Writing scrape-time values as metric families (each with its `# HELP` and `# TYPE`).

use std::fmt::Result;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// One histogram of a family: its labels, its sum, and (upper bound, count) per bucket.
pub(super) type Histogram<S> = (S, f64, Vec<(f64, u64)>);

/// One label: `(name, value)`.
pub(super) type Label<'a> = [(&'static str, &'a str); 1];

/// A collector's output. Counter names are given without `_total`: the text encoder adds it.
pub(super) struct Out<'a>(pub DescriptorEncoder<'a>);

impl Out<'_> {
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> Result {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(m)
    }

    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) -> Result {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(m)
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> Result {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(m)
    }

    /// A gauge of 1 or 0.
    pub fn flag(&mut self, name: &str, help: &str, on: bool) -> Result {
        self.gauge(name, help, if on { 1.0 } else { 0.0 })
    }

    /// A counter family; nothing at all when `series` is empty.
    pub fn counters<S: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: &[(S, u64)],
    ) -> Result {
        if series.is_empty() {
            return Ok(());
        }
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in series {
            ConstCounter::new(*value).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    /// A histogram family: per label set, its sum, and its counts per bucket (not
    /// cumulative) with each bucket's upper bound (the last one `+Inf`); nothing at all when
    /// `series` is empty.
    pub fn histograms<S: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: &[Histogram<S>],
    ) -> Result {
        if series.is_empty() {
            return Ok(());
        }
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, sum, buckets) in series {
            let count = buckets.iter().map(|(_, n)| n).sum();
            m.encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    *sum, count, buckets, None,
                )?;
        }
        Ok(())
    }

    /// A gauge family; nothing at all when `series` is empty.
    pub fn gauges<S: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: &[(S, f64)],
    ) -> Result {
        if series.is_empty() {
            return Ok(());
        }
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in series {
            ConstGauge::new(*value).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

//! The scenario scripts: which devices a scenario uses ([`plan`]) and what they do
//! ([`play`]).

use std::sync::Arc;
use std::time::Duration;

use edge_config::{Config, Device, DeviceKind, PayloadFormat};
use rand::Rng;
use rumqttc::QoS;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::device::{rng_for, SimDevice};
use super::{Fleet, Handle, Mode, Options, Report, Scenario, SensorsError};

/// Why a script ended early.
#[derive(Debug)]
pub(crate) enum Halt {
    /// `stop` was cancelled: not an error.
    Stopped,
    Failed(SensorsError),
}

impl From<SensorsError> for Halt {
    fn from(e: SensorsError) -> Self {
        Halt::Failed(e)
    }
}

/// The devices a scenario acts on (indices into `Config::devices`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub targets: Vec<String>,
    /// The device that floods (gets a larger request queue).
    pub flooder: Option<String>,
    primary: Vec<usize>,
    secondary: Option<usize>,
}

fn index_of(config: &Config, id: &str) -> Result<usize, SensorsError> {
    config
        .devices
        .iter()
        .position(|d| d.id == id)
        .ok_or_else(|| SensorsError::NoSuchDevice(id.to_owned()))
}

/// The `--device` if it has one of `kinds`, else the first device of those kinds.
fn pick(config: &Config, options: &Options, kinds: &[DeviceKind]) -> Result<usize, SensorsError> {
    let wanted = kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(" or ");
    let missing = || SensorsError::MissingDevice {
        scenario: options.scenario,
        kind: leak_str(wanted.clone()),
    };
    if let Some(id) = &options.device {
        let i = index_of(config, id)?;
        return if kinds.contains(&config.devices[i].kind) {
            Ok(i)
        } else {
            Err(missing())
        };
    }
    config
        .devices
        .iter()
        .position(|d| kinds.contains(&d.kind))
        .ok_or_else(missing)
}

/// Error messages want a `&'static str`; the few kind lists are tiny and built once.
fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A device of `kind` near device `of`: same room, else same area or building (and unit),
/// else — if `anywhere` — the first of that kind.
fn near(config: &Config, of: usize, kind: DeviceKind, anywhere: bool) -> Option<usize> {
    let here = &config.devices[of].location;
    let score = |d: &Device| {
        let l = &d.location;
        let same_place = (l.area.is_some() && l.area == here.area)
            || (l.building.is_some() && l.building == here.building && l.unit == here.unit);
        match (same_place, l.room == here.room) {
            (true, true) => 3,
            (true, false) => 2,
            _ if anywhere => 1,
            _ => 0,
        }
    };
    let mut best: Option<(usize, i32)> = None;
    for (i, d) in config.devices.iter().enumerate() {
        if i == of || d.kind != kind {
            continue;
        }
        let s = score(d);
        if s > 0 && best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

const SENSORS: [DeviceKind; 6] = [
    DeviceKind::Smoke,
    DeviceKind::Heat,
    DeviceKind::WaterLeak,
    DeviceKind::Gas,
    DeviceKind::EbikeBattery,
    DeviceKind::Sos,
];

/// Chooses the scenario's devices before anything connects, so a missing one is reported
/// at once.
pub(crate) fn plan(config: &Config, options: &Options) -> Result<Plan, SensorsError> {
    use DeviceKind as K;
    let mut plan = Plan::default();
    match options.scenario {
        Scenario::Normal | Scenario::Soak | Scenario::Demo => {}
        Scenario::KitchenFire => {
            let heat = pick(config, options, &[K::Heat])?;
            plan.primary = vec![heat];
            plan.secondary = near(config, heat, K::Smoke, true);
        }
        Scenario::GasLeak => {
            let gas = pick(config, options, &[K::Gas])?;
            plan.primary = vec![gas];
            plan.secondary = near(config, gas, K::Valve, true);
        }
        Scenario::WaterLeak => plan.primary = vec![pick(config, options, &[K::WaterLeak])?],
        Scenario::EbikeThermalRunaway => {
            let bike = pick(config, options, &[K::EbikeBattery])?;
            plan.primary = vec![bike];
            plan.secondary = near(config, bike, K::Smoke, false);
        }
        Scenario::BatteryTheft => plan.primary = vec![pick(config, options, &[K::EbikeBattery])?],
        Scenario::CoLeak => plan.primary = vec![pick(config, options, &[K::CarbonMonoxide])?],
        Scenario::ChargerOverheat => {
            let plug = pick(config, options, &[K::SmartPlug])?;
            plan.primary = vec![plug];
            plan.secondary = near(config, plug, K::Smoke, false);
        }
        Scenario::Sos => plan.primary = vec![pick(config, options, &[K::Sos])?],
        Scenario::DeviceOffline => plan.primary = vec![pick(config, options, &DeviceKind::ALL)?],
        Scenario::Malformed => {
            if options.device.is_some() {
                plan.primary = vec![pick(config, options, &DeviceKind::ALL)?];
            } else {
                for format in [PayloadFormat::Native, PayloadFormat::Zigbee2mqtt] {
                    let first = config
                        .devices
                        .iter()
                        .position(|d| d.format == format && d.kind.is_sensor());
                    plan.primary.extend(first);
                }
                if plan.primary.is_empty() {
                    plan.primary = vec![pick(config, options, &DeviceKind::ALL)?];
                }
            }
        }
        Scenario::Flood => {
            // A chatty sensor floods; a smoke detector elsewhere must still be heard.
            let flooder = match &options.device {
                Some(_) => pick(config, options, &DeviceKind::ALL)?,
                None => config
                    .devices
                    .iter()
                    .position(|d| d.kind.is_sensor() && d.kind != K::Smoke)
                    .map_or_else(|| pick(config, options, &SENSORS), Ok)?,
            };
            plan.primary = vec![flooder];
            plan.secondary = config
                .devices
                .iter()
                .enumerate()
                .position(|(i, d)| i != flooder && d.kind == K::Smoke);
            plan.flooder = Some(config.devices[flooder].id.clone());
        }
    }
    plan.targets = plan
        .primary
        .iter()
        .chain(plan.secondary.iter())
        .map(|&i| config.devices[i].id.clone())
        .collect();
    Ok(plan)
}

/// Scenario time: nominal seconds are divided by `speed`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    speed: f64,
}

impl Pace {
    /// How often a device in a hazard reports: every 2 s at speed 1, down to 5 per second.
    fn sample(self) -> Duration {
        Duration::from_secs_f64((2.0 / self.speed).clamp(0.2, 2.0))
    }

    fn real(self, nominal_s: f64) -> Duration {
        Duration::from_secs_f64(nominal_s / self.speed)
    }
}

async fn pause(stop: &CancellationToken, d: Duration) -> Result<(), Halt> {
    tokio::select! {
        _ = stop.cancelled() => Err(Halt::Stopped),
        _ = tokio::time::sleep(d) => Ok(()),
    }
}

/// Publishes `h`'s state every `sample` (real) for `total` units of scenario time, where a
/// real second is `scale` units; `step(device, dt, elapsed)` (in units) evolves the state
/// before each publication and returns false to end early.
async fn animate(
    h: &Handle,
    stop: &CancellationToken,
    sample: Duration,
    scale: f64,
    total: f64,
    mut step: impl FnMut(&mut SimDevice, f64, f64) -> bool,
) -> Result<(), Halt> {
    let mut elapsed = 0.0;
    let mut last = Instant::now();
    while elapsed < total {
        pause(stop, sample).await?;
        let now = Instant::now();
        let dt = (now - last).as_secs_f64() * scale;
        last = now;
        elapsed += dt;
        let mut go_on = true;
        h.update(|d| go_on = step(d, dt, elapsed)).await?;
        if !go_on {
            break;
        }
    }
    Ok(())
}

/// `demo`: after every `options.every`, the next hazard of [`Scenario::DEMO_CYCLE`] on
/// the first suitable devices (a hazard whose devices the configuration lacks is skipped);
/// 5 s after its script ended its devices start afresh in normal behaviour, so the gateway
/// sees them recover and the next round can raise them again.
pub(crate) async fn demo(
    fleet: Arc<Fleet>,
    options: Options,
    stop: CancellationToken,
    report: &mut Report,
) -> Result<(), Halt> {
    let mut skipped = 0;
    for round in 0_u64.. {
        let scenario = Scenario::DEMO_CYCLE[(round % Scenario::DEMO_CYCLE.len() as u64) as usize];
        let mut o = options.clone();
        o.scenario = scenario;
        o.device = None;
        o.seed = options.seed.wrapping_add(round);
        let plan = match plan(&fleet.config, &o) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::warn!(%scenario, error = %e, "demo: hazard skipped");
                skipped += 1;
                if skipped >= Scenario::DEMO_CYCLE.len() {
                    // Nothing to play: behave like `normal`.
                    stop.cancelled().await;
                    return Err(Halt::Stopped);
                }
                continue;
            }
        };
        skipped = 0;
        pause(&stop, options.every).await?;
        let targets: Vec<usize> = plan
            .primary
            .iter()
            .chain(plan.secondary.iter())
            .copied()
            .collect();
        tracing::info!(%scenario, devices = %plan.targets.join(", "), "demo: hazard starts");
        report
            .notes
            .push(format!("demo: {scenario} on {}", plan.targets.join(", ")));
        play(fleet.clone(), o.clone(), plan, stop.clone(), report).await?;
        pause(&stop, Duration::from_secs(5)).await?;
        for &i in &targets {
            let h = &fleet.handles[i];
            let fresh = SimDevice::new(&fleet.config, &fleet.config.devices[i], o.seed);
            *h.lock() = fresh;
            h.set_mode(Mode::Normal);
            h.update(|_| {}).await?;
        }
        tracing::info!(%scenario, "demo: hazard over, its devices are back to normal");
    }
    Ok(())
}

/// Plays the scenario: one [`Script`] method per scenario.
pub(crate) async fn play(
    fleet: Arc<Fleet>,
    options: Options,
    plan: Plan,
    stop: CancellationToken,
    report: &mut Report,
) -> Result<(), Halt> {
    let h = |i: usize| fleet.handles[i].clone();
    let primary: Vec<Arc<Handle>> = plan.primary.iter().map(|&i| h(i)).collect();
    let secondary = plan.secondary.map(h);
    for d in primary.iter().chain(secondary.iter()) {
        if options.scenario != Scenario::DeviceOffline && options.scenario != Scenario::Malformed {
            d.set_mode(Mode::Scripted);
        }
    }
    let mut script = Script {
        pace: Pace {
            speed: options.speed,
        },
        rng: rng_for(options.seed, options.scenario.as_str()),
        fleet: &fleet,
        options: &options,
        primary,
        secondary,
        stop: &stop,
        report,
    };
    match options.scenario {
        Scenario::Normal | Scenario::Soak | Scenario::Demo => Ok(()),
        Scenario::KitchenFire => script.kitchen_fire().await,
        Scenario::GasLeak => script.gas_leak().await,
        Scenario::WaterLeak => script.water_leak().await,
        Scenario::EbikeThermalRunaway => script.ebike_thermal_runaway().await,
        Scenario::BatteryTheft => script.battery_theft().await,
        Scenario::CoLeak => script.co_leak().await,
        Scenario::ChargerOverheat => script.charger_overheat().await,
        Scenario::Sos => script.sos().await,
        Scenario::DeviceOffline => script.device_offline().await,
        Scenario::Malformed => script.malformed().await,
        Scenario::Flood => script.flood().await,
    }
}

/// What a scenario script plays with: its devices (from the [`Plan`]), its pace and random
/// numbers, and the report it writes notes into.
struct Script<'a> {
    pace: Pace,
    rng: rand_chacha::ChaCha8Rng,
    fleet: &'a Fleet,
    options: &'a Options,
    primary: Vec<Arc<Handle>>,
    secondary: Option<Arc<Handle>>,
    stop: &'a CancellationToken,
    report: &'a mut Report,
}

impl Script<'_> {
    /// [`animate`] at the scenario's pace.
    async fn animate(
        &self,
        h: &Handle,
        total: f64,
        step: impl FnMut(&mut SimDevice, f64, f64) -> bool,
    ) -> Result<(), Halt> {
        animate(
            h,
            self.stop,
            self.pace.sample(),
            self.pace.speed,
            total,
            step,
        )
        .await
    }

    fn note(&mut self, note: String) {
        self.report.notes.push(note);
    }

    /// A heat detector warms at 10–14 °C/min; the smoke detector near it alarms on the way.
    async fn kitchen_fire(&mut self) -> Result<(), Halt> {
        let heat = self.primary[0].clone();
        let rate = self.rng.gen_range(10.0..14.0); // °C per minute
        let heats = |d: &mut SimDevice, dt: f64, _: f64| {
            d.temperature_c += rate / 60.0 * dt + d.jitter(0.05);
            true
        };
        self.animate(&heat, 30.0, |d, _, _| {
            d.temperature_c += (d.ambient_c - d.temperature_c) * 0.2 + d.jitter(0.03);
            true
        })
        .await?;
        self.note(format!("{}: fire starts, {rate:.1} °C/min", heat.id()));
        self.animate(&heat, 60.0, heats).await?;
        if let Some(smoke) = self.secondary.clone() {
            smoke.update(|d| d.smoke = true).await?;
            self.note(format!("{}: smoke", smoke.id()));
        }
        self.animate(&heat, 120.0, heats).await?;
        self.animate(&heat, 20.0, |d, _, _| {
            d.temperature_c += d.jitter(0.1);
            true
        })
        .await
    }

    /// Gas rises 12–18 %LEL/min to ~32 %, holds until the valve closes, then disperses.
    async fn gas_leak(&mut self) -> Result<(), Halt> {
        let gas = self.primary[0].clone();
        let rate = self.rng.gen_range(12.0..18.0); // %LEL per minute
        let background = |d: &mut SimDevice, _: f64, _: f64| {
            d.gas_lel_pct = (0.5 + d.jitter(0.3)).max(0.0);
            true
        };
        self.animate(&gas, 30.0, background).await?;
        self.note(format!("{}: leak starts, {rate:.1} %LEL/min", gas.id()));
        self.animate(&gas, 300.0, |d, dt, _| {
            d.gas_lel_pct += rate / 60.0 * dt;
            d.gas_lel_pct < 32.0
        })
        .await?;
        let valve = self.secondary.clone();
        let closed = move || {
            valve
                .as_ref()
                .is_some_and(|v| v.lock().actuator == "closed")
        };
        self.animate(&gas, 300.0, |d, _, _| {
            d.gas_lel_pct = (d.gas_lel_pct + d.jitter(0.4)).clamp(30.0, 36.0);
            !closed()
        })
        .await?;
        if !closed() {
            self.note("the valve was not closed: the leak goes on".to_owned());
            return Ok(());
        }
        if let Some(v) = self.secondary.clone() {
            self.note(format!("{}: closed on command; the gas disperses", v.id()));
        }
        self.animate(&gas, 300.0, |d, dt, _| {
            d.gas_lel_pct = (d.gas_lel_pct - 20.0 / 60.0 * dt).max(0.5);
            d.gas_lel_pct > 0.5
        })
        .await?;
        self.animate(&gas, 30.0, background).await
    }

    /// Dry, wet, dry, wet, dry.
    async fn water_leak(&mut self) -> Result<(), Halt> {
        let w = self.primary[0].clone();
        for (leak, nominal_s) in [
            (false, 10.0),
            (true, 60.0),
            (false, 60.0),
            (true, 60.0),
            (false, 60.0),
        ] {
            self.note(format!("{}: water_leak={leak}", w.id()));
            self.animate(&w, nominal_s, |d, _, _| {
                d.water_leak = leak;
                true
            })
            .await?;
        }
        Ok(())
    }

    /// A charging battery warms 1–3 °C/min, smokes, then runs away at 1.5–2.5 °C/s.
    async fn ebike_thermal_runaway(&mut self) -> Result<(), Halt> {
        let b = self.primary[0].clone();
        let rise = self.rng.gen_range(1.0..3.0); // °C per minute, while charging
        let runaway = self.rng.gen_range(1.5..2.5); // °C per second
        {
            let mut d = b.lock();
            d.start_charging();
            d.battery_temp_c = d.ambient_c + 3.0;
            d.voltage_v = 50.0;
        }
        self.animate(&b, 30.0, |d, dt, _| {
            d.voltage_v += 0.005 * dt;
            d.battery_temp_c += d.jitter(0.02);
            true
        })
        .await?;
        self.note(format!(
            "{}: temperature rising {rise:.1} °C/min while charging",
            b.id()
        ));
        self.animate(&b, 240.0, |d, dt, _| {
            d.voltage_v += 0.005 * dt;
            d.battery_temp_c += rise / 60.0 * dt;
            true
        })
        .await?;
        if let Some(smoke) = self.secondary.clone() {
            smoke.update(|d| d.smoke = true).await?;
            self.note(format!("{}: smoke (off-gassing)", smoke.id()));
        }
        // Thermal runaway is seconds-scale in reality: never compressed.
        self.note(format!("{}: thermal runaway, {runaway:.1} °C/s", b.id()));
        let v0 = b.lock().voltage_v;
        animate(
            &b,
            self.stop,
            Duration::from_millis(500),
            1.0,
            8.0,
            |d, dt, t| {
                d.battery_temp_c += runaway * dt;
                d.voltage_v = v0 * (1.0 - 0.3 * (t / 5.0).min(1.0));
                true
            },
        )
        .await
    }

    /// A gas water heater's flue is blocked: CO in the bathroom climbs 60–90 ppm/min past
    /// the warning and the alarm points to ~350 ppm, where the alarm's own flag trips too;
    /// then the window is opened and it clears.
    async fn co_leak(&mut self) -> Result<(), Halt> {
        let co = self.primary[0].clone();
        let rate = self.rng.gen_range(60.0..90.0); // ppm per minute
        let clean = |d: &mut SimDevice, _: f64, _: f64| {
            d.co_ppm = (1.0 + d.jitter(1.0)).max(0.0);
            true
        };
        self.animate(&co, 20.0, clean).await?;
        self.note(format!("{}: CO rising {rate:.0} ppm/min", co.id()));
        self.animate(&co, 600.0, |d, dt, _| {
            d.co_ppm += rate / 60.0 * dt;
            d.co_ppm < 350.0
        })
        .await?;
        self.animate(&co, 60.0, |d, _, _| {
            d.co_ppm = (350.0 + d.jitter(10.0)).max(300.0);
            true
        })
        .await?;
        self.note(format!("{}: window opened, CO disperses", co.id()));
        self.animate(&co, 600.0, |d, dt, _| {
            d.co_ppm = (d.co_ppm - 120.0 / 60.0 * dt).max(1.0);
            d.co_ppm > 1.0
        })
        .await?;
        self.animate(&co, 30.0, clean).await
    }

    /// A charger fails while charging: the plug warms 8–12 °C/min past 70 °C. If linkage
    /// switches the plug off, the load drops to 0 and it cools; if not, it goes on heating
    /// and the smoke detector nearby (if any) alarms.
    async fn charger_overheat(&mut self) -> Result<(), Halt> {
        let plug = self.primary[0].clone();
        let rate = self.rng.gen_range(8.0..12.0); // °C per minute
        {
            let mut d = plug.lock();
            d.actuator = "on".to_owned();
            d.charging = true;
            d.power_w = 180.0;
            d.plug_temp_c = d.ambient_c + 6.0;
        }
        let off = |d: &SimDevice| d.actuator == "off";
        self.animate(&plug, 20.0, |d, _, _| {
            d.power_w = 180.0 + d.jitter(3.0);
            true
        })
        .await?;
        self.note(format!(
            "{}: charger failing, plug heating {rate:.1} °C/min",
            plug.id()
        ));
        self.animate(&plug, 600.0, |d, dt, _| {
            if !off(d) {
                d.power_w = 190.0 + d.jitter(5.0);
                d.plug_temp_c += rate / 60.0 * dt;
            }
            !off(d) && d.plug_temp_c < 85.0
        })
        .await?;
        if !off(&plug.lock()) {
            if let Some(smoke) = self.secondary.clone() {
                smoke.update(|d| d.smoke = true).await?;
                self.note(format!(
                    "{}: smoke: the plug was not switched off",
                    smoke.id()
                ));
            }
            self.animate(&plug, 60.0, |d, _, _| !off(d)).await?;
        }
        if off(&plug.lock()) {
            self.note(format!("{}: switched off on command; cooling", plug.id()));
        }
        self.animate(&plug, 600.0, |d, dt, _| {
            d.power_w = if off(d) { 0.0 } else { d.power_w };
            d.plug_temp_c = (d.plug_temp_c - 6.0 / 60.0 * dt).max(d.ambient_c + 1.0);
            d.plug_temp_c > d.ambient_c + 1.0
        })
        .await
    }

    /// The battery is taken out of its e-bike.
    async fn battery_theft(&mut self) -> Result<(), Halt> {
        let b = self.primary[0].clone();
        b.lock().stop_charging();
        self.animate(&b, 20.0, |d, _, _| {
            d.present = true;
            true
        })
        .await?;
        self.note(format!("{}: battery removed", b.id()));
        self.animate(&b, 30.0, |d, _, _| {
            d.present = false;
            true
        })
        .await
    }

    /// The button is pressed once, for 0.8 s.
    async fn sos(&mut self) -> Result<(), Halt> {
        let p = self.primary[0].clone();
        pause(self.stop, self.pace.real(5.0)).await?;
        p.update(|d| d.pressed = true).await?;
        self.note(format!("{}: pressed", p.id()));
        pause(self.stop, Duration::from_millis(800)).await?;
        p.update(|d| d.pressed = false).await?;
        pause(self.stop, self.pace.real(10.0)).await
    }

    /// The device goes silent long enough to be noticed (by its heartbeats if native), then
    /// comes back.
    async fn device_offline(&mut self) -> Result<(), Halt> {
        let d = self.primary[0].clone();
        pause(self.stop, self.pace.real(10.0)).await?;
        let (native, heartbeat) = {
            let dev = d.lock();
            (dev.format == PayloadFormat::Native, dev.heartbeat)
        };
        d.availability(false).await?;
        d.set_mode(Mode::Muted);
        // A native device is noticed only by its missing heartbeats.
        let missed = self.fleet.config.rules.device.offline_after_heartbeats;
        let by_heartbeat = if native {
            heartbeat * missed + Duration::from_secs(3)
        } else {
            Duration::from_secs(2)
        };
        let silence = self.pace.real(120.0).max(by_heartbeat);
        self.note(format!(
            "{}: offline for {:.0} s",
            d.id(),
            silence.as_secs_f64()
        ));
        pause(self.stop, silence).await?;
        d.set_mode(Mode::Normal);
        d.availability(true).await?;
        d.heartbeat().await?;
        d.update(|_| {}).await?;
        self.note(format!("{}: back online", d.id()));
        pause(self.stop, self.pace.real(10.0)).await
    }

    /// Three rounds of bad messages from each device and alarms on foreign topics, each
    /// counted by the reason the gateway must reject it for.
    async fn malformed(&mut self) -> Result<(), Halt> {
        for round in 0..3 {
            for d in &self.primary {
                let messages = malformed(&d.lock());
                for (topic, payload, reason) in messages {
                    d.publish(topic, QoS::AtLeastOnce, false, payload).await?;
                    *self
                        .report
                        .malformed
                        .entry((d.id(), reason.to_owned()))
                        .or_default() += 1;
                }
            }
            for (topic, payload) in foreign() {
                self.primary[0]
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await?;
                *self
                    .report
                    .malformed
                    .entry(("-".to_owned(), "foreign_topic".to_owned()))
                    .or_default() += 1;
            }
            if round < 2 {
                let gap = self.pace.real(5.0).max(Duration::from_millis(200));
                pause(self.stop, gap).await?;
            }
        }
        pause(self.stop, Duration::from_millis(500)).await
    }

    /// One device floods at `--rate` for `--duration`; halfway through, a smoke detector
    /// elsewhere alarms and must still be heard.
    async fn flood(&mut self) -> Result<(), Halt> {
        let f = self.primary[0].clone();
        let rate = self.options.rate.unwrap_or(10_000.0);
        let length = self.options.duration.unwrap_or(Duration::from_secs(10));
        let start = Instant::now();
        let mut alarm_sent = self.secondary.is_none();
        let mut sent: u64 = 0;
        let tick = Duration::from_millis(10);
        self.note(format!(
            "{}: flooding at {rate:.0} msg/s for {:.0} s",
            f.id(),
            length.as_secs_f64()
        ));
        while start.elapsed() < length {
            pause(self.stop, tick).await?;
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                let (topic, payload) = {
                    let mut d = f.lock();
                    d.step_normal(Duration::from_secs_f64(1.0 / rate));
                    (d.state_topic.clone(), d.payload())
                };
                f.publish(topic, QoS::AtMostOnce, false, payload).await?;
                sent += 1;
            }
            if !alarm_sent && start.elapsed() >= length / 2 {
                if let Some(smoke) = self.secondary.clone() {
                    smoke.update(|d| d.smoke = true).await?;
                    self.note(format!("{}: smoke during the flood", smoke.id()));
                }
                alarm_sent = true;
            }
        }
        self.note(format!("{}: {sent} flood messages sent", f.id()));
        Ok(())
    }
}

/// `{"smoke": tru`: JSON cut short (the brace escaped, so that no tool counting braces
/// mistakes it for the start of a block).
const TRUNCATED_JSON: &[u8] = b"\x7b\"smoke\": tru";

/// Bad messages from one device, each with the reason the gateway must reject it for.
fn malformed(d: &SimDevice) -> Vec<(String, Vec<u8>, &'static str)> {
    let topic = d.state_topic.clone();
    let field = value_field(d.format, d.kind);
    let wrong = if field == "state" {
        format!(r#"{{"{field}":42}}"#)
    } else {
        format!(r#"{{"{field}":"yes"}}"#)
    };
    let mut out = vec![
        (topic.clone(), TRUNCATED_JSON.to_vec(), "invalid_json"),
        (topic.clone(), vec![0xff, 0xfe, 0x00, 0x01], "invalid_json"),
        (topic.clone(), b"[1,2,3]".to_vec(), "not_an_object"),
        (topic.clone(), b"\"smoke\"".to_vec(), "not_an_object"),
        (topic.clone(), wrong.into_bytes(), "wrong_type"),
        (
            topic.clone(),
            format!(r#"{{"pad":"{}"}}"#, "x".repeat(20 * 1024)).into_bytes(),
            "oversized",
        ),
    ];
    match d.format {
        PayloadFormat::Native => out.push((topic, br#"{"ts":"yesterday"}"#.to_vec(), "wrong_type")),
        PayloadFormat::Zigbee2mqtt => {
            out.push((topic, br#"{"battery":"full"}"#.to_vec(), "wrong_type"));
            if let Some(avail) = &d.availability_topic {
                out.push((avail.clone(), b"maybe".to_vec(), "wrong_type"));
            }
        }
    }
    out
}

/// The payload field that carries a device's main value (given a wrong type by `malformed`).
fn value_field(format: PayloadFormat, kind: DeviceKind) -> &'static str {
    match (format, kind) {
        (_, DeviceKind::Smoke) => "smoke",
        (PayloadFormat::Native, DeviceKind::Heat) => "temperature_c",
        (PayloadFormat::Zigbee2mqtt, DeviceKind::Heat | DeviceKind::EbikeBattery) => "temperature",
        (PayloadFormat::Native, DeviceKind::Gas) => "gas_lel_pct",
        (PayloadFormat::Zigbee2mqtt, DeviceKind::Gas) => "gas_density",
        (_, DeviceKind::WaterLeak) => "water_leak",
        (PayloadFormat::Native, DeviceKind::EbikeBattery) => "battery_temp_c",
        (PayloadFormat::Native, DeviceKind::Sos) => "pressed",
        (PayloadFormat::Zigbee2mqtt, DeviceKind::Sos) => "battery",
        (PayloadFormat::Native, DeviceKind::CarbonMonoxide) => "co_ppm",
        (PayloadFormat::Zigbee2mqtt, DeviceKind::CarbonMonoxide) => "co",
        (PayloadFormat::Native, DeviceKind::SmartPlug) => "power_w",
        (PayloadFormat::Zigbee2mqtt, DeviceKind::SmartPlug) => "power",
        (_, DeviceKind::Siren | DeviceKind::Valve | DeviceKind::PaSpeaker) => "state",
    }
}

/// Valid-looking alarms on topics no configured device owns: the gateway never subscribes
/// to them.
fn foreign() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "sensors/ghost-9999/state".to_owned(),
            br#"{"smoke":true}"#.to_vec(),
        ),
        (
            "zigbee2mqtt/ghost_9999".to_owned(),
            br#"{"smoke":true,"battery":90}"#.to_vec(),
        ),
        (
            "zigbee2mqtt/bridge/state".to_owned(),
            br#"{"state":"online"}"#.to_vec(),
        ),
        ("sensors/ghost-9999/heartbeat".to_owned(), b"{}".to_vec()),
    ]
}

/// `n` normal messages (topic, payload) of one device, as the `flood` scenario sends them:
/// for benchmarks that feed the gateway's ingest directly.
pub fn flood_messages(
    config: &Config,
    device_id: &str,
    seed: u64,
    n: usize,
) -> Option<Vec<(String, Vec<u8>)>> {
    let device = config.device(device_id)?;
    let mut d = SimDevice::new(config, device, seed);
    let dt = Duration::from_micros(100);
    Some(
        (0..n)
            .map(|_| {
                d.step_normal(dt);
                (d.state_topic.clone(), d.payload())
            })
            .collect(),
    )
}

// Generates tests/fixtures/zigbee2mqtt/corpus.json: what Zigbee2MQTT publishes for popular
// hazard devices, produced by each device definition's own `fromZigbee` converters from
// zigbee-herdsman-converters (pinned in package-lock.json). See README.md.
//
//   cd simulators/z2m-corpus && npm ci --ignore-scripts && node generate.mjs
//
// Nothing here names a payload key by hand: the scenario says which *exposed property*
// should take which value (e.g. the device's `smoke` binary at its `value_on`); the generator
// then searches the Zigbee messages the device's converters understand (IAS zone status
// changes, Tuya datapoints, attribute reports) for one whose conversion yields that value,
// and publishes what the converters produced, merged into the cached state as Zigbee2MQTT
// does. Only when no converter can be driven is a property filled from its `exposes`, and
// the message says so (`source: "exposes"`, `exposes_filled`).

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const zhc = require("zigbee-herdsman-converters");
const zhcPkg = require("zigbee-herdsman-converters/package.json");
const here = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(here, "../../tests/fixtures/zigbee2mqtt/corpus.json");

// Converters log through zhc's logger; keep the generator's output clean.
zhc.setLogger({ debug() {}, info() {}, warning() {}, error() {} });

/** The selection: [model, shouwang kind, why]. Models are Zigbee2MQTT's `model` names. */
const SELECTION = [
  // Smoke
  ["JTYJ-GD-01LM/BW", "smoke", "Xiaomi/Honeywell smoke detector, IAS zone plus smoke_density"],
  ["JY-GZ-01AQ", "smoke", "Aqara smart smoke detector, Lumi-specific attributes"],
  ["HS1SA-E", "smoke", "Heiman smoke sensor, IAS zone"],
  ["HS3SA/HS1SA", "smoke", "Heiman smoke detector, widely sold in China"],
  ["SMSZB-120", "smoke", "Frient (Develco) smoke alarm with temperature on an endpoint"],
  ["TS0205", "smoke", "Tuya IAS smoke sensor (many white labels)"],
  ["TS0601_smoke_1", "smoke", "Tuya TS0601 smoke sensor, datapoints (_TZE200_*)"],
  ["PA-44Z", "smoke", "Tuya TS0601 smoke sensor with smoke_concentration"],
  ["ZSS-HM-SSD01", "smoke", "Moes smoke detector"],
  ["BSD-2", "smoke", "Bosch smoke alarm II"],
  // Heat (fire detectors that report a temperature or a heat/alarm flag)
  ["HESZB-120", "heat", "Frient (Develco) fire detector: smoke flag and temperature_38 (endpoint-suffixed)"],
  ["HM-5HA-E", "heat", "Heiman heat alarm: `alarm` flag plus temperature"],
  ["W599001", "heat", "Schneider Electric smoke/heat alarm: `heat` flag"],
  // Gas
  ["JTQJ-BF-01LM/BW", "gas", "Xiaomi/Honeywell natural gas detector, gas flag plus gas_density"],
  ["JT-BZ-01AQ/A", "gas", "Aqara smart natural gas detector, gas flag plus gas_density"],
  ["HS1CG", "gas", "Heiman combustible gas sensor, IAS zone"],
  ["HS3CG", "gas", "Heiman combustible gas sensor, IAS zone"],
  ["TS0601_gas_sensor_1", "gas", "Tuya TS0601 gas sensor, datapoints"],
  ["TS0601_gas_sensor_2", "gas", "Tuya TS0601 gas sensor with gas_value (_TZE204_*)"],
  ["ZG-225Z", "gas", "Tuya gas sensor with gas_value"],
  ["E04CF-Z10T", "gas", "Lincukoo gas/CO: gas as a %LEL number, alarm in gas_sensor_state"],
  ["TS0204", "gas", "Tuya IAS gas sensor"],
  ["E9", "gas", "Nous gas detector"],
  // Carbon monoxide
  ["HS1CA-E", "carbon_monoxide", "Heiman CO detector, IAS zone"],
  ["ZC-HM", "carbon_monoxide", "Moes CO detector, datapoints"],
  ["ZBCO-AE-10X-EUR", "carbon_monoxide", "FireAngel CO alarm"],
  ["E12", "carbon_monoxide", "Nous CO detector with carbon_monoxide_value"],
  // Water leak
  ["SJCGQ11LM", "water_leak", "Aqara water leak sensor, IAS zone"],
  ["SJCGQ12LM", "water_leak", "Aqara water leak sensor T1"],
  ["HS1WL/HS3WL", "water_leak", "Heiman water leakage sensor"],
  ["SNZB-05P", "water_leak", "SONOFF water leak sensor"],
  ["E2202", "water_leak", "IKEA BADRING water leakage sensor"],
  ["TS0207_water_leak_detector", "water_leak", "Tuya IAS water leak sensor"],
  ["TS0601_water_sensor", "water_leak", "Tuya TS0601 water leak sensor, datapoints"],
  ["FLSZB-110", "water_leak", "Frient (Develco) water leak detector"],
  // SOS / panic / emergency buttons
  ["HS1EB/HS1EB-E", "sos", "Heiman emergency button: action off/single/double/hold"],
  ["TS0215A_sos", "sos", "Tuya SOS button: action emergency"],
  ["TS0601_sos", "sos", "Tuya TS0601 SOS button"],
  ["ZG-101Z", "sos", "Loginovo SOS button: action sos/emergency"],
  ["SEB01ZB", "sos", "Feibit SOS button: boolean sos (IAS)"],
  ["PB206", "sos", "OWON panic button: boolean sos (IAS)"],
  ["SE21", "sos", "ORVIBO emergency button"],
  // Smart plugs in the charging shed
  ["SP-EUC01", "smart_plug", "Aqara smart plug EU: power, current, voltage, energy, device_temperature"],
  ["ZNCZ02LM", "smart_plug", "Xiaomi Mi smart plug (CN): power, energy, device_temperature"],
  ["TS011F_plug_1", "smart_plug", "Tuya smart plug with power monitoring (the common charger plug)"],
  ["E22xx", "smart_plug", "IKEA INSPELNING smart plug"],
  ["S60ZBTPF", "smart_plug", "SONOFF smart plug with power monitoring"],
  ["SPLZB-131", "smart_plug", "Frient (Develco) power plug with device_temperature"],
  ["HS2SK", "smart_plug", "Heiman smart metering plug"],
];

/** Devices also published in Zigbee2MQTT's `output: attribute` mode (one topic per property). */
const ATTRIBUTE_MODE = ["SJCGQ11LM", "HS1SA-E", "TS0601_gas_sensor_2", "TS0215A_sos"];

/** Fixed clock and link quality: the corpus is deterministic. */
const T0 = Date.parse("2026-11-29T08:00:00.000Z");
const LINKQUALITY = [72, 80, 65, 91, 58];

// ---------------------------------------------------------------- definitions

async function loadDefinitions() {
  const dir = path.join(path.dirname(require.resolve("zigbee-herdsman-converters")), "devices");
  const byModel = new Map();
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".js")).sort()) {
    const mod = require(path.join(dir, file));
    for (const d of mod.definitions ?? []) {
      if (!byModel.has(d.model)) byModel.set(d.model, d);
    }
  }
  return byModel;
}

function exposesOf(def, device) {
  const ex = typeof def.exposes === "function" ? def.exposes(device, {}) : def.exposes;
  const flat = [];
  const walk = (e) => {
    if (e.features && e.type !== "composite" && e.type !== "list") e.features.forEach(walk);
    else if (e.property) flat.push(e);
  };
  ex.forEach(walk);
  return flat;
}

const STATE_ACCESS = 1; // exposes access bit: published in the state

// ---------------------------------------------------------------- a fake Zigbee device

// Named like zigbee-herdsman's classes: the converters' global store keys entities by
// `constructor.name`.
class Device {}
class Endpoint {}

function fakeDevice(def) {
  const fp = (def.fingerprint ?? [])[0] ?? {};
  const endpoints = new Map();
  const device = Object.create(Device.prototype);
  Object.defineProperties(device, Object.getOwnPropertyDescriptors({
    ieeeAddr: "0x00124b0012345678",
    networkAddress: 0x1a2b,
    modelID: (def.zigbeeModel ?? [])[0] ?? fp.modelID ?? def.model,
    manufacturerName: fp.manufacturerName ?? def.vendor,
    type: "EndDevice",
    powerSource: "Battery",
    softwareBuildID: "1.0.0",
    dateCode: "20240101",
    meta: {},
    customClusters: {},
    interviewCompleted: true,
    get endpoints() {
      return [...endpoints.values()];
    },
    getEndpoint(id) {
      if (!endpoints.has(id)) endpoints.set(id, fakeEndpoint(id, device));
      return endpoints.get(id);
    },
    save() {},
    addCustomCluster() {},
  }));
  device.getEndpoint(1);
  return device;
}

function fakeEndpoint(id, device) {
  const noop = async () => ({});
  return Object.assign(new Endpoint(), {
    ID: id,
    deviceIeeeAddress: device.ieeeAddr,
    clusters: {},
    configuredReportings: [],
    binds: [],
    inputClusters: [],
    outputClusters: [],
    getDevice: () => device,
    read: noop,
    write: noop,
    bind: noop,
    command: noop,
    commandResponse: noop,
    readResponse: noop,
    configureReporting: noop,
    defaultResponse: noop,
    save() {},
    saveClusterAttributeKeyValue() {},
    // Divisors and multipliers of electrical/metering clusters: 1, so values pass unscaled.
    getClusterAttributeValue: (_cluster, attr) => (/multiplier|divisor/i.test(attr) ? 1 : undefined),
    supportsInputCluster: () => true,
    supportsOutputCluster: () => true,
  });
}

// ---------------------------------------------------------------- driving converters

let seq = 1;

/** Runs every fromZigbee converter of the definition that accepts (cluster, type). */
async function convert(def, device, cache, cluster, type, data, endpointId = 1) {
  const out = {};
  const endpoint = device.getEndpoint(endpointId);
  const msg = {
    type,
    cluster,
    data,
    endpoint,
    device,
    linkquality: 80,
    groupID: 0,
    meta: { zclTransactionSequenceNumber: seq++ % 256, manufacturerCode: null, frameControl: {} },
  };
  const meta = { device, state: { ...cache }, logger: console, mapped: def, deviceExposesChanged() {} };
  for (const c of def.fromZigbee) {
    const types = Array.isArray(c.type) ? c.type : [c.type];
    if (c.cluster !== cluster || !types.includes(type)) continue;
    try {
      const r = await c.convert(def, msg, () => {}, {}, meta);
      if (r && typeof r === "object") Object.assign(out, r);
    } catch {
      // A converter that needs more of a real device: another candidate may still work.
    }
  }
  return out;
}

function tuyaDp(dp, raw) {
  if (typeof raw === "boolean") return { dp, datatype: 1, data: Buffer.from([raw ? 1 : 0]) };
  const b = Buffer.alloc(4);
  b.writeInt32BE(Math.round(raw));
  return { dp, datatype: 2, data: b };
}

function numericCandidates(v) {
  if (typeof v !== "number") return [];
  return [...new Set([1, 2, 10, 100, 1000].map((k) => Math.round(v * k)).concat([v]))];
}

/** Candidate Zigbee messages that could make a converter emit `prop = value`. */
function* candidates(def, prop, value) {
  const clusters = new Set(def.fromZigbee.map((c) => c.cluster));
  const rawBools = [true, false];
  const rawNums = [0, 1, 2, 3, 4, 5, ...numericCandidates(value)];
  if (clusters.has("manuSpecificTuya")) {
    // The definition's datapoint map names the dp of a property; legacy converters and
    // `dpAction` extends keep theirs in code, so every dp number is tried for those.
    const mapped = (def.meta?.tuyaDatapoints ?? []).filter((entry) => entry[1] === prop || entry[1] === undefined);
    const dps = mapped.length ? mapped.map((entry) => entry[0]) : Array.from({ length: 128 }, (_, i) => i + 1);
    for (const dp of dps) {
      for (const raw of [...rawBools, ...rawNums]) {
        yield ["manuSpecificTuya", "commandDataReport", { seq: seq++, dpValues: [tuyaDp(dp, raw)] }, 1];
      }
    }
  }
  if (prop === "action") {
    // Button commands (IAS ACE emergency, on/off, scenes…) carry their meaning in the command.
    for (const c of def.fromZigbee) {
      for (const type of Array.isArray(c.type) ? c.type : [c.type]) {
        if (/^command/.test(type)) yield [c.cluster, type, {}, 1];
      }
    }
  }
  if (clusters.has("ssIasZone")) {
    for (const z of [1, 0, 2, 3]) {
      yield ["ssIasZone", "commandStatusChangeNotification", { zonestatus: z, extendedstatus: 0, zoneID: 1, delay: 0 }, 1];
      yield ["ssIasZone", "attributeReport", { zoneStatus: z }, 1];
    }
  }
  const numeric = typeof value === "number";
  const eps = endpointsFor(prop);
  const attr = (cluster, key, raws) => {
    const list = [];
    for (const ep of eps) for (const raw of raws) list.push([cluster, "attributeReport", { [key]: raw }, ep]);
    return list;
  };
  if (numeric && /temperature/.test(prop)) {
    yield* attr("msTemperatureMeasurement", "measuredValue", [Math.round(value * 100)]);
    yield* attr("genDeviceTempCfg", "currentTemperature", [value]);
  }
  if (numeric && prop === "battery") yield* attr("genPowerCfg", "batteryPercentageRemaining", [value * 2]);
  if (numeric && prop === "voltage") {
    yield* attr("genPowerCfg", "batteryVoltage", [Math.round(value / 100)]);
    yield* attr("haElectricalMeasurement", "rmsVoltage", numericCandidates(value));
  }
  if (numeric && prop === "power") {
    yield* attr("haElectricalMeasurement", "activePower", numericCandidates(value));
    yield* attr("genAnalogInput", "presentValue", [value]);
    yield* attr("seMetering", "instantaneousDemand", numericCandidates(value));
  }
  if (numeric && prop === "current") yield* attr("haElectricalMeasurement", "rmsCurrent", numericCandidates(value));
  if (numeric && prop === "energy") yield* attr("seMetering", "currentSummDelivered", numericCandidates(value));
  if (prop === "state") yield* attr("genOnOff", "onOff", [value === "ON" ? 1 : 0]);
  for (const cluster of ["manuSpecificLumi", "genBasic"]) {
    if (!clusters.has(cluster) || !/^lumi|xiaomi|aqara/i.test(def.vendor)) continue;
    const raws = typeof value === "boolean" ? [1, 0] : numericCandidates(value);
    for (let id = 0; id < 0x300; id++) {
      for (const raw of raws) yield [cluster, "attributeReport", { [id]: raw }, 1];
    }
  }
}

/** Endpoints to try for a property: `temperature_38` lives on endpoint 38. */
function endpointsFor(prop) {
  const m = /_(\d+)$/.exec(prop);
  return m ? [Number(m[1])] : [1];
}

function same(a, b) {
  if (typeof a === "number" && typeof b === "number") return Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b));
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The converters' output for one Zigbee message that yields `prop = value`, or undefined.
 * Among matching messages the one with the fewest side keys wins (the plainest report).
 */
async function drive(def, device, cache, prop, value, targets = {}) {
  let best;
  const score = (out) => {
    // Keys that contradict another property's value in this state weigh most.
    const conflicts = Object.entries(out).filter(([k, v]) => k in targets && !same(v, targets[k])).length;
    return conflicts * 1000 + Object.keys(out).length;
  };
  for (const [cluster, type, data, ep] of candidates(def, prop, value)) {
    const out = await convert(def, device, cache, cluster, type, data, ep);
    if (prop in out && same(out[prop], value)) {
      if (!best || score(out) < score(best.out)) best = { out, cluster, type };
      if (Object.keys(out).length === 1) break;
    }
  }
  return best;
}

// ---------------------------------------------------------------- scenarios

/** Properties that carry the hazard, per kind (matched against the definition's exposes). */
const HAZARD = {
  smoke: /^(smoke|smoke_state|smoke_alarm_1)$/,
  heat: /^(heat|alarm|smoke|temperature(_\d+)?)$/,
  gas: /^(gas|gas_value|gas_density|gas_sensor_state|gas_alarm_1)$/,
  carbon_monoxide: /^(carbon_monoxide|co|carbon_monoxide_value|co_state)$/,
  water_leak: /^(water_leak|water_leak_alarm_1)$/,
  sos: /^(sos|sos_alarm|emergency)$/,
  smart_plug: /^(state|power|current|voltage|energy|device_temperature|temperature)$/,
};

/** The value an exposed property takes in a scenario step (a plug's steps are its loads). */
function valueFor(kind, e, state) {
  const alarm = state === "alarm";
  if (e.type === "binary") {
    if (kind === "smart_plug") return e.value_on;
    return alarm ? e.value_on : e.value_off;
  }
  if (e.type === "enum") {
    const vs = e.values ?? [];
    if (alarm) return vs.find((v) => /alarm|detected|smoke|on$/i.test(String(v))) ?? vs[1] ?? vs[0];
    return vs.find((v) => /^(normal|idle|no_alarm|clear|none|off)$/i.test(String(v))) ?? vs[0];
  }
  if (e.type === "numeric") return numericFor(kind, e, state);
  return undefined;
}

/** Scenario values: normal readings, a hazard (over the standard alarm points), plug loads. */
function numericFor(kind, e, state) {
  const p = e.property;
  const max = e.value_max;
  const clamp = (v) => (typeof max === "number" ? Math.min(v, max) : v);
  if (/temperature/.test(p)) {
    if (kind === "smart_plug") return { hot: 82, clear: 31 }[state] ?? 33;
    return state === "alarm" ? 68 : state === "clear" ? 25 : 24;
  }
  if (kind === "smart_plug") {
    const load = {
      normal: { power: 1.2, current: 0.01, voltage: 230, energy: 12.5 },
      charging: { power: 180, current: 0.82, voltage: 229, energy: 12.7 },
      over_current: { power: 2900, current: 12.6, voltage: 226, energy: 12.9 },
      hot: { power: 185, current: 0.84, voltage: 229, energy: 13.1 },
      clear: { power: 0, current: 0, voltage: 231, energy: 13.2 },
    }[state];
    return load?.[p];
  }
  // A concentration: 0 in the clean air, the scale's top (at most 50) in an alarm.
  return state === "alarm" ? clamp(50) : 0;
}

/** Ordinary values of the other state properties (battery, voltage, …), by their exposes. */
function fillValue(e) {
  if (e.type === "binary") return e.value_off;
  if (e.type === "enum") {
    // The ordinary value where the list has one (a full battery, no fault), else the first.
    const vs = e.values ?? [];
    return vs.find((v) => /^(normal|high|idle|off|none|ok|no_fault_detected)$/i.test(String(v))) ?? vs[0];
  }
  if (e.type === "text") return "";
  if (e.type !== "numeric") return undefined;
  const typical = { battery: 87, voltage: e.unit === "mV" ? 3000 : 230, humidity: 45, temperature: 24, device_temperature: 30 };
  if (e.property in typical) return typical[e.property];
  if (typeof e.value_min === "number") return e.value_min;
  return 0;
}

/**
 * The scenario as [phase, step] pairs: the phase (normal, alarm, clear) is what the test
 * expects of the gateway, the step what the device does. A plug idles then charges (normal),
 * draws an over-current and, if it measures its temperature, overheats while charging
 * (alarm), then is unloaded (clear).
 */
function stepsFor(kind, hazard) {
  if (kind !== "smart_plug") return [["normal", "normal"], ["alarm", "alarm"], ["clear", "clear"]];
  const hot = hazard.some((e) => /temperature/.test(e.property));
  return [
    ["normal", "normal"],
    ["normal", "charging"],
    ["alarm", "over_current"],
    ...(hot ? [["alarm", "hot"]] : []),
    ["clear", "clear"],
  ];
}

function expectFor(kind, phase) {
  if (phase === "normal") return "none";
  if (kind === "sos") return phase === "alarm" ? "raise" : "none";
  if (phase === "clear") return "resolve";
  return "raise";
}

// ---------------------------------------------------------------- one device

async function deviceEntry(def0, kind, why, output) {
  const def = zhc.prepareDefinition(def0);
  const device = fakeDevice(def);
  const exposes = exposesOf(def, device);
  const stateExposes = exposes.filter((e) => e.access & STATE_ACCESS);
  const hazard = stateExposes.filter((e) => HAZARD[kind].test(e.property));
  const action = exposes.find((e) => e.property === "action");
  const ota = Boolean(def.ota);

  let cache = {};
  let filled = new Set();
  // The first publish carries everything the device has reported since pairing: each state
  // property driven through the converters at an ordinary value, the rest from exposes.
  for (const e of stateExposes) {
    if (e.property === "action" || e.property === "linkquality") continue;
    const v = hazard.includes(e) ? valueFor(kind, e, "normal") : fillValue(e);
    if (v === undefined) continue;
    const got = await drive(def, device, cache, e.property, v);
    if (got) Object.assign(cache, pickStateKeys(got.out, stateExposes));
    else {
      cache[e.property] = v;
      filled.add(e.property);
    }
  }

  const messages = [];
  for (const [i, [phase, state]] of stepsFor(kind, hazard).entries()) {
    const produced = {};
    const stateFilled = [];
    const clusters = new Set();
    const targets = Object.fromEntries(hazard.map((e) => [e.property, valueFor(kind, e, state)]));
    for (const e of hazard) {
      const v = targets[e.property];
      if (v === undefined) continue;
      const got = await drive(def, device, { ...cache, ...produced }, e.property, v, targets);
      if (got) {
        Object.assign(produced, got.out);
        clusters.add(`${got.cluster}:${got.type}`);
      } else {
        produced[e.property] = v;
        stateFilled.push(e.property);
      }
    }
    let actionValue;
    if (kind === "sos" && action) {
      const before = clusters.size;
      actionValue = await sosAction(def, device, cache, action, state, clusters);
      if (actionValue !== undefined && clusters.size === before) stateFilled.push("action");
    }
    const stateKeys = pickStateKeys(produced, stateExposes);
    cache = { ...cache, ...stateKeys };
    const payload = publishable(cache, i, ota, actionValue);
    const base = {
      state: phase,
      ...(phase !== state ? { step: state } : {}),
      source: stateFilled.length || (kind !== "sos" && clusters.size === 0) ? "exposes" : "fromZigbee",
      zigbee: [...clusters].sort(),
      exposes_filled: [...new Set([...filled, ...stateFilled])].sort(),
      expect: expectFor(kind, phase),
    };
    if (output === "attribute") {
      for (const [k, v] of Object.entries(payload)) {
        messages.push({ ...base, topic_suffix: `/${k}`, payload: v });
      }
    } else {
      messages.push({ ...base, topic_suffix: "", payload });
      if (actionValue !== undefined) {
        // Home Assistant integration: the bare action string on `{name}/action`.
        messages.push({ ...base, topic_suffix: "/action", payload: actionValue });
      }
    }
  }

  return {
    id: slug(def.model) + (output === "attribute" ? "-attr" : ""),
    vendor: def.vendor,
    model: def.model,
    description: def.description,
    why,
    kind,
    output: output ?? "json",
    exposes: exposes.map((e) => summary(e)),
    messages,
  };
}

/** An SOS button's `action` in a scenario state, through its converters when possible. */
async function sosAction(def, device, cache, action, state, clusters) {
  const values = action.values ?? [];
  const press = values.find((v) => /^(sos|emergency|panic)$/.test(v)) ?? values.find((v) => v === "single") ?? values[0];
  const idle = values.find((v) => v === "off");
  const want = state === "alarm" ? press : state === "clear" ? idle : undefined;
  if (want === undefined) return undefined;
  const got = await drive(def, device, cache, "action", want);
  if (got) clusters.add(`${got.cluster}:${got.type}`);
  if (got) return want;
  for (const cluster of ["ssIasZone", "genOnOff"]) {
    if (got) break;
    for (const [c, type, data] of actionCandidates(cluster)) {
      const out = await convert(def, device, cache, c, type, data);
      if (out.action === want) {
        clusters.add(`${c}:${type}`);
        return want;
      }
    }
  }
  // Not driven: the action still comes from the exposes' value list (the caller marks it).
  return want;
}

function* actionCandidates(cluster) {
  if (cluster === "ssIasZone") {
    for (const z of [1, 0, 2, 3]) yield ["ssIasZone", "commandStatusChangeNotification", { zonestatus: z, extendedstatus: 0 }];
  } else {
    for (const cmd of ["commandOn", "commandOff", "commandToggle", "commandTuyaAction"]) {
      yield ["genOnOff", cmd, { value: 0, data: [0] }];
    }
  }
}

/** Keys Zigbee2MQTT caches: everything but `action` (never cached). */
function pickStateKeys(out, _stateExposes) {
  const o = { ...out };
  delete o.action;
  return o;
}

/** The published object: cached state (+ action), `update`, `last_seen`, `linkquality`; keys sorted. */
function publishable(cache, i, ota, action) {
  const p = { ...cache };
  if (action !== undefined) p.action = action;
  if (ota) p.update = { installed_version: 16909577, latest_version: 16909577, state: "idle" };
  const sorted = Object.fromEntries(Object.keys(p).sort().map((k) => [k, p[k]]));
  sorted.last_seen = new Date(T0 + i * 60_000).toISOString();
  sorted.linkquality = LINKQUALITY[i % LINKQUALITY.length];
  return sorted;
}

function summary(e) {
  const s = { property: e.property, type: e.type };
  if (e.unit) s.unit = e.unit;
  if (e.type === "binary") Object.assign(s, { value_on: e.value_on, value_off: e.value_off });
  if (e.type === "enum") s.values = e.values;
  if (typeof e.value_min === "number") s.value_min = e.value_min;
  if (typeof e.value_max === "number") s.value_max = e.value_max;
  return s;
}

function slug(model) {
  return model.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

// ---------------------------------------------------------------- units

/** Numeric properties whose unit differs by model: the gateway's device profiles map them. */
const AMBIGUOUS = ["gas_value", "gas", "gas_density", "co", "carbon_monoxide_value", "smoke_concentration"];

/** For every definition in the package, the unit each ambiguous numeric property has. */
function unitsOfAmbiguous(defs) {
  const out = [];
  for (const [model, def0] of [...defs.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    let exposes;
    try {
      const def = zhc.prepareDefinition(def0);
      exposes = exposesOf(def, fakeDevice(def));
    } catch {
      continue; // exposes that need a real device's configuration: not these sensors
    }
    for (const e of exposes) {
      if (e.type === "numeric" && AMBIGUOUS.includes(e.property) && e.access & STATE_ACCESS) {
        out.push({ model, property: e.property, unit: e.unit ?? "" });
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- main

const defs = await loadDefinitions();
const devices = [];
for (const [model, kind, why] of SELECTION) {
  const def = defs.get(model);
  if (!def) throw new Error(`no definition for model ${model} in zigbee-herdsman-converters ${zhcPkg.version}`);
  devices.push(await deviceEntry(def, kind, why));
  if (ATTRIBUTE_MODE.includes(model)) devices.push(await deviceEntry(def, kind, why, "attribute"));
}
const corpus = {
  generator: "simulators/z2m-corpus/generate.mjs",
  source: `zigbee-herdsman-converters ${zhcPkg.version}`,
  note: "Generated; do not edit. Regenerate: cd simulators/z2m-corpus && npm ci --ignore-scripts && node generate.mjs",
  devices,
  units: unitsOfAmbiguous(defs),
};
fs.mkdirSync(path.dirname(OUT), { recursive: true });
fs.writeFileSync(OUT, `${JSON.stringify(corpus, null, 2)}\n`);
const byKind = {};
for (const d of devices) byKind[d.kind] = (byKind[d.kind] ?? 0) + 1;
console.log(`wrote ${path.relative(process.cwd(), OUT)}: ${devices.length} devices`, byKind);
process.exit(0);

//! Who may connect to the embedded broker, and what each client may publish and read.
//!
//! rumqttd 0.20 has no authorisation hook: its routers deliver any publish to any
//! subscriber. The broker's [front](super::front) therefore decides every CONNECT, PUBLISH,
//! SUBSCRIBE and every delivery with these rules before rumqttd sees (or after it sends)
//! the packet.
//!
//! # Principals
//!
//! A connection is one [`Principal`], fixed by its CONNECT:
//!
//! - [`Principal::Gateway`]: the gateway's own clients (publisher, actuators, residents,
//!   self-test probe), logged in with the internal credentials generated at each start.
//!   They may do anything.
//! - [`Principal::User`]: a configured login. From the configuration ([`AccessRules::from_config`]):
//!   a **device** login may publish only its devices' own topics (state, heartbeat or
//!   zigbee2mqtt availability; a zigbee2mqtt bridge login also `zigbee2mqtt/bridge/#`) and
//!   read only its devices' command topics; a **reader** login (`[[broker.readers]]`) may
//!   read only the filters it lists and publish nothing.
//! - [`Principal::Anonymous`]: a client without a login, where those are accepted. It may
//!   publish anywhere except on the gateway's topics and read anything except resident
//!   notices.
//!
//! # The gateway's topics
//!
//! Only the gateway publishes on `shouwang/…` (alerts, self-test, Home Assistant states),
//! `residents/…` (resident notices and all-clears), every device's command topic and, with
//! `[homeassistant]` enabled, its discovery configs `{prefix}/+/shouwang_{site}/#`: those are denied to every
//! other principal whatever else it is allowed. `residents/…` is readable only by logins
//! whose grants name it.
//!
//! # Rules
//!
//! [`Grants`] are MQTT topic filters: a topic is allowed when an allow filter matches it and
//! no deny filter does. A SUBSCRIBE filter is granted when it can match at least one
//! readable topic and is not wholly inside a denied filter; what it then delivers is still
//! checked topic by topic, so a wildcard subscription never leaks an unreadable topic.

use std::collections::HashMap;

use edge_config::{Config, PayloadFormat};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Topics only the gateway publishes on (besides every device's command topic).
pub const GATEWAY_TOPICS: [&str; 2] = ["shouwang/#", "residents/#"];
/// Topics readable only by logins that are granted them explicitly.
pub const RESIDENT_TOPICS: &str = "residents/#";
/// Extra connections a device login may hold beyond one per device (a reconnect overlapping
/// its half-open predecessor).
pub const LOGIN_CONNECTION_HEADROOM: usize = 2;
/// Connections one reader login may hold.
pub const READER_CONNECTIONS: usize = 4;

/// Who a connection is, decided once from its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The gateway's own clients (internal credentials).
    Gateway,
    /// A configured login.
    User(String),
    /// A client without a login.
    Anonymous,
}

impl Principal {
    /// For logs: `gateway`, the login, or `anonymous`.
    pub fn label(&self) -> &str {
        match self {
            Principal::Gateway => "gateway",
            Principal::User(u) => u,
            Principal::Anonymous => "anonymous",
        }
    }
}

/// What one principal may do. Filters are MQTT topic filters; deny wins over allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Topics it may publish on.
    pub publish: Vec<String>,
    /// Topics it may publish on in no case.
    pub deny_publish: Vec<String>,
    /// Topics it may receive.
    pub read: Vec<String>,
    /// Topics it may receive in no case.
    pub deny_read: Vec<String>,
    /// Connections it may hold at once (per login; anonymous clients share one count).
    pub max_connections: usize,
}

impl Grants {
    /// Publish and read anything, any number of connections.
    pub fn everything() -> Grants {
        Grants {
            publish: vec!["#".to_owned()],
            read: vec!["#".to_owned()],
            max_connections: usize::MAX,
            ..Grants::default()
        }
    }

    /// Whether a PUBLISH on `topic` is allowed.
    pub fn may_publish(&self, topic: &str) -> bool {
        valid_topic(topic) && allowed(topic, &self.publish, &self.deny_publish)
    }

    /// Whether a message on `topic` may be delivered.
    pub fn may_read(&self, topic: &str) -> bool {
        valid_topic(topic) && allowed(topic, &self.read, &self.deny_read)
    }

    /// Whether a SUBSCRIBE of `filter` is granted (deliveries are still checked one by one).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let filter = unshared(filter);
        valid_filter(filter)
            && self.read.iter().any(|a| overlap(a, filter))
            && !self.deny_read.iter().any(|d| covers(d, filter))
    }
}

fn allowed(topic: &str, allow: &[String], deny: &[String]) -> bool {
    allow.iter().any(|f| matches(topic, f)) && !deny.iter().any(|f| matches(topic, f))
}

/// The access rules of one broker: per login, for other logins and for anonymous clients.
#[derive(Debug, Clone)]
pub struct AccessRules {
    /// Grants per configured login.
    pub users: HashMap<String, Grants>,
    /// Logins without an entry in `users`.
    pub other_users: Grants,
    /// Clients without a login (when those are accepted at all).
    pub anonymous: Grants,
}

impl Default for AccessRules {
    /// Everyone may do everything: the broker as a plain MQTT broker (library use, tests).
    /// The gateway builds its rules with [`AccessRules::from_config`].
    fn default() -> Self {
        AccessRules {
            users: HashMap::new(),
            other_users: Grants::everything(),
            anonymous: Grants::everything(),
        }
    }
}

impl AccessRules {
    /// The rules the [module docs](self) describe, for the devices and readers of `config`.
    pub fn from_config(config: &Config) -> AccessRules {
        let mut gateway_only: Vec<String> = GATEWAY_TOPICS.iter().map(|t| t.to_string()).collect();
        gateway_only.extend(config.devices.iter().map(|d| d.command_topic()));
        // Home Assistant discovery: this gateway's configs are its own; readers may send
        // Home Assistant's birth message, which makes the gateway announce again.
        let ha = &config.homeassistant;
        let ha_birth: Vec<String> = ha
            .enabled
            .then(|| format!("{}/status", ha.prefix))
            .into_iter()
            .collect();
        if ha.enabled {
            gateway_only.push(format!("{}/+/shouwang_{}/#", ha.prefix, config.site.id));
        }
        let mut users: HashMap<String, Grants> = HashMap::new();
        for d in &config.devices {
            let Some(user) = d.username.clone() else {
                continue;
            };
            let g = users.entry(user).or_insert_with(|| Grants {
                deny_publish: gateway_only.clone(),
                deny_read: vec![RESIDENT_TOPICS.to_owned()],
                max_connections: LOGIN_CONNECTION_HEADROOM,
                ..Grants::default()
            });
            g.publish.push(d.state_topic());
            g.publish.push(match d.format {
                PayloadFormat::Native => format!("sensors/{}/heartbeat", d.id),
                PayloadFormat::Zigbee2mqtt => {
                    format!("zigbee2mqtt/{}/availability", d.friendly_name())
                }
            });
            if d.format == PayloadFormat::Zigbee2mqtt && d.state_topic().starts_with("zigbee2mqtt/")
            {
                g.publish.push("zigbee2mqtt/bridge/#".to_owned());
            }
            g.read.push(d.command_topic());
            g.max_connections += 1;
        }
        for r in &config.broker.readers {
            users.insert(
                r.username.clone(),
                Grants {
                    read: r.topics.clone(),
                    publish: ha_birth.clone(),
                    max_connections: READER_CONNECTIONS,
                    ..Grants::default()
                },
            );
        }
        // A compound gateway (street station): its own alerts and heartbeat in, its own
        // commands (staff acknowledgements) out; nothing of any other site's.
        for c in &config.compounds {
            users.insert(
                c.username.clone(),
                Grants {
                    publish: vec![
                        format!("shouwang/{}/alerts", c.id),
                        format!("shouwang/{}/heartbeat", c.id),
                    ],
                    read: vec![format!("shouwang/{}/commands/#", c.id)],
                    deny_read: vec![RESIDENT_TOPICS.to_owned()],
                    max_connections: LOGIN_CONNECTION_HEADROOM,
                    ..Grants::default()
                },
            );
        }
        for g in users.values_mut() {
            g.publish.sort();
            g.publish.dedup();
        }
        AccessRules {
            users,
            other_users: Grants::default(),
            anonymous: Grants {
                publish: vec!["#".to_owned()],
                deny_publish: gateway_only,
                read: vec!["#".to_owned()],
                deny_read: vec![RESIDENT_TOPICS.to_owned()],
                max_connections: usize::MAX,
            },
        }
    }

    /// The grants of `principal`; `None` for the gateway (no restriction at all).
    pub fn grants(&self, principal: &Principal) -> Option<&Grants> {
        match principal {
            Principal::Gateway => None,
            Principal::User(u) => Some(self.users.get(u).unwrap_or(&self.other_users)),
            Principal::Anonymous => Some(&self.anonymous),
        }
    }
}

/// The logins and rules in force together: a reload replaces both at once.
pub struct Access {
    pub logins: Logins,
    pub rules: AccessRules,
}

/// The access in force, replaced whole by a config reload. A connection takes its principal
/// and grants once, at CONNECT: a reload changes what new connections may do, and leaves
/// connections of unchanged devices as they are.
pub struct AccessSwitch(std::sync::RwLock<std::sync::Arc<Access>>);

impl AccessSwitch {
    pub fn new(access: Access) -> Self {
        AccessSwitch(std::sync::RwLock::new(std::sync::Arc::new(access)))
    }

    /// The access in force now.
    pub fn current(&self) -> std::sync::Arc<Access> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `access` in force for every CONNECT from now on.
    pub fn replace(&self, access: Access) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(access);
    }
}

impl std::fmt::Debug for AccessSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessSwitch")
    }
}

/// Why a CONNECT's login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    /// No login, and anonymous clients are not accepted.
    Missing,
    /// Unknown user or wrong password.
    Wrong,
}

/// The logins the front accepts: the gateway's internal one, the configured ones, and
/// (optionally) none at all.
pub struct Logins {
    internal_user: String,
    internal_password: [u8; 32],
    users: HashMap<String, [u8; 32]>,
    anonymous: bool,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins")
            .field("users", &self.users.len())
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl Logins {
    /// `internal`: the gateway's own login; `users`: login → password; `anonymous`: whether
    /// clients without a login are accepted.
    pub fn new(internal: (&str, &str), users: &HashMap<String, String>, anonymous: bool) -> Logins {
        Logins {
            internal_user: internal.0.to_owned(),
            internal_password: digest(internal.1),
            users: users.iter().map(|(u, p)| (u.clone(), digest(p))).collect(),
            anonymous,
        }
    }

    /// Who presents `login` (`None`: no login). Passwords are compared as SHA-256 digests
    /// in constant time, so neither their content nor their length leaks through timing.
    pub fn authenticate(&self, login: Option<(&str, &str)>) -> Result<Principal, LoginRefusal> {
        let Some((user, password)) = login else {
            return if self.anonymous {
                Ok(Principal::Anonymous)
            } else {
                Err(LoginRefusal::Missing)
            };
        };
        let given = digest(password);
        if user == self.internal_user && bool::from(given.ct_eq(&self.internal_password)) {
            return Ok(Principal::Gateway);
        }
        match self.users.get(user) {
            Some(expected) if bool::from(given.ct_eq(expected)) => {
                Ok(Principal::User(user.to_owned()))
            }
            _ => Err(LoginRefusal::Wrong),
        }
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// `$share/{group}/{filter}` → `{filter}` (the part that selects topics).
pub fn unshared(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    }
}

/// A topic to publish on: non-empty, no wildcard, no NUL.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A topic filter: `+` a whole level, `#` the whole last level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, l)| {
        (!l.contains('#') || (*l == "#" && i == last)) && (!l.contains('+') || *l == "+")
    })
}

/// Whether `topic` matches `filter` (MQTT 3.1.1 §4.7: `a/#` matches `a`; topics starting
/// with `$` are not matched by a filter starting with a wildcard).
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Whether some topic matches both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let (mut la, mut lb) = (a.split('/'), b.split('/'));
    loop {
        match (la.next(), lb.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            (Some(_), Some(_)) => return false,
            (None, None) => return true,
            // One ran out: only a trailing `#` (which also matches its parent) still overlaps.
            (None, Some(rest)) => return rest == "#" && lb.next().is_none(),
            (Some(rest), None) => return rest == "#" && la.next().is_none(),
        }
    }
}

/// Whether every topic matching `inner` also matches `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    if outer.starts_with(['+', '#']) && inner.starts_with('$') {
        return false;
    }
    let (mut lo, mut li) = (outer.split('/'), inner.split('/'));
    loop {
        match (lo.next(), li.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(o), Some(i)) if o == i && i != "+" => {}
            (Some(_), Some(_)) => return false,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[site]
id = "s"
name = "S"
kind = "compound"
[broker]
require_auth = true
[[broker.readers]]
username = "b1-display"
password = "pw"
topics = ["residents/b1/#"]
[[locations.buildings]]
id = "b1"
name = "1"
floors = 6
[[devices]]
id = "smoke-1"
kind = "smoke"
location = {{ building = "b1", floor = 3 }}
username = "smoke-1"
password = "pw1"
[[devices]]
id = "valve-1"
kind = "valve"
location = {{ building = "b1", floor = 3 }}
username = "valve-1"
password = "pw2"
[[devices]]
id = "leak-1"
kind = "water_leak"
format = "zigbee2mqtt"
friendly_name = "kitchen leak"
location = {{ building = "b1", floor = 3 }}
username = "bridge"
password = "pw3"
{extra}
"#
        );
        edge_config::parse(&text, "t.toml", std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn a_device_publishes_only_its_own_topics() {
        let rules = AccessRules::from_config(&config(""));
        let smoke = rules.grants(&Principal::User("smoke-1".into())).unwrap();
        assert!(smoke.may_publish("sensors/smoke-1/state"));
        assert!(smoke.may_publish("sensors/smoke-1/heartbeat"));
        assert!(
            !smoke.may_publish("sensors/valve-1/state"),
            "another device's"
        );
        assert!(!smoke.may_publish("sensors/smoke-1/set"), "a command topic");
        assert!(!smoke.may_publish("shouwang/s/alerts/x"));
        assert!(!smoke.may_publish("residents/b1/all"));
        assert!(!smoke.may_publish("sensors/+/state"), "not a topic");
        let bridge = rules.grants(&Principal::User("bridge".into())).unwrap();
        assert!(bridge.may_publish("zigbee2mqtt/kitchen leak"));
        assert!(bridge.may_publish("zigbee2mqtt/kitchen leak/availability"));
        assert!(bridge.may_publish("zigbee2mqtt/bridge/state"));
        assert!(!bridge.may_publish("zigbee2mqtt/kitchen leak/set"));
        assert!(!bridge.may_publish("zigbee2mqtt/other"));
    }

    #[test]
    fn a_device_reads_only_its_own_command_topic_even_through_a_wildcard() {
        let rules = AccessRules::from_config(&config(""));
        let valve = rules.grants(&Principal::User("valve-1".into())).unwrap();
        assert!(valve.may_subscribe("sensors/valve-1/set"));
        assert!(valve.may_read("sensors/valve-1/set"));
        assert!(!valve.may_subscribe("sensors/smoke-1/set"));
        assert!(!valve.may_subscribe("residents/#"));
        assert!(
            valve.may_subscribe("sensors/#"),
            "overlaps its own command topic"
        );
        assert!(
            !valve.may_read("sensors/smoke-1/state"),
            "…but delivers only that"
        );
        assert!(!valve.may_read("residents/b1/all"));
    }

    #[test]
    fn resident_notices_are_read_only_by_logins_granted_them() {
        let rules = AccessRules::from_config(&config(""));
        let display = rules.grants(&Principal::User("b1-display".into())).unwrap();
        assert!(display.may_read("residents/b1/u1/alerts"));
        assert!(!display.may_read("residents/b2/all"));
        assert!(!display.may_publish("residents/b1/all"));
        assert!(!display.may_publish("sensors/smoke-1/state"));
        let anonymous = &rules.anonymous;
        assert!(!anonymous.may_subscribe("residents/#"));
        assert!(!anonymous.may_subscribe("residents/b1/u1/alerts"));
        assert!(anonymous.may_subscribe("#"), "granted, but…");
        assert!(
            !anonymous.may_read("residents/b1/all"),
            "…residents filtered out"
        );
        assert!(anonymous.may_read("shouwang/s/alerts/1"));
        assert!(anonymous.may_publish("sensors/anything/state"));
        assert!(!anonymous.may_publish("sensors/valve-1/set"));
        assert!(!anonymous.may_publish("shouwang/s/selftest"));
        let unknown = rules.grants(&Principal::User("nobody".into())).unwrap();
        assert!(!unknown.may_publish("sensors/smoke-1/state"));
        assert!(rules.grants(&Principal::Gateway).is_none());
    }

    #[test]
    fn connection_limits_follow_the_devices_of_a_login() {
        let rules = AccessRules::from_config(&config(""));
        assert_eq!(
            rules.users["smoke-1"].max_connections,
            1 + LOGIN_CONNECTION_HEADROOM
        );
        assert_eq!(
            rules.users["b1-display"].max_connections,
            READER_CONNECTIONS
        );
    }

    #[test]
    fn logins_are_checked_and_name_their_principal() {
        let users = HashMap::from([("smoke-1".to_owned(), "pw1".to_owned())]);
        let logins = Logins::new(("gw", "internal"), &users, false);
        assert_eq!(
            logins.authenticate(Some(("gw", "internal"))),
            Ok(Principal::Gateway)
        );
        assert_eq!(
            logins.authenticate(Some(("smoke-1", "pw1"))),
            Ok(Principal::User("smoke-1".into()))
        );
        assert_eq!(
            logins.authenticate(Some(("smoke-1", "pw"))),
            Err(LoginRefusal::Wrong)
        );
        assert_eq!(
            logins.authenticate(Some(("gw", "pw1"))),
            Err(LoginRefusal::Wrong)
        );
        assert_eq!(logins.authenticate(None), Err(LoginRefusal::Missing));
        let open = Logins::new(("gw", "internal"), &users, true);
        assert_eq!(open.authenticate(None), Ok(Principal::Anonymous));
        assert_eq!(
            open.authenticate(Some(("x", "y"))),
            Err(LoginRefusal::Wrong)
        );
    }

    #[test]
    fn topic_matching_follows_mqtt() {
        assert!(matches("a/b", "a/#"));
        assert!(matches("a", "a/#"));
        assert!(matches("a/b/c", "a/+/c"));
        assert!(!matches("a/b/c", "a/+"));
        assert!(!matches("a", "a/+"));
        assert!(!matches("$SYS/x", "#"));
        assert!(matches("$SYS/x", "$SYS/#"));
        assert!(!matches("ab", "a"));
    }

    #[test]
    fn filter_overlap_and_cover() {
        assert!(overlap("sensors/+/set", "sensors/v/#"));
        assert!(overlap("#", "residents/b1"));
        assert!(overlap("a/#", "a"));
        assert!(overlap("a", "a/#"));
        assert!(!overlap("a/b", "a/c"));
        assert!(!overlap("a/b/c", "a/+"));
        assert!(!overlap("$SYS/#", "#"));
        assert!(covers("residents/#", "residents/b1/+"));
        assert!(covers("residents/#", "residents"));
        assert!(!covers("residents/#", "#"));
        assert!(!covers("a/+", "a/#"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/b", "a/+"));
        assert_eq!(unshared("$share/g/residents/#"), "residents/#");
        assert!(valid_filter("a/+/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a+/b"));
    }
}

#[cfg(test)]
mod homeassistant_tests {
    use super::*;

    #[test]
    fn with_home_assistant_on_only_the_gateway_publishes_its_discovery_node_and_readers_may_send_the_birth(
    ) {
        let text = "[site]\nid = \"s\"\nname = \"S\"\nkind = \"compound\"\n\
                    [[broker.readers]]\nusername = \"ha\"\npassword = \"pw\"\n\
                    topics = [\"homeassistant/#\", \"shouwang/#\"]\n\
                    [homeassistant]\nenabled = true\n";
        let config = edge_config::parse(text, "t.toml", std::path::Path::new(".")).unwrap();
        let rules = AccessRules::from_config(&config);
        let node = "homeassistant/binary_sensor/shouwang_s/device_x_alarm/config";
        assert!(!rules.anonymous.may_publish(node));
        assert!(rules.anonymous.may_publish("homeassistant/status"));
        assert!(
            rules
                .anonymous
                .may_publish("homeassistant/binary_sensor/other/x/config"),
            "another integration's node is not the gateway's"
        );
        let reader = rules.grants(&Principal::User("ha".into())).unwrap();
        assert!(reader.may_publish("homeassistant/status"));
        assert!(!reader.may_publish(node));
        assert!(reader.may_read(node));
    }
}

//! `[site]`, `[locations]` and location references.

use super::Problems;
use crate::hints::{did_you_mean, list};
use crate::model::{Building, Config, LocationRef};
use crate::path::KeyPath;
use std::collections::HashSet;

pub(super) fn check_site(config: &Config, p: &mut Problems) {
    let site = &config.site;
    let at = KeyPath::of("site");
    p.id(at.key("id"), &site.id);
    p.not_blank(
        at.key("name"),
        &site.name,
        "\"幸福里小区 (Xingfuli compound)\"",
    );
    if site.languages.is_empty() {
        p.push(
            at.key("languages"),
            "list at least one language, e.g. [\"zh-CN\", \"en\"]",
        );
    }
    let mut seen = HashSet::new();
    for (i, lang) in site.languages.iter().enumerate() {
        if !seen.insert(lang) {
            p.push(
                at.key("languages").index(i),
                "language listed twice; remove the repeat",
            );
        }
    }
}

pub(super) fn check_locations(config: &Config, p: &mut Problems) {
    let at = KeyPath::of("locations");
    let buildings = &config.locations.buildings;
    for (i, b) in buildings.iter().enumerate() {
        check_building(b, at.key("buildings").index(i), p);
    }
    p.unique(
        "building id",
        buildings
            .iter()
            .enumerate()
            .map(|(i, b)| (at.key("buildings").index(i).key("id"), b.id.as_str())),
    );
    let areas = &config.locations.areas;
    for (i, area) in areas.iter().enumerate() {
        let here = at.key("areas").index(i);
        p.id(here.key("id"), &area.id);
        p.not_blank(
            here.key("name"),
            &area.name,
            "\"1号楼大堂 (Building 1 lobby)\"",
        );
        let loc = LocationRef {
            building: area.building.clone(),
            unit: area.unit.clone(),
            floor: area.floor,
            room: None,
            area: None,
        };
        if area.building.is_some() {
            check_building_ref(config, &loc, &here, p);
        } else if area.unit.is_some() || area.floor.is_some() {
            p.push(
                here.key("building"),
                "`unit` and `floor` need `building`; add building = \"…\"",
            );
        }
        for (j, b) in area.warns.iter().enumerate() {
            if config.building(b).is_none() {
                p.push(here.key("warns").index(j), unknown_building(config, b));
            }
        }
    }
    p.unique(
        "area id",
        areas
            .iter()
            .enumerate()
            .map(|(i, a)| (at.key("areas").index(i).key("id"), a.id.as_str())),
    );
}

fn check_building(b: &Building, at: KeyPath, p: &mut Problems) {
    p.id(at.key("id"), &b.id);
    p.not_blank(at.key("name"), &b.name, "\"1号楼 (Building 1)\"");
    p.range(at.key("floors"), b.floors, 1, 200);
    p.range(at.key("basements"), b.basements, 0, 10);
    for (j, u) in b.units.iter().enumerate() {
        let here = at.key("units").index(j);
        p.id(here.key("id"), &u.id);
        p.not_blank(here.key("name"), &u.name, "\"1单元 (Unit 1)\"");
        if let Some(f) = u.floors {
            p.range(here.key("floors"), f, 1, b.floors.max(1));
        }
    }
    p.unique(
        "unit id",
        b.units
            .iter()
            .enumerate()
            .map(|(j, u)| (at.key("units").index(j).key("id"), u.id.as_str())),
    );
}

fn unknown_building(config: &Config, id: &str) -> String {
    let ids = config.locations.buildings.iter().map(|b| b.id.as_str());
    format!(
        "unknown building \"{id}\"{}; known buildings: {} (add it under [[locations.buildings]])",
        did_you_mean(id, ids.clone()),
        list(ids)
    )
}

/// Check a `location = { … }` reference at `at`.
pub(super) fn check_location(config: &Config, loc: &LocationRef, at: &KeyPath, p: &mut Problems) {
    match (&loc.building, &loc.area) {
        (Some(_), Some(_)) => p.push(
            at.key("area"),
            "give either `building` or `area`, not both; an area already knows its building",
        ),
        (None, None) => p.push(
            at.clone(),
            "location needs `building = \"…\"` or `area = \"…\"`, e.g. { building = \"b1\", floor = 3 }",
        ),
        (Some(_), None) => check_building_ref(config, loc, at, p),
        (None, Some(area)) => check_area_ref(config, loc, area, at, p),
    }
}

fn check_area_ref(config: &Config, loc: &LocationRef, area: &str, at: &KeyPath, p: &mut Problems) {
    if config.area(area).is_none() {
        let ids = config.locations.areas.iter().map(|a| a.id.as_str());
        p.push(
            at.key("area"),
            format!(
                "unknown area \"{area}\"{}; known areas: {} (add it under [[locations.areas]])",
                did_you_mean(area, ids.clone()),
                list(ids)
            ),
        );
    }
    for (key, set) in [("unit", loc.unit.is_some()), ("floor", loc.floor.is_some())] {
        if set {
            p.push(
                at.key(key),
                format!("`{key}` cannot be used with `area` (the area fixes the place); remove it or use `building`"),
            );
        }
    }
}

fn check_building_ref(config: &Config, loc: &LocationRef, at: &KeyPath, p: &mut Problems) {
    let Some(id) = &loc.building else { return };
    let Some(building) = config.building(id) else {
        p.push(at.key("building"), unknown_building(config, id));
        return;
    };
    let mut top = building.floors;
    if let Some(unit_id) = &loc.unit {
        match building.unit(unit_id) {
            Some(unit) => top = unit.floors.unwrap_or(top),
            None => {
                let ids = building.units.iter().map(|u| u.id.as_str());
                p.push(
                    at.key("unit"),
                    format!(
                        "building \"{id}\" has no unit \"{unit_id}\"{}; its units: {}",
                        did_you_mean(unit_id, ids.clone()),
                        list(ids)
                    ),
                );
            }
        }
    }
    if let Some(floor) = loc.floor {
        check_floor(floor, top, building, at.key("floor"), p);
    }
}

fn check_floor(floor: i32, top: u32, b: &Building, at: KeyPath, p: &mut Problems) {
    let ok = (floor >= 1 && floor as i64 <= i64::from(top))
        || (floor <= -1 && i64::from(-floor) <= i64::from(b.basements));
    if floor == 0 {
        p.push(
            at,
            "there is no floor 0: the ground floor is 1 and the first basement -1",
        );
    } else if !ok {
        let basements = match b.basements {
            0 => String::new(),
            n => format!(" or -1 to -{n} (basements)"),
        };
        p.push(
            at,
            format!(
                "floor {floor} does not exist in building \"{}\": use 1 to {top}{basements}",
                b.id
            ),
        );
    }
}

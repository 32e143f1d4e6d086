//! Alert messages and advice in Chinese and English.

use edge_config::{AlertKind, Level};

use super::model::Localized;

fn level_zh(level: Level) -> &'static str {
    match level {
        Level::Red => "红色",
        Level::Orange => "橙色",
        Level::Yellow => "黄色",
        Level::Blue => "蓝色",
    }
}

fn level_en(level: Level) -> &'static str {
    match level {
        Level::Red => "RED",
        Level::Orange => "ORANGE",
        Level::Yellow => "YELLOW",
        Level::Blue => "BLUE",
    }
}

/// (zh-CN, en) short title of each kind.
fn title(kind: AlertKind) -> (&'static str, &'static str) {
    match kind {
        AlertKind::Smoke => ("烟雾报警", "Smoke alarm"),
        AlertKind::Heat => ("高温报警", "Heat alarm"),
        AlertKind::WaterLeak => ("漏水报警", "Water leak"),
        AlertKind::Gas => ("燃气泄漏报警", "Combustible gas alarm"),
        AlertKind::CarbonMonoxide => ("一氧化碳报警", "Carbon monoxide alarm"),
        AlertKind::SmartPlug => ("充电插座异常", "Charging socket hazard"),
        AlertKind::EbikeBattery => ("电动车电池异常", "E-bike battery hazard"),
        AlertKind::Sos => ("紧急求助", "SOS emergency call"),
        AlertKind::DeviceOffline => ("设备离线", "Device offline"),
        AlertKind::BatteryLow => ("设备电量低", "Device battery low"),
        AlertKind::Tamper => ("设备被拆动", "Device tampered with"),
        AlertKind::BatteryRemoved => ("夜间电池被取走", "Battery removed at night"),
        AlertKind::CameraDown => ("摄像头断流", "Camera stream down"),
        AlertKind::BufferFull => ("上报缓存已满", "Upload buffer full"),
        AlertKind::GatewayFault => ("网关故障", "Gateway fault"),
        AlertKind::CompoundOffline => ("小区网关失联", "Compound gateway silent"),
        AlertKind::EbikeEntry => ("电动车进入楼内", "E-bike entering the building"),
        AlertKind::Crowd => ("人员聚集", "Crowd gathering"),
        AlertKind::Intrusion => ("夜间闯入", "Intrusion"),
        AlertKind::Loitering => ("人员逗留", "Loitering"),
    }
}

/// (zh-CN, en) what people nearby should do.
fn advice(kind: AlertKind) -> (&'static str, &'static str) {
    match kind {
        AlertKind::Smoke | AlertKind::Heat => (
            "立即撤离，走楼梯勿乘电梯，拨打119；值班人员立即到场确认。",
            "Evacuate now by the stairs, not the lift, and call 119; duty staff go and check at once.",
        ),
        AlertKind::Gas => (
            "关闭燃气阀门并开窗通风，勿开关电器、勿用明火，撤离后拨打燃气抢修电话。",
            "Close the gas valve, open windows, do not touch switches or use flames; leave and call the gas emergency line.",
        ),
        AlertKind::CarbonMonoxide => (
            "立即开窗通风，关闭燃气热水器和炉灶，人员撤到室外；有头晕恶心者拨打120。",
            "Open the windows, turn off the gas water heater and stove, and get everyone outside; call 120 for anyone dizzy or sick.",
        ),
        AlertKind::SmartPlug => (
            "立即切断该插座电源，人员远离充电车辆，准备灭火器材；冒烟起火拨打119。",
            "Cut the socket's power now, keep people away from the charging e-bike and ready extinguishers; call 119 if it smokes or burns.",
        ),
        AlertKind::WaterLeak => (
            "关闭进水总阀，切断附近电源，通知物业维修。",
            "Shut the main water valve, switch off power nearby and call property maintenance.",
        ),
        AlertKind::EbikeBattery => (
            "立即断开充电电源，人员远离充电棚，准备灭火器材；冒烟起火拨打119。",
            "Cut the charging power, keep people away from the shed and ready extinguishers; call 119 if it smokes or burns.",
        ),
        AlertKind::Sos => (
            "值班人员立即联系求助人并到场处置。",
            "Duty staff call the person back and go to them at once.",
        ),
        AlertKind::DeviceOffline | AlertKind::BatteryLow | AlertKind::Tamper => (
            "安排维护人员检查设备。",
            "Send maintenance to check the device.",
        ),
        AlertKind::BatteryRemoved => (
            "调看充电棚视频，核实是否为车主本人。",
            "Check the charging-shed video to confirm it was the owner.",
        ),
        AlertKind::CameraDown => (
            "检查摄像头供电和网络。",
            "Check the camera's power and network.",
        ),
        AlertKind::BufferFull => (
            "检查上级平台网络连接；报警信息仍在本地保存。",
            "Check the uplink to the platform; alarms are still kept locally.",
        ),
        AlertKind::GatewayFault => (
            "网关部分功能失效，报警可能无法送达：立即检查网关，必要时人工巡查。",
            "Part of the gateway is not working and alarms may not get through: check the gateway now and patrol in person if needed.",
        ),
        AlertKind::CompoundOffline => (
            "该小区的报警可能无法送达警务站：联系小区物业检查网关和网络，必要时派人巡查。",
            "This compound's alarms may not reach the station: call its property office to check the gateway and network, and patrol if needed.",
        ),
        AlertKind::EbikeEntry => (
            "电动车禁止进入楼道和电梯，请劝离。",
            "E-bikes are banned from lobbies and lifts: ask the rider to take it out.",
        ),
        AlertKind::Crowd => (
            "值班人员关注现场秩序，必要时疏导。",
            "Duty staff watch the scene and disperse the crowd if needed.",
        ),
        AlertKind::Intrusion | AlertKind::Loitering => (
            "调看视频，必要时派人到场。",
            "Check the video and send someone if needed.",
        ),
    }
}

/// The alert's message: level, title and place.
pub fn message(kind: AlertKind, level: Level, place: &str) -> Localized {
    let (zh, en) = title(kind);
    Localized {
        zh_cn: format!("【{}】{}：{}", level_zh(level), zh, place),
        en: format!("[{}] {} at {}", level_en(level), en, place),
    }
}

/// The alert's advice.
pub fn advice_for(kind: AlertKind) -> Localized {
    let (zh, en) = advice(kind);
    Localized {
        zh_cn: zh.to_owned(),
        en: en.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gas_message_names_level_and_place_in_both_languages() {
        let m = message(AlertKind::Gas, Level::Red, "2号楼 3单元");
        assert_eq!(m.zh_cn, "【红色】燃气泄漏报警：2号楼 3单元");
        assert_eq!(m.en, "[RED] Combustible gas alarm at 2号楼 3单元");
        assert!(advice_for(AlertKind::Gas).zh_cn.contains("关闭燃气阀门"));
    }
}

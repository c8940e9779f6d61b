//! The driver components that ship inside the `lintel` binary, built from `drivers/*`
//! for `wasm32-wasip2` by this crate's build script.

/// A driver component shipped with Lintel.
#[derive(Debug, Clone, Copy)]
pub struct BundledDriver {
    /// The crate it was built from.
    pub crate_name: &'static str,
    /// The component's bytes.
    pub component: &'static [u8],
}

impl BundledDriver {
    /// The name `lintel driver upload --bundled` takes: the crate name without
    /// `lintel-driver-` (`pjlink`, `samsung-mdc`, …).
    pub fn name(&self) -> &'static str {
        self.crate_name
            .strip_prefix("lintel-driver-")
            .unwrap_or(self.crate_name)
    }
}

/// The bundled driver called `name` (see [`BundledDriver::name`]).
pub fn find(name: &str) -> Option<BundledDriver> {
    ALL.iter().copied().find(|d| d.name() == name)
}

/// The demo display (line protocol over TCP), see `drivers/demo-display`.
pub const DEMO_DISPLAY: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-demo-display",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_demo_display.wasm")),
};

/// The demo occupancy sensor (pushes readings over TCP), see `drivers/demo-occupancy`.
pub const DEMO_OCCUPANCY: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-demo-occupancy",
    component: include_bytes!(concat!(
        env!("OUT_DIR"),
        "/lintel_driver_demo_occupancy.wasm"
    )),
};

/// Sensors that publish JSON to an MQTT broker (Zigbee2MQTT style), see
/// `drivers/mqtt-sensor`.
pub const MQTT_SENSOR: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-mqtt-sensor",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_mqtt_sensor.wasm")),
};

/// Projectors and displays speaking PJLink class 1 and 2, see `drivers/pjlink`.
pub const PJLINK: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-pjlink",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_pjlink.wasm")),
};

/// Samsung displays over MDC, see `drivers/samsung-mdc`.
pub const SAMSUNG_MDC: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-samsung-mdc",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_samsung_mdc.wasm")),
};

/// Modbus TCP sensors with a register map in settings, see `drivers/modbus`.
pub const MODBUS: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-modbus",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_modbus.wasm")),
};

/// BACnet/IP sensors (present-value reads), see `drivers/bacnet`.
pub const BACNET: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-bacnet",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_bacnet.wasm")),
};

/// CalDAV room calendars, see `drivers/caldav`.
pub const CALDAV: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-caldav",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_caldav.wasm")),
};

/// Microsoft 365 room calendars over Microsoft Graph, see `drivers/msgraph`.
pub const MSGRAPH: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-msgraph",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_msgraph.wasm")),
};

/// Google Workspace room calendars over the Google Calendar API, see
/// `drivers/google-calendar`.
pub const GOOGLE_CALENDAR: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-google-calendar",
    component: include_bytes!(concat!(
        env!("OUT_DIR"),
        "/lintel_driver_google_calendar.wasm"
    )),
};

/// Room-booking panels over HTTP/JSON, see `drivers/room-panel`.
pub const ROOM_PANEL: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-room-panel",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_room_panel.wasm")),
};

/// The room logic (bookings, check-in, auto-release, the panel), see `drivers/bookings`.
pub const BOOKINGS: BundledDriver = BundledDriver {
    crate_name: "lintel-driver-bookings",
    component: include_bytes!(concat!(env!("OUT_DIR"), "/lintel_driver_bookings.wasm")),
};

/// Every bundled driver.
pub const ALL: &[BundledDriver] = &[
    DEMO_DISPLAY,
    DEMO_OCCUPANCY,
    MQTT_SENSOR,
    PJLINK,
    SAMSUNG_MDC,
    MODBUS,
    BACNET,
    CALDAV,
    MSGRAPH,
    GOOGLE_CALENDAR,
    ROOM_PANEL,
    BOOKINGS,
];

/// Deliberately misbehaving drivers for the sandbox tests (feature `fixtures`).
#[cfg(feature = "fixtures")]
pub mod fixtures {
    use super::BundledDriver;

    /// Loops, hogs memory, panics, floods, pokes at the sandbox and the host's async
    /// imports on request; see `drivers/fixtures/misbehave`.
    pub const MISBEHAVE: BundledDriver = BundledDriver {
        crate_name: "lintel-driver-fixture-misbehave",
        component: include_bytes!(concat!(
            env!("OUT_DIR"),
            "/lintel_driver_fixture_misbehave.wasm"
        )),
    };

    /// Version 1.0.0 of the versioned fixture (hot-reload tests); see
    /// `drivers/fixtures/versioned`.
    pub const VERSIONED_V1: BundledDriver = BundledDriver {
        crate_name: "lintel-driver-fixture-versioned",
        component: include_bytes!(concat!(
            env!("OUT_DIR"),
            "/lintel_driver_fixture_versioned.wasm"
        )),
    };

    /// Version 2.0.0 of the versioned fixture (its `v2` feature).
    pub const VERSIONED_V2: BundledDriver = BundledDriver {
        crate_name: "lintel-driver-fixture-versioned",
        component: include_bytes!(concat!(
            env!("OUT_DIR"),
            "/lintel_driver_fixture_versioned_v2.wasm"
        )),
    };

    /// Every fixture.
    pub const ALL: &[BundledDriver] = &[MISBEHAVE, VERSIONED_V1, VERSIONED_V2];
}

#[cfg(test)]
mod tests {
    #[test]
    fn bundled_drivers_are_wasm_components() {
        #[cfg(feature = "fixtures")]
        let all = super::ALL.iter().chain(super::fixtures::ALL);
        #[cfg(not(feature = "fixtures"))]
        let all = super::ALL.iter();
        for d in all {
            // magic + component-model layer (version 0x0d, layer 1)
            assert_eq!(&d.component[..4], b"\0asm", "{}", d.crate_name);
            assert_eq!(
                &d.component[4..8],
                &[0x0d, 0x00, 0x01, 0x00],
                "{} is not a component",
                d.crate_name
            );
        }
    }

    #[test]
    fn bundled_drivers_are_found_by_name() {
        assert_eq!(
            super::find("pjlink").unwrap().crate_name,
            "lintel-driver-pjlink"
        );
        assert_eq!(
            super::find("samsung-mdc").unwrap().crate_name,
            "lintel-driver-samsung-mdc"
        );
        assert!(super::find("lintel-driver-pjlink").is_none());
        assert!(super::find("nope").is_none());
        let mut names: Vec<_> = super::ALL.iter().map(|d| d.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), super::ALL.len(), "names are unique");
    }

    #[cfg(feature = "fixtures")]
    #[test]
    fn the_versioned_fixture_comes_in_two_versions() {
        use super::fixtures::{VERSIONED_V1, VERSIONED_V2};
        assert_ne!(VERSIONED_V1.component, VERSIONED_V2.component);
        let has =
            |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
        assert!(has(VERSIONED_V1.component, b"1.0.0") && !has(VERSIONED_V1.component, b"2.0.0"));
        assert!(has(VERSIONED_V2.component, b"2.0.0") && !has(VERSIONED_V2.component, b"1.0.0"));
    }
}

//! The pod's network as the host hands it to the guest.
//!
//! The host reads the pod's network namespace (the interface CNI set up, its addresses, routes
//! and static neighbours), connects it to the VM's NIC, and sends these to the agent, which
//! applies them to the guest's NIC. They mirror kata-agent's `Interface`, `Route` and
//! `ARPNeighbor`, and are gated by the agent policy under Kata's rule names
//! (`UpdateInterfaceRequest`, `UpdateRoutesRequest`, `AddARPNeighborsRequest`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Most addresses one interface may be given.
pub const MAX_ADDRESSES: usize = 16;
/// Most routes or neighbours one request may carry.
pub const MAX_ROUTES: usize = 256;

/// A network interface of the guest, found by its MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The name it gets in the guest (the pod's interface name, e.g. `eth0`).
    pub name: String,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`: the guest finds the NIC by it.
    pub hw_addr: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses.
    pub ip_addresses: Vec<IpAddress>,
}

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpAddress {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length (`24` for a /24).
    pub prefix_len: u8,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination network; absent for the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<IpAddress>,
    /// Next hop; absent for a directly connected network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Preferred source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
    /// The interface (by its guest name).
    pub device: String,
    /// Route scope (`0` universe, `253` link, as `rtnetlink` numbers them).
    #[serde(default)]
    pub scope: u8,
}

/// A static neighbour (ARP or NDP entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArpNeighbor {
    /// The neighbour's address.
    pub address: IpAddr,
    /// Its MAC address, `aa:bb:cc:dd:ee:ff`.
    pub lladdr: String,
    /// The interface (by its guest name).
    pub device: String,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = parse_mac("0a:58:0A:58:00:05").unwrap();
        assert_eq!(mac, [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05]);
        assert_eq!(format_mac(&mac), "0a:58:0a:58:00:05");
        for bad in [
            "",
            "0a:58:0a:58:00",
            "0a:58:0a:58:00:05:06",
            "0a:58:0a:58:00:5",
            "zz:58:0a:58:00:05",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn route_wire_format() {
        let r = Route {
            dest: None,
            gateway: Some("10.88.0.1".parse().unwrap()),
            source: None,
            device: "eth0".into(),
            scope: 0,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"gateway":"10.88.0.1","device":"eth0","scope":0}"#
        );
    }
}

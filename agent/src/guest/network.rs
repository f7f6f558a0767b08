//! The guest's network: the NIC the host attached, configured as the pod's interface.
//!
//! The host sends the pod's interface (found here by its MAC, through `getifaddrs(3)`), routes
//! and static neighbours (their devices found by name, through `if_nametoindex(3)`); each is
//! applied with rtnetlink messages on a blocking netlink socket (the agent has no async
//! runtime). Loopback is brought up at boot, whatever the pod's network.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::protocol::network::{
    parse_mac, ArpNeighbor, Interface, Route, MAX_ADDRESSES, MAX_ROUTES,
};
use crate::protocol::{ErrorKind, GuestError};

/// How long the kernel may take to answer one netlink request.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// Most messages a dump may return before the agent stops reading it.
const MAX_DUMP: usize = 4096;

fn invalid<M: Into<String>>(message: M) -> GuestError {
    GuestError::new(ErrorKind::InvalidArgument, message)
}

fn failed(what: &str, e: std::io::Error) -> GuestError {
    GuestError::new(ErrorKind::FailedPrecondition, format!("{what}: {e}"))
}

/// A route netlink socket of the guest's network namespace.
struct Netlink {
    socket: netlink_sys::Socket,
    sequence: u32,
}

impl Netlink {
    fn open() -> std::io::Result<Netlink> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let timeout = TimeVal::new(
            i64::try_from(NETLINK_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
            0,
        );
        setsockopt(&socket.as_fd(), ReceiveTimeout, &timeout)?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and reads until its acknowledgement (or the end of a dump); returns
    /// the messages that came back.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = self.sequence;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                    })?;
                let len = usize::try_from(msg.header.length).unwrap_or(usize::MAX);
                // A length shorter than the header would never end the loop.
                if len < 16 || len > rest.len() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "netlink message with a bad length",
                    ));
                }
                // Messages in one datagram are 4-byte aligned.
                rest = rest.get((len + 3) & !3..).unwrap_or_default();
                if msg.header.sequence_number != self.sequence {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        if replies.len() >= MAX_DUMP {
                            return Err(std::io::Error::other("netlink dump too long"));
                        }
                        replies.push(m);
                    }
                    _ => {}
                }
            }
        }
    }

    fn set_link(&mut self, message: LinkMessage) -> std::io::Result<()> {
        self.request(RouteNetlinkMessage::SetLink(message), NLM_F_ACK)
            .map(drop)
    }
}

/// Brings the loopback interface up (containers reach `localhost` through it).
pub fn loopback_up() -> std::io::Result<()> {
    let mut nl = Netlink::open()?;
    nl.set_link(LinkUnspec::new_with_name("lo").up().build())
}

/// Configures the NIC whose MAC is `iface.hw_addr`: name, MTU, addresses, then up.
pub fn update_interface(iface: &Interface) -> Result<(), GuestError> {
    let mac = parse_mac(&iface.hw_addr)
        .ok_or_else(|| invalid(format!("interface MAC {:?} is not valid", iface.hw_addr)))?;
    check_name(&iface.name)?;
    if iface.ip_addresses.len() > MAX_ADDRESSES {
        return Err(invalid(format!(
            "{} addresses for one interface; at most {MAX_ADDRESSES}",
            iface.ip_addresses.len()
        )));
    }
    if !(68..=65535).contains(&iface.mtu) {
        return Err(invalid(format!("MTU {} is out of range", iface.mtu)));
    }
    let index = index_of_mac(mac)?.ok_or_else(|| {
        GuestError::new(
            ErrorKind::NotFound,
            format!(
                "the guest has no NIC with MAC {}; the VM was started without the pod's network device",
                iface.hw_addr
            ),
        )
    })?;
    let mut nl = Netlink::open().map_err(|e| failed("opening a netlink socket", e))?;
    // A link is renamed while it is down.
    nl.set_link(LinkUnspec::new_with_index(index).down().build())
        .map_err(|e| failed("setting the NIC down", e))?;
    nl.set_link(
        LinkUnspec::new_with_index(index)
            .name(iface.name.clone())
            .mtu(iface.mtu)
            .build(),
    )
    .map_err(|e| failed(&format!("naming the NIC {:?}", iface.name), e))?;
    for a in &iface.ip_addresses {
        let message = address_message(index, a.address, a.prefix_len)?;
        nl.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| failed(&format!("adding {}/{}", a.address, a.prefix_len), e))?;
    }
    nl.set_link(LinkUnspec::new_with_index(index).up().build())
        .map_err(|e| failed(&format!("bringing {} up", iface.name), e))
}

/// The index of the interface whose MAC is `mac`, from the link-layer entries of
/// `getifaddrs(3)`.
fn index_of_mac(mac: [u8; 6]) -> Result<Option<u32>, GuestError> {
    let interfaces = nix::ifaddrs::getifaddrs()
        .map_err(|e| failed("listing the guest's interfaces", e.into()))?;
    for i in interfaces {
        let Some(link) = i.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        if link.addr() == Some(mac) {
            return Ok(u32::try_from(link.ifindex()).ok());
        }
    }
    Ok(None)
}

/// The index of the interface named `name` (`if_nametoindex(3)`).
fn link_index(name: &str) -> Result<u32, GuestError> {
    check_name(name)?;
    nix::net::if_::if_nametoindex(name).map_err(|e| match e {
        nix::errno::Errno::ENODEV => invalid(format!("the guest has no interface named {name:?}")),
        e => failed(&format!("looking up the interface {name:?}"), e.into()),
    })
}

fn check_name(name: &str) -> Result<(), GuestError> {
    // IFNAMSIZ is 16 with the NUL.
    if name.is_empty()
        || name.len() > 15
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        return Err(invalid(format!("interface name {name:?} is not valid")));
    }
    Ok(())
}

fn address_message(
    index: u32,
    address: IpAddr,
    prefix_len: u8,
) -> Result<AddressMessage, GuestError> {
    match address {
        IpAddr::V4(a) if prefix_len <= 32 => Ok(AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(a, prefix_len)
            .build()),
        IpAddr::V6(a) if prefix_len <= 128 => {
            Ok(AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(a, prefix_len)
                .build())
        }
        _ => Err(invalid(format!(
            "prefix length {prefix_len} does not fit {address}"
        ))),
    }
}

/// Adds the routes, in order.
pub fn update_routes(routes: &[Route]) -> Result<(), GuestError> {
    if routes.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "{} routes; at most {MAX_ROUTES}",
            routes.len()
        )));
    }
    let mut nl = Netlink::open().map_err(|e| failed("opening a netlink socket", e))?;
    for r in routes {
        let index = link_index(&r.device)?;
        let bad = |e| invalid::<String>(format!("route {}: {e}", describe(r)));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .output_interface(index)
            .scope(RouteScope::from(r.scope))
            .kind(RouteType::Unicast);
        if let Some(d) = r.dest {
            b = b.destination_prefix(d.address, d.prefix_len).map_err(bad)?;
        }
        if let Some(g) = r.gateway {
            if r.dest.is_none() {
                // The default route: its family is the gateway's.
                b = b.destination_prefix(unspecified(g), 0).map_err(bad)?;
            }
            b = b.gateway(g).map_err(bad)?;
        }
        if let Some(s) = r.source {
            b = b.pref_source(s).map_err(bad)?;
        }
        if r.dest.is_none() && r.gateway.is_none() {
            return Err(invalid(format!(
                "route {} has neither a destination nor a gateway",
                describe(r)
            )));
        }
        nl.request(
            RouteNetlinkMessage::NewRoute(b.build()),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| failed(&format!("adding route {}", describe(r)), e))?;
    }
    Ok(())
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// A route as `ip route` prints it.
fn describe(r: &Route) -> String {
    let mut s = match r.dest {
        Some(d) => format!("{}/{}", d.address, d.prefix_len),
        None => "default".to_string(),
    };
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {}", r.device));
    s
}

/// Adds permanent neighbour entries.
pub fn add_neighbors(neighbors: &[ArpNeighbor]) -> Result<(), GuestError> {
    if neighbors.len() > MAX_ROUTES {
        return Err(invalid(format!(
            "{} neighbours; at most {MAX_ROUTES}",
            neighbors.len()
        )));
    }
    let mut nl = Netlink::open().map_err(|e| failed("opening a netlink socket", e))?;
    for n in neighbors {
        let mac = parse_mac(&n.lladdr)
            .ok_or_else(|| invalid(format!("neighbour MAC {:?} is not valid", n.lladdr)))?;
        let index = link_index(&n.device)?;
        let mut m = NeighbourMessage::default();
        m.header.family = match n.address {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                n.address,
            )));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        nl.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map_err(|e| {
            failed(
                &format!("adding neighbour {} on {}", n.address, n.device),
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::network::IpAddress;

    #[test]
    fn bad_requests_are_refused_before_any_netlink_call() {
        let iface = Interface {
            name: "eth0".into(),
            hw_addr: "not-a-mac".into(),
            mtu: 1500,
            ip_addresses: vec![],
        };
        let e = update_interface(&iface).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(e.message, "interface MAC \"not-a-mac\" is not valid");

        let iface = Interface {
            name: "a/b".into(),
            hw_addr: "0a:58:0a:58:00:05".into(),
            ..iface
        };
        assert_eq!(
            update_interface(&iface).unwrap_err().message,
            "interface name \"a/b\" is not valid"
        );
        let iface = Interface {
            name: "eth0".into(),
            mtu: 10,
            ..iface
        };
        assert_eq!(
            update_interface(&iface).unwrap_err().message,
            "MTU 10 is out of range"
        );
        let e = address_message(1, "10.0.0.1".parse().unwrap(), 33).unwrap_err();
        assert_eq!(e.message, "prefix length 33 does not fit 10.0.0.1");
    }

    #[test]
    fn routes_are_described_as_ip_prints_them() {
        let r = Route {
            dest: Some(IpAddress {
                address: "10.88.0.0".parse().unwrap(),
                prefix_len: 16,
            }),
            gateway: Some("10.88.0.1".parse().unwrap()),
            source: None,
            device: "eth0".into(),
            scope: 0,
        };
        assert_eq!(describe(&r), "10.88.0.0/16 via 10.88.0.1 dev eth0");
        let r = Route { dest: None, ..r };
        assert_eq!(describe(&r), "default via 10.88.0.1 dev eth0");
    }
}

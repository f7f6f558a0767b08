//! The pod's network, connected to its VM as Kata's default `tcfilter` model does.
//!
//! containerd and CNI give the sandbox a network namespace with one interface (a veth on the
//! CNI bridge, say `eth0`), its addresses and routes. In that namespace the shim creates a TAP
//! device for QEMU's virtio-net and joins the two with tc: an ingress qdisc on each and a u32
//! match-all filter whose mirred action redirects every frame to the other. The guest NIC gets
//! the interface's MAC, so for the bridge the VM *is* the pod. The interface's addresses,
//! routes and static neighbours are read here and applied in the guest by the agent.
//!
//! The TAP is not persistent: QEMU holds its only descriptor, so it disappears with QEMU
//! whatever happens to the shim. [`detach`] removes the redirect (and the TAP if QEMU is still
//! alive) from a namespace that still exists.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use coffer_agent::protocol::network::{format_mac, ArpNeighbor, Interface, IpAddress, Route};
use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::AddressFamily;
use netlink_sys::TokioSocket;
use rtnetlink::{Handle, LinkUnspec};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The TAP's name in the pod's namespace.
pub const TAP_NAME: &str = "tap0_coffer";

/// How long the whole attach or detach may take (netlink answers at once; this bounds a
/// namespace that misbehaves).
const NETLINK_DEADLINE: Duration = Duration::from_secs(10);

/// `ETH_P_ALL`, as tc's `protocol all`: the kernel compares it in network byte order.
const ETH_P_ALL: u16 = 0x0003_u16.to_be();

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_PARENT: u32 = 0xffff_0000;

/// The pod's network, ready for the VM and the guest.
#[derive(Debug)]
pub struct PodNetwork {
    /// The TAP's descriptor, for QEMU (`-netdev tap,fd=`).
    pub tap: OwnedFd,
    /// What the guest is told.
    pub guest: GuestNetwork,
}

/// The pod's interface, routes and neighbours, in the guest's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    /// The interface (the guest NIC gets its MAC).
    pub interface: Interface,
    /// Routes through it, connected ones first.
    pub routes: Vec<Route>,
    /// Its permanent neighbours.
    pub neighbors: Vec<ArpNeighbor>,
}

fn net_error(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!("pod network: {what}: {e}"))
}

/// Opens a rtnetlink connection inside the namespace at `netns`, and, when `tap` is set, a TAP
/// device named [`TAP_NAME`] there. Both are made on a thread of their own that enters the
/// namespace and ends: sockets and the TAP stay in the namespace they were made in.
fn in_namespace(netns: &Path, tap: bool) -> Result<(Handle, Option<OwnedFd>)> {
    let ns = File::open(netns).map_err(|e| net_error(format!("opening {}", netns.display()), e))?;
    let netns = netns.to_path_buf();
    let (socket, tap) = std::thread::spawn(move || -> Result<_> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| net_error(format!("entering {}", netns.display()), e))?;
        let tap = if tap { Some(open_tap()?) } else { None };
        let socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
            .map_err(|e| net_error("opening a netlink socket", e))?;
        Ok((socket, tap))
    })
    .join()
    .map_err(|_| net_error("the namespace thread", "panicked"))??;
    // SAFETY: the descriptor is the netlink socket just opened, whose ownership moves here.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok((handle, tap))
}

/// Creates a TAP (no packet information header) named [`TAP_NAME`] in the calling thread's
/// network namespace. The device lives as long as the descriptor.
pub fn open_tap() -> Result<OwnedFd> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| net_error("opening /dev/net/tun (is the tun module loaded?)", e))?;
    let mut req = [0u8; 40]; // struct ifreq: name[16], flags (short), padding.
    req[..TAP_NAME.len()].copy_from_slice(TAP_NAME.as_bytes());
    let flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap_or(0);
    req[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is large enough for;
    // the descriptor is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(net_error(
            format!("creating TAP {TAP_NAME}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OwnedFd::from(file))
}

/// Reads the pod's interface from `netns`, creates the TAP and the redirect, and returns both.
/// `None` when the namespace has no interface but loopback (a pod without network). On error
/// nothing is left in the namespace.
pub async fn attach(netns: &Path) -> Result<Option<PodNetwork>> {
    let attached = tokio::time::timeout(NETLINK_DEADLINE, async {
        let (handle, tap) = in_namespace(netns, true)?;
        let tap = tap.ok_or_else(|| net_error("TAP", "not created"))?;
        let result = connect(&handle).await;
        match result {
            Ok(Some(guest)) => Ok(Some(PodNetwork { tap, guest })),
            Ok(None) => Ok(None),
            Err(e) => {
                remove_redirect(&handle).await;
                Err(e)
            }
        }
    })
    .await
    .map_err(|_| net_error(format!("configuring {}", netns.display()), "timed out"))?;
    attached
}

async fn connect(handle: &Handle) -> Result<Option<GuestNetwork>> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| net_error("listing interfaces", e))?;
    let Some(pod) = pod_interface(&links) else {
        return Ok(None);
    };
    let tap = links
        .iter()
        .find(|l| link_name(l) == Some(TAP_NAME))
        .map(|l| l.header.index)
        .ok_or_else(|| net_error("TAP", "not found after creating it"))?;
    let name = link_name(pod).unwrap_or("eth0").to_string();
    let index = pod.header.index;
    let mtu = pod
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .unwrap_or(1500);
    let mac = pod
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some(format_mac(m)),
            _ => None,
        })
        .ok_or_else(|| net_error(format!("interface {name}"), "has no MAC address"))?;

    let addresses: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| net_error(format!("listing the addresses of {name}"), e))?;
    let ip_addresses = addresses
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| {
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })?;
            // The guest makes its own IPv6 link-local address.
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            (!link_local).then_some(IpAddress {
                address: ip,
                prefix_len: a.header.prefix_len,
            })
        })
        .collect();

    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let found: Vec<RouteMessage> = handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| net_error("listing routes", e))?;
        routes.extend(found.iter().filter_map(|r| guest_route(r, index, &name)));
    }
    // A gateway is reachable only once the route to its network is there.
    routes.sort_by_key(|r| r.gateway.is_some());

    let neighbours: Vec<_> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| net_error("listing neighbours", e))?;
    let neighbors = neighbours
        .iter()
        .filter(|n| n.header.ifindex == index && n.header.state == NeighbourState::Permanent)
        .filter_map(|n| {
            let address = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                    Some(IpAddr::V4(*v4))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                    Some(IpAddr::V6(*v6))
                }
                _ => None,
            })?;
            let lladdr = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => Some(format_mac(m)),
                _ => None,
            })?;
            Some(ArpNeighbor {
                address,
                lladdr,
                device: name.clone(),
            })
        })
        .collect();

    // The TAP carries the pod's frames: same MTU, up, and the two joined both ways.
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(|e| net_error(format!("bringing {TAP_NAME} up"), e))?;
    for (from, to) in [(index, tap), (tap, index)] {
        let from_index = i32::try_from(from).map_err(|e| net_error("interface index", e))?;
        handle
            .qdisc()
            .add(from_index)
            .ingress()
            .execute()
            .await
            .map_err(|e| net_error(format!("adding an ingress qdisc to interface {from}"), e))?;
        handle
            .traffic_filter(from_index)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ETH_P_ALL)
            .redirect(to)
            .map_err(|e| net_error("building the redirect filter", e))?
            .execute()
            .await
            .map_err(|e| net_error(format!("redirecting interface {from} to {to}"), e))?;
    }
    Ok(Some(GuestNetwork {
        interface: Interface {
            name,
            hw_addr: mac,
            mtu,
            ip_addresses,
        },
        routes,
        neighbors,
    }))
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The interface CNI made: `eth0` if there is one, else the first that is neither loopback nor
/// the TAP.
fn pod_interface(links: &[LinkMessage]) -> Option<&LinkMessage> {
    let candidates: Vec<&LinkMessage> = links
        .iter()
        .filter(|l| !l.header.flags.contains(LinkFlags::Loopback))
        .filter(|l| link_name(l) != Some(TAP_NAME))
        .collect();
    if candidates.len() > 1 {
        tracing::warn!(
            interfaces = ?candidates.iter().filter_map(|l| link_name(l)).collect::<Vec<_>>(),
            "the pod's namespace has several interfaces; only one is connected to the VM"
        );
    }
    candidates
        .iter()
        .find(|l| link_name(l) == Some("eth0"))
        .or(candidates.first())
        .copied()
}

/// A route of the main table through the pod's interface, as the guest adds it. The kernel's
/// own routes (a connected network, IPv6 link-local) the guest's kernel makes by itself.
fn guest_route(r: &RouteMessage, index: u32, device: &str) -> Option<Route> {
    let h = &r.header;
    if h.table != RouteHeader::RT_TABLE_MAIN
        || h.kind != RouteType::Unicast
        || h.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut oif = None;
    let (mut dest, mut gateway, mut source) = (None, None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(d) => dest = ip(d),
            RouteAttribute::Gateway(g) => gateway = ip(g),
            RouteAttribute::PrefSource(s) => source = ip(s),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    Some(Route {
        dest: dest.map(|address| IpAddress {
            address,
            prefix_len: h.destination_prefix_length,
        }),
        gateway,
        source,
        device: device.to_string(),
        scope: u8::from(h.scope),
    })
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Removes the ingress qdiscs (and with them the redirect filters) and the TAP, where present.
async fn remove_redirect(handle: &Handle) {
    let Ok(links) = handle
        .link()
        .get()
        .execute()
        .try_collect::<Vec<LinkMessage>>()
        .await
    else {
        return;
    };
    let tap = links.iter().find(|l| link_name(l) == Some(TAP_NAME));
    if let Some(pod) = pod_interface(&links) {
        if let Ok(i) = i32::try_from(pod.header.index) {
            let mut del = handle.qdisc().del(i);
            del.message_mut().header.parent = netlink_packet_route::tc::TcHandle::INGRESS;
            // Absent when attach failed before adding it: nothing to remove then.
            let _ = del.execute().await;
        }
    }
    if let Some(tap) = tap {
        let _ = handle.link().del(tap.header.index).execute().await;
    }
}

/// Undoes [`attach`] in `netns`, if the namespace still exists (CNI may have removed it).
pub async fn detach(netns: &Path) {
    if !netns.exists() {
        return;
    }
    let done = tokio::time::timeout(NETLINK_DEADLINE, async {
        match in_namespace(netns, false) {
            Ok((handle, _)) => remove_redirect(&handle).await,
            Err(e) => tracing::warn!(netns = %netns.display(), error = %e, "pod network teardown"),
        }
    })
    .await;
    if done.is_err() {
        tracing::warn!(netns = %netns.display(), "pod network teardown timed out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteScope;

    fn route(
        dest: Option<(&str, u8)>,
        gw: Option<&str>,
        oif: u32,
        proto: RouteProtocol,
    ) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        r.header.protocol = proto;
        r.header.scope = RouteScope::Universe;
        r.header.address_family = AddressFamily::Inet;
        if let Some((d, len)) = dest {
            r.header.destination_prefix_length = len;
            r.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    d.parse().unwrap(),
                )));
        }
        if let Some(g) = gw {
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(
                    g.parse().unwrap(),
                )));
        }
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    #[test]
    fn routes_through_the_pod_interface_reach_the_guest() {
        let default = route(None, Some("10.88.0.1"), 2, RouteProtocol::Boot);
        let r = guest_route(&default, 2, "eth0").unwrap();
        assert_eq!(r.dest, None);
        assert_eq!(r.gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.device, "eth0");

        let static_net = route(
            Some(("10.96.0.0", 12)),
            Some("10.88.0.1"),
            2,
            RouteProtocol::Static,
        );
        let r = guest_route(&static_net, 2, "eth0").unwrap();
        assert_eq!(
            r.dest,
            Some(IpAddress {
                address: "10.96.0.0".parse().unwrap(),
                prefix_len: 12
            })
        );
        // The connected network is the guest kernel's to make; other interfaces are not ours.
        let connected = route(Some(("10.88.0.0", 16)), None, 2, RouteProtocol::Kernel);
        assert_eq!(guest_route(&connected, 2, "eth0"), None);
        assert_eq!(guest_route(&default, 3, "eth0"), None);
    }
}

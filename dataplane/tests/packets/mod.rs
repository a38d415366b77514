//! Frames built by hand for the hostile-input tests: Ethernet, IPv4 (checksummed), TCP, UDP,
//! ICMP, VLAN tags and VXLAN, each with the knobs a malformed variant needs.

use std::net::Ipv4Addr;

pub mod cases;

pub const ETH_LEN: usize = 14;
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;
pub const VXLAN_PORT: u16 = 4789;
pub const MESH_VNI_BASE: u32 = 0xFE_0000;
pub const TCP_SYN: u8 = 0x02;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 100];

/// The Internet checksum of `bytes` (the prober's own).
fn csum(bytes: &[u8]) -> u16 {
    dataplane::probe::ipv4::checksum(&[bytes])
}

/// Whether the IPv4 header at the start of `ip` has a right checksum.
pub fn ip_csum_ok(ip: &[u8]) -> bool {
    let hl = usize::from(ip[0] & 0xf) * 4;
    csum(&ip[..hl]) == 0
}

/// Recomputes the IPv4 header checksum of an Ethernet frame.
pub fn refresh_ip_csum(frame: &mut [u8]) {
    let hl = (usize::from(frame[ETH_LEN] & 0xf) * 4).max(20);
    let ip = &mut frame[ETH_LEN..ETH_LEN + hl];
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = csum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

pub fn set_tot_len(frame: &mut [u8], len: u16) {
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&len.to_be_bytes());
    refresh_ip_csum(frame);
}

/// Sets the flags and fragment offset word (0x2000 MF, low 13 bits offset in 8-byte units).
pub fn set_frag(frame: &mut [u8], word: u16) {
    frame[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&word.to_be_bytes());
    refresh_ip_csum(frame);
}

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = HOST_MAC.to_vec();
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 packet from CLIENT to `dst`, options appended to the 20-byte header.
fn ipv4(dst: Ipv4Addr, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let hl = 20 + options.len();
    let mut ip = vec![0u8; hl];
    ip[0] = 0x40 | (hl / 4) as u8;
    ip[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&CLIENT.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip[20..].copy_from_slice(options);
    let sum = csum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

fn tcp(dport: u16, sport: u16, flags: u8, doff: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    tcp[12] = doff << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(payload);
    tcp
}

fn udp(dport: u16, sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    udp
}

/// A TCP segment from CLIENT:`sport` to `dst`:`dport` with data offset `doff` (20 header bytes
/// are written whatever it says) followed by `payload`.
pub fn tcp_frame(
    dst: Ipv4Addr,
    dport: u16,
    sport: u16,
    flags: u8,
    doff: u8,
    payload: &[u8],
) -> Vec<u8> {
    ethernet(
        0x0800,
        &ipv4(dst, 6, &[], &tcp(dport, sport, flags, doff, payload)),
    )
}

pub fn udp_frame(dst: Ipv4Addr, dport: u16, sport: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(0x0800, &ipv4(dst, 17, &[], &udp(dport, sport, payload)))
}

/// `icmp` is the ICMP header and body as given (checksum not filled in: the program does not
/// check it).
pub fn icmp_frame(dst: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
    ethernet(0x0800, &ipv4(dst, 1, &[], icmp))
}

/// The TCP segment of `frame` (a `tcp_frame`) from source port `sport`, with IP `options`.
pub fn with_options(frame: &[u8], options: &[u8], sport: u16) -> Vec<u8> {
    let hl = usize::from(frame[ETH_LEN] & 0xf) * 4;
    let mut segment = frame[ETH_LEN + hl..].to_vec();
    segment[0..2].copy_from_slice(&sport.to_be_bytes());
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[ETH_LEN + 16..ETH_LEN + 20]).unwrap());
    ethernet(0x0800, &ipv4(dst, 6, options, &segment))
}

/// `frame` with an 802.1Q/802.1ad tag (`tpid`, VLAN `vid`) after the MACs.
pub fn vlan(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&tpid.to_be_bytes());
    tagged.extend_from_slice(&vid.to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// An inner Ethernet frame around `frame`'s IPv4 packet, as the mesh encapsulates it.
pub fn inner_frame(frame: Vec<u8>) -> Vec<u8> {
    let mut inner = vec![0x02, 0x6d, 0x65, 0x73, 0x68, 0x00];
    inner.extend_from_slice(&frame[6..]);
    inner
}

/// VXLAN to the host's data-path port: flags word, `vni`, then `inner` (any bytes).
pub fn vxlan_frame(flags: u32, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = flags.to_be_bytes().to_vec();
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    udp_frame(crate::HOST, VXLAN_PORT, 49152, &payload)
}

/// Appends one case to the reliability report when `$MESH_REPORT_DIR` is set, in the format of
/// `netns_tests::report::verdict` (which this crate cannot depend on: netns-tests depends on it).
pub fn report(case: &str, passed: bool, outcome: &str) {
    use std::io::Write;
    let Some(dir) = std::env::var_os("MESH_REPORT_DIR") else {
        return;
    };
    let line = serde_json::json!({
        "area": "hostile input",
        "case": case,
        "passed": passed,
        "outcome": outcome,
    });
    let path = std::path::Path::new(&dir).join("hostile-input.jsonl");
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?
            .write_all(format!("{line}\n").as_bytes())
    });
    if let Err(err) = written {
        eprintln!("report: cannot append to {}: {err}", path.display());
    }
}

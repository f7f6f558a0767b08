//! Reading the Init-Data register back from the TEE: TDX MRCONFIGID, SEV-SNP HOST_DATA.
//!
//! The layouts are the hardware's; the parsers are pure functions over byte buffers so they are
//! tested on synthetic reports.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Size of a TDX TDREPORT (`TDREPORT_STRUCT`).
pub const TDREPORT_LEN: usize = 1024;

/// Offset of MRCONFIGID in a TDREPORT: REPORTMACSTRUCT (256 bytes), TEE_TCB_INFO (239),
/// reserved (17), then TDINFO, in which ATTRIBUTES (8), XFAM (8) and MRTD (48) precede
/// MRCONFIGID (48).
pub const TDREPORT_MRCONFIGID: usize = 256 + 239 + 17 + 8 + 8 + 48;

/// Length of a TDX quote's header (versions 4 and 5).
pub const TD_QUOTE_HEADER_LEN: usize = 48;

/// Offset of MRCONFIGID in a TDX quote's report body, the same in TD 1.0 and TD 1.5 bodies:
/// TEE_TCB_SVN (16), MRSEAM (48), MRSIGNERSEAM (48), SEAMATTRIBUTES (8), TDATTRIBUTES (8),
/// XFAM (8) and MRTD (48) precede it.
pub const TD_QUOTE_BODY_MRCONFIGID: usize = 16 + 48 + 48 + 8 + 8 + 8 + 48;

/// A quote header's TEE type for TDX.
const TD_QUOTE_TEE_TYPE_TDX: u32 = 0x81;

/// Offset of HOST_DATA in an SEV-SNP attestation report.
pub const SNP_REPORT_HOST_DATA: usize = 0xC0;

/// Offset of the report inside the firmware's MSG_REPORT_RSP (status, size, 24 reserved bytes).
pub const SNP_REPORT_RSP_HEADER: usize = 0x20;

/// Newer kernels expose MRCONFIGID here (binary, or hex text on some versions).
pub const TDX_SYSFS_MRCONFIGID: &str =
    "/sys/devices/virtual/misc/tdx_guest/measurements/mrconfigid";

/// Errors while reading a TEE register.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TeeError {
    /// A report is shorter than its layout.
    #[error("{what} is {len} bytes, shorter than the {need} bytes its layout needs")]
    Short {
        /// What was parsed.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length needed.
        need: usize,
    },
    /// The firmware refused the report request.
    #[error("the SEV-SNP firmware answered the report request with status {0:#x}")]
    FirmwareStatus(u32),
    /// A sysfs value is neither 48 raw bytes nor 96 hex characters.
    #[error("{path} holds {len} bytes, neither 48 raw bytes nor 96 hex characters")]
    BadSysfs {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
    /// A TDX quote that is not one this parser knows.
    #[error("the TDX quote {0}")]
    BadQuote(String),
    /// No interface to the TEE could be used.
    #[error("{0}")]
    Unavailable(String),
}

/// MRCONFIGID from a TDREPORT.
pub fn tdreport_mrconfigid(report: &[u8]) -> Result<[u8; 48], TeeError> {
    field(report, "TDREPORT", TDREPORT_MRCONFIGID, TDREPORT_LEN)
}

/// MRCONFIGID from a TDX quote (what configfs-tsm's `outblob` gives on TDX): version 4, whose
/// TD report body follows the header, or version 5, whose body follows a type (2: TD 1.0,
/// 3: TD 1.5) and a size.
pub fn tdx_quote_mrconfigid(quote: &[u8]) -> Result<[u8; 48], TeeError> {
    let le16 = |at: usize| {
        quote
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let short = |need: usize| TeeError::Short {
        what: "TDX quote",
        len: quote.len(),
        need,
    };
    let version = le16(0).ok_or_else(|| short(TD_QUOTE_HEADER_LEN))?;
    let tee_type = quote
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| short(TD_QUOTE_HEADER_LEN))?;
    if tee_type != TD_QUOTE_TEE_TYPE_TDX {
        return Err(TeeError::BadQuote(format!(
            "has TEE type {tee_type:#x}, not TDX ({TD_QUOTE_TEE_TYPE_TDX:#x})"
        )));
    }
    let body = match version {
        4 => TD_QUOTE_HEADER_LEN,
        5 => match le16(TD_QUOTE_HEADER_LEN).ok_or_else(|| short(TD_QUOTE_HEADER_LEN + 6))? {
            2 | 3 => TD_QUOTE_HEADER_LEN + 6,
            other => {
                return Err(TeeError::BadQuote(format!(
                    "has body type {other}, not a TD report (2 or 3)"
                )))
            }
        },
        other => {
            return Err(TeeError::BadQuote(format!(
                "has version {other}; versions 4 and 5 are known"
            )))
        }
    };
    let at = body + TD_QUOTE_BODY_MRCONFIGID;
    field(quote, "TDX quote", at, at + 48)
}

/// HOST_DATA from an SEV-SNP attestation report (as configfs-tsm's `outblob` gives it).
pub fn snp_report_host_data(report: &[u8]) -> Result<[u8; 32], TeeError> {
    field(
        report,
        "SEV-SNP attestation report",
        SNP_REPORT_HOST_DATA,
        SNP_REPORT_HOST_DATA + 32,
    )
}

/// HOST_DATA from the firmware's MSG_REPORT_RSP (what `/dev/sev-guest` returns).
pub fn snp_report_rsp_host_data(rsp: &[u8]) -> Result<[u8; 32], TeeError> {
    if rsp.len() < SNP_REPORT_RSP_HEADER {
        return Err(TeeError::Short {
            what: "SEV-SNP MSG_REPORT_RSP",
            len: rsp.len(),
            need: SNP_REPORT_RSP_HEADER,
        });
    }
    let status = u32::from_le_bytes([rsp[0], rsp[1], rsp[2], rsp[3]]);
    if status != 0 {
        return Err(TeeError::FirmwareStatus(status));
    }
    snp_report_host_data(&rsp[SNP_REPORT_RSP_HEADER..])
}

/// MRCONFIGID as the sysfs measurement file holds it: 48 raw bytes, or 96 hex characters.
pub fn sysfs_mrconfigid(path: &str, content: &[u8]) -> Result<[u8; 48], TeeError> {
    if content.len() == 48 {
        let mut out = [0u8; 48];
        out.copy_from_slice(content);
        return Ok(out);
    }
    let text = std::str::from_utf8(content).unwrap_or("").trim();
    let bad = || TeeError::BadSysfs {
        path: path.into(),
        len: content.len(),
    };
    if text.len() != 96 {
        return Err(bad());
    }
    let mut out = [0u8; 48];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(out)
}

fn field<const N: usize>(
    buf: &[u8],
    what: &'static str,
    offset: usize,
    need: usize,
) -> Result<[u8; N], TeeError> {
    if buf.len() < need {
        return Err(TeeError::Short {
            what,
            len: buf.len(),
            need,
        });
    }
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[offset..offset + N]);
    Ok(out)
}

/// What the CPU and the kernel say about the TEE this guest runs in, and which of its guest
/// interfaces exist. Gathered by [`TeeFacts::gather`]; [`decide`] turns them into the TEE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TeeFacts {
    /// CPUID leaf 0x21 answers with the vendor string `"IntelTDX    "` (only inside a TD).
    pub cpuid_tdx: bool,
    /// CPUID 0x8000001F EAX bit 4 (SEV-SNP), as the guest sees it.
    pub cpuid_snp: bool,
    /// `/proc/cpuinfo` flags include `tdx_guest` (the kernel found itself in a TD).
    pub flag_tdx_guest: bool,
    /// `/proc/cpuinfo` flags include `sev_snp`.
    pub flag_sev_snp: bool,
    /// `/dev/tdx_guest` or the TDX sysfs measurements exist (the tdx_guest driver).
    pub tdx_interface: bool,
    /// `/dev/sev-guest` or configfs-tsm's report directory exists (the sev-guest driver).
    pub snp_interface: bool,
    /// `/dev/sev-guest` exists (configfs-tsm alone does not tell the TEE apart).
    pub sev_guest_device: bool,
}

/// Vendor string of CPUID leaf 0x21 in a TDX guest (EBX, EDX, ECX).
const TDX_CPUID_VENDOR: &[u8; 12] = b"IntelTDX    ";

impl TeeFacts {
    /// Reads CPUID, `/proc/cpuinfo` and the device and sysfs paths.
    pub fn gather() -> TeeFacts {
        let (cpuid_tdx, cpuid_snp) = cpuid_facts();
        let flags = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_flag = |name: &str| {
            flags
                .lines()
                .filter_map(|l| l.strip_prefix("flags"))
                .any(|l| l.split_whitespace().any(|f| f == name))
        };
        TeeFacts {
            cpuid_tdx,
            cpuid_snp,
            flag_tdx_guest: has_flag("tdx_guest"),
            flag_sev_snp: has_flag("sev_snp"),
            tdx_interface: Path::new("/dev/tdx_guest").exists()
                || Path::new(TDX_SYSFS_MRCONFIGID).exists(),
            snp_interface: Path::new("/dev/sev-guest").exists()
                || Path::new("/sys/kernel/config/tsm/report").exists(),
            sev_guest_device: Path::new("/dev/sev-guest").exists(),
        }
    }
}

/// `(TDX, SEV-SNP)` as CPUID reports them.
// `__cpuid` is an unsafe function on older toolchains (down to the crate's rust-version) and a
// safe one on newer toolchains.
#[allow(unused_unsafe)]
#[cfg(target_arch = "x86_64")]
fn cpuid_facts() -> (bool, bool) {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86_64 CPU; reading a leaf has no side effect.
    let max = unsafe { __cpuid(0) }.eax;
    let tdx = max >= 0x21 && {
        // SAFETY: as above, for a leaf the CPU reports.
        let r = unsafe { __cpuid(0x21) };
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&r.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&r.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&r.ecx.to_le_bytes());
        &vendor == TDX_CPUID_VENDOR
    };
    // SAFETY: as above.
    let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
    let snp = max_ext >= 0x8000_001F && {
        // SAFETY: as above, for a leaf the CPU reports.
        let r = unsafe { __cpuid(0x8000_001F) };
        r.eax & (1 << 4) != 0
    };
    (tdx, snp)
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_facts() -> (bool, bool) {
    (false, false)
}

/// The TEE the facts show. A CPU that says TDX or SEV-SNP while the guest interface is missing
/// is an error naming the driver, never "no TEE": a guest kernel without the driver must not
/// downgrade the launch silently.
pub fn decide(f: &TeeFacts) -> Result<Option<crate::protocol::Tee>, TeeError> {
    use crate::protocol::Tee;
    let tdx = f.cpuid_tdx || f.flag_tdx_guest;
    // Outside an SNP guest, the hypervisor hides the SEV leaf; the kernel's flag confirms it.
    let snp = f.flag_sev_snp || f.cpuid_snp;
    match (tdx, snp) {
        (true, _) if f.tdx_interface => Ok(Some(Tee::Tdx)),
        (true, _) => Err(TeeError::Unavailable(
            "the CPU says this is a TDX guest, but there is no /dev/tdx_guest and no TDX measurements in sysfs; the guest kernel needs the tdx_guest driver (CONFIG_TDX_GUEST_DRIVER)".into(),
        )),
        (false, true) if f.snp_interface => Ok(Some(Tee::Snp)),
        (false, true) => Err(TeeError::Unavailable(
            "the CPU says this is an SEV-SNP guest, but there is no /dev/sev-guest and no configfs-tsm report directory; the guest kernel needs the sev-guest driver (CONFIG_SEV_GUEST)".into(),
        )),
        // No CPU evidence: an interface alone still names the TEE.
        (false, false) if f.tdx_interface => Ok(Some(Tee::Tdx)),
        (false, false) if f.sev_guest_device => Ok(Some(Tee::Snp)),
        (false, false) => Ok(None),
    }
}

/// The TEE this guest runs in, from the CPU and the kernel, whatever the command line says.
pub fn detect() -> Result<Option<crate::protocol::Tee>, TeeError> {
    decide(&TeeFacts::gather())
}

/// Reads TDX MRCONFIGID: from sysfs (kernels from 6.16), else from a TDREPORT of
/// `/dev/tdx_guest`, else from a quote through configfs-tsm.
///
/// The TDREPORT comes before configfs-tsm here, unlike SEV-SNP's report: on TDX configfs-tsm
/// returns a quote, which the host's quote generation service must sign, and without one the
/// kernel waits out its timeout (30 s) before failing; the TDREPORT is local and immediate.
pub fn read_mrconfigid() -> Result<[u8; 48], TeeError> {
    if let Ok(content) = fs::read(TDX_SYSFS_MRCONFIGID) {
        return sysfs_mrconfigid(TDX_SYSFS_MRCONFIGID, &content);
    }
    let ioctl_error = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tdx_guest")
    {
        Ok(dev) => {
            let mut req = TdxReportReq {
                reportdata: [0; 64],
                tdreport: [0; TDREPORT_LEN],
            };
            // SAFETY: `dev` is open, and `req` is a live, correctly sized
            // `struct tdx_report_req` the kernel fills in place.
            match unsafe { tdx_get_report0(dev.as_raw_fd(), &mut req) } {
                Ok(_) => return tdreport_mrconfigid(&req.tdreport),
                Err(e) => format!("TDX_CMD_GET_REPORT0 failed: {e}"),
            }
        }
        Err(e) => format!("cannot open /dev/tdx_guest: {e}"),
    };
    let quote = report_via_configfs_tsm(TSM_PROVIDER_TDX).map_err(|e| {
        TeeError::Unavailable(format!(
            "no {TDX_SYSFS_MRCONFIGID}, {ioctl_error}, and {e}; the guest kernel needs the tdx_guest driver (CONFIG_TDX_GUEST_DRIVER)"
        ))
    })?;
    tdx_quote_mrconfigid(&quote)
}

/// Reads SEV-SNP HOST_DATA: configfs-tsm first, else `/dev/sev-guest`.
pub fn read_host_data() -> Result<[u8; 32], TeeError> {
    match report_via_configfs_tsm(TSM_PROVIDER_SNP) {
        Ok(report) => return snp_report_host_data(&report),
        Err(e) if !Path::new("/dev/sev-guest").exists() => {
            return Err(TeeError::Unavailable(format!(
                "{e}, and there is no /dev/sev-guest; the guest kernel needs the sev-guest driver (CONFIG_SEV_GUEST)"
            )))
        }
        Err(_) => {}
    }
    let dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/sev-guest")
        .map_err(|e| TeeError::Unavailable(format!("cannot open /dev/sev-guest: {e}")))?;
    let mut req = SnpReportReq {
        user_data: [0; 64],
        vmpl: 0,
        rsvd: [0; 28],
    };
    let mut rsp = SnpReportResp { data: [0; 4000] };
    let mut guest_req = SnpGuestRequestIoctl {
        msg_version: 1,
        req_data: std::ptr::addr_of_mut!(req) as u64,
        resp_data: std::ptr::addr_of_mut!(rsp) as u64,
        exitinfo2: 0,
    };
    // SAFETY: `dev` is open; `guest_req` points at `req` and `rsp`, which live until the call
    // returns and have the sizes the kernel's `struct snp_report_req`/`snp_report_resp` have.
    unsafe { snp_get_report(dev.as_raw_fd(), &mut guest_req) }.map_err(|e| {
        TeeError::Unavailable(format!(
            "SNP_GET_REPORT failed: {e} (exitinfo2 {:#x})",
            guest_req.exitinfo2
        ))
    })?;
    snp_report_rsp_host_data(&rsp.data)
}

/// configfs-tsm's provider name of the SEV-SNP guest driver.
const TSM_PROVIDER_SNP: &str = "sev_guest";
/// configfs-tsm's provider name of the TDX guest driver.
const TSM_PROVIDER_TDX: &str = "tdx_guest";

/// A report through configfs-tsm (`/sys/kernel/config/tsm/report`), when the provider behind it
/// is `provider`: the `outblob` for an all-zero `inblob`.
fn report_via_configfs_tsm(provider: &str) -> Result<Vec<u8>, TeeError> {
    let base = Path::new("/sys/kernel/config/tsm/report");
    if !base.exists() {
        return Err(TeeError::Unavailable(
            "configfs-tsm is not there (no /sys/kernel/config/tsm/report)".into(),
        ));
    }
    let entry = base.join(format!("coffer-{}", std::process::id()));
    let unavailable = |what: &str, e: std::io::Error| {
        TeeError::Unavailable(format!("configfs-tsm {what} failed: {e}"))
    };
    fs::create_dir(&entry).map_err(|e| unavailable("mkdir", e))?;
    let result = fs::read_to_string(entry.join("provider"))
        .map_err(|e| unavailable("provider read", e))
        .and_then(|found| {
            if found.trim() == provider {
                Ok(())
            } else {
                Err(TeeError::Unavailable(format!(
                    "configfs-tsm's provider is {:?}, not {provider}",
                    found.trim()
                )))
            }
        })
        .and_then(|()| {
            fs::write(entry.join("inblob"), [0u8; 64]).map_err(|e| unavailable("inblob write", e))
        })
        .and_then(|()| fs::read(entry.join("outblob")).map_err(|e| unavailable("outblob read", e)));
    let _ = fs::remove_dir(&entry);
    result
}

/// `struct tdx_report_req` of `<uapi/linux/tdx-guest.h>`.
#[repr(C)]
struct TdxReportReq {
    reportdata: [u8; 64],
    tdreport: [u8; TDREPORT_LEN],
}

/// `struct snp_report_req` of `<uapi/linux/sev-guest.h>`.
#[repr(C)]
struct SnpReportReq {
    user_data: [u8; 64],
    vmpl: u32,
    rsvd: [u8; 28],
}

/// `struct snp_report_resp` of `<uapi/linux/sev-guest.h>`.
#[repr(C)]
struct SnpReportResp {
    data: [u8; 4000],
}

/// `struct snp_guest_request_ioctl` of `<uapi/linux/sev-guest.h>`.
#[repr(C)]
struct SnpGuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}

nix::ioctl_readwrite!(tdx_get_report0, b'T', 1, TdxReportReq);
nix::ioctl_readwrite!(snp_get_report, b'S', 0x0, SnpGuestRequestIoctl);

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of an SEV-SNP attestation report (ATTESTATION_REPORT, versions 2 to 5).
    const SNP_REPORT_LEN: usize = 0x4A0;

    #[test]
    fn tdreport_offset_matches_the_tdinfo_layout() {
        assert_eq!(TDREPORT_MRCONFIGID, 576);
        let mut report = vec![0u8; TDREPORT_LEN];
        // MRTD just before, MROWNER just after: neither may leak into the value.
        report[528..576].fill(0xAA);
        for (i, b) in report[576..624].iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap();
        }
        report[624..672].fill(0xBB);
        let got = tdreport_mrconfigid(&report).unwrap();
        assert_eq!(got.to_vec(), (0u8..48).collect::<Vec<_>>());
        assert_eq!(
            tdreport_mrconfigid(&report[..600]),
            Err(TeeError::Short {
                what: "TDREPORT",
                len: 600,
                need: 1024
            })
        );
    }

    /// A synthetic TDX quote of `version` (5 with body `body_type`), MRCONFIGID = 0..48.
    fn quote(version: u16, tee_type: u32, body_type: u16) -> Vec<u8> {
        let mut q = vec![0u8; 48];
        q[0..2].copy_from_slice(&version.to_le_bytes());
        q[2..4].copy_from_slice(&2u16.to_le_bytes()); // ECDSA-256 attestation key
        q[4..8].copy_from_slice(&tee_type.to_le_bytes());
        if version == 5 {
            q.extend_from_slice(&body_type.to_le_bytes());
            q.extend_from_slice(&648u32.to_le_bytes());
        }
        let body = q.len();
        q.resize(body + 648 + 4, 0xee); // the body, then the signature data's length
        for (b, v) in q[body + TD_QUOTE_BODY_MRCONFIGID..][..48]
            .iter_mut()
            .zip(0u8..)
        {
            *b = v;
        }
        // MRTD, just before, and MROWNER, just after, are not MRCONFIGID.
        q[body + TD_QUOTE_BODY_MRCONFIGID - 1] = 0xaa;
        q[body + TD_QUOTE_BODY_MRCONFIGID + 48] = 0xbb;
        q
    }

    #[test]
    fn tdx_quotes_of_both_versions_give_mrconfigid() {
        let want: Vec<u8> = (0..48).collect();
        for q in [quote(4, 0x81, 0), quote(5, 0x81, 2), quote(5, 0x81, 3)] {
            assert_eq!(tdx_quote_mrconfigid(&q).unwrap().to_vec(), want);
        }
        // 184 bytes into the body: the layout's own arithmetic, checked against the spec's.
        assert_eq!(TD_QUOTE_BODY_MRCONFIGID, 184);
    }

    #[test]
    fn tdx_quotes_that_are_not_tdx_or_not_known_are_refused() {
        let sgx = tdx_quote_mrconfigid(&quote(3, 0, 0)).unwrap_err();
        assert_eq!(
            sgx.to_string(),
            "the TDX quote has TEE type 0x0, not TDX (0x81)"
        );
        assert_eq!(
            tdx_quote_mrconfigid(&quote(6, 0x81, 0))
                .unwrap_err()
                .to_string(),
            "the TDX quote has version 6; versions 4 and 5 are known"
        );
        assert_eq!(
            tdx_quote_mrconfigid(&quote(5, 0x81, 1))
                .unwrap_err()
                .to_string(),
            "the TDX quote has body type 1, not a TD report (2 or 3)"
        );
        let q = quote(4, 0x81, 0);
        assert_eq!(
            tdx_quote_mrconfigid(&q[..200]).unwrap_err(),
            TeeError::Short {
                what: "TDX quote",
                len: 200,
                need: 48 + 184 + 48
            }
        );
        assert!(matches!(
            tdx_quote_mrconfigid(&q[..3]).unwrap_err(),
            TeeError::Short { len: 3, .. }
        ));
    }

    #[test]
    fn snp_host_data_at_0xc0() {
        let mut report = vec![0u8; SNP_REPORT_LEN];
        report[0..4].copy_from_slice(&2u32.to_le_bytes());
        report[0x90..0xC0].fill(0x11); // MEASUREMENT
        report[0xC0..0xE0].copy_from_slice(&[0x5a; 32]);
        report[0xE0..0x110].fill(0x22); // ID_KEY_DIGEST
        assert_eq!(snp_report_host_data(&report).unwrap(), [0x5a; 32]);

        let mut rsp = vec![0u8; 0x20];
        rsp[4..8].copy_from_slice(&u32::try_from(SNP_REPORT_LEN).unwrap().to_le_bytes());
        rsp.extend_from_slice(&report);
        assert_eq!(snp_report_rsp_host_data(&rsp).unwrap(), [0x5a; 32]);
        rsp[0] = 0x16;
        assert_eq!(
            snp_report_rsp_host_data(&rsp),
            Err(TeeError::FirmwareStatus(0x16))
        );
        assert!(matches!(
            snp_report_host_data(&report[..0xD0]),
            Err(TeeError::Short { need: 0xE0, .. })
        ));
    }

    #[test]
    fn the_host_data_binding_reads_back() {
        // The value the host binds for the test vector of the reference, read back from a report.
        let doc = coffer_initdata::InitData::parse(
            b"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n".to_vec(),
        )
        .unwrap();
        let mut report = vec![0u8; SNP_REPORT_LEN];
        report[0xC0..0xE0].copy_from_slice(&doc.digest().host_data());
        assert_eq!(
            snp_report_host_data(&report).unwrap(),
            doc.digest().host_data()
        );
        let mut td = vec![0u8; TDREPORT_LEN];
        td[576..624].copy_from_slice(&doc.digest().mrconfigid());
        assert_eq!(tdreport_mrconfigid(&td).unwrap(), doc.digest().mrconfigid());
    }

    #[test]
    fn the_cpu_decides_and_a_missing_driver_is_an_error() {
        use crate::protocol::Tee;
        let none = TeeFacts::default();
        assert_eq!(decide(&none), Ok(None));
        let td = TeeFacts {
            cpuid_tdx: true,
            flag_tdx_guest: true,
            tdx_interface: true,
            ..Default::default()
        };
        assert_eq!(decide(&td), Ok(Some(Tee::Tdx)));
        // The CPU alone is enough evidence; without the driver it is an error, not "no TEE".
        for facts in [
            TeeFacts {
                cpuid_tdx: true,
                ..Default::default()
            },
            TeeFacts {
                flag_tdx_guest: true,
                ..Default::default()
            },
        ] {
            let e = decide(&facts).unwrap_err().to_string();
            assert!(e.contains("tdx_guest driver"), "{e}");
        }
        let snp = TeeFacts {
            cpuid_snp: true,
            flag_sev_snp: true,
            snp_interface: true,
            ..Default::default()
        };
        assert_eq!(decide(&snp), Ok(Some(Tee::Snp)));
        let e = decide(&TeeFacts {
            flag_sev_snp: true,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("sev-guest driver"), "{e}");
        // An interface without CPU evidence still names its TEE; configfs-tsm alone does not.
        assert_eq!(
            decide(&TeeFacts {
                tdx_interface: true,
                ..Default::default()
            }),
            Ok(Some(Tee::Tdx))
        );
        assert_eq!(
            decide(&TeeFacts {
                sev_guest_device: true,
                snp_interface: true,
                ..Default::default()
            }),
            Ok(Some(Tee::Snp))
        );
        assert_eq!(
            decide(&TeeFacts {
                snp_interface: true,
                ..Default::default()
            }),
            Ok(None)
        );
    }

    #[test]
    fn gathering_facts_on_this_machine_does_not_fail() {
        // Whatever this machine is, the facts read without panicking and decide something.
        let facts = TeeFacts::gather();
        let _ = decide(&facts);
    }

    #[test]
    fn sysfs_mrconfigid_raw_or_hex() {
        let raw: Vec<u8> = (0u8..48).collect();
        assert_eq!(sysfs_mrconfigid("p", &raw).unwrap().to_vec(), raw);
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n";
        assert_eq!(sysfs_mrconfigid("p", hex.as_bytes()).unwrap().to_vec(), raw);
        assert_eq!(
            sysfs_mrconfigid("p", b"zz"),
            Err(TeeError::BadSysfs {
                path: "p".into(),
                len: 2
            })
        );
        let bad_hex = "g".repeat(96);
        assert!(sysfs_mrconfigid("p", bad_hex.as_bytes()).is_err());
    }
}

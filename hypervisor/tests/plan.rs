//! Golden launch plans built from the reference's Init-Data vectors.

use std::path::PathBuf;

use coffer_hypervisor::{
    Accel, Error, HostCapabilities, HypervisorKind, LaunchPlan, Machine, Nic, Support, Tee,
    VmConfig, VmResources,
};
use coffer_initdata::Digest;

mod common;
use common::DIGEST_HEX;
const SNP_HOST_DATA_B64: &str = "xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeU=";
const TDX_MRCONFIGID_B64: &str = "xmlLt6KdbzfscqFVguAEufMUIVloLbhQmjBEB0GaSeUAAAAAAAAAAAAAAAAAAAAA";

fn digest() -> Digest {
    common::kata_digest()
}

fn config() -> VmConfig {
    let mut c = VmConfig {
        kernel: "/g/vmlinuz".into(),
        initrd: "/g/initrd.img".into(),
        ..VmConfig::default()
    };
    c.snp.cbitpos = Some(51);
    c
}

/// A host that can launch everything, except that its CPUID does not say where the C-bit is.
fn capable_host(kvm: bool) -> HostCapabilities {
    HostCapabilities {
        kvm: if kvm {
            Support::yes()
        } else {
            Support::no("slow")
        },
        tdx: Support::yes(),
        snp: Support::yes(),
        snp_cbitpos: None,
    }
}

fn resources() -> VmResources {
    VmResources::in_dir("/run/coffer/s1")
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Everything after the TEE-specific part: identical for every TEE.
fn common_tail(tee: &str, with_initdata: bool) -> Vec<String> {
    let mut cmdline = format!("console=ttyS0 panic=-1 quiet coffer.tee={tee}");
    if with_initdata {
        cmdline.push_str(&format!(" coffer.initdata_digest={DIGEST_HEX}"));
    }
    if tee == "none" {
        cmdline.push_str(
            " tsc=reliable no_timer_check noapictimer rcupdate.rcu_expedited=1 cryptomgr.notests \
             random.trust_cpu=on 8250.nr_uarts=1 i8042.direct=1 i8042.dumbkbd=1 i8042.nopnp=1 \
             i8042.noaux=1 pci=lastbus=0 noreplace-smp",
        );
        // TEE none is only ever emulated in these plans (capable_host(false)).
        cmdline.push_str(" page_reporting.page_reporting_order=7");
    }
    let mut v = words("-smp 1 -m 512M -kernel /g/vmlinuz -initrd /g/initrd.img -append");
    v.push(cmdline);
    v.extend(words(
        "-chardev socket,id=console,path=/run/coffer/s1/tty.sock,server=on,wait=off -serial chardev:console \
         -chardev socket,id=qmp,path=/run/coffer/s1/qmp.sock,server=on,wait=off \
         -mon chardev=qmp,mode=control \
         -device virtio-serial-pci,id=vser0 \
         -chardev socket,id=agent,path=/run/coffer/s1/agent.sock,server=on,wait=off \
         -device virtserialport,bus=vser0.0,chardev=agent,name=coffer.agent",
    ));
    if tee == "none" {
        v.extend(words(
            "-device virtio-balloon-pci,id=balloon0,free-page-reporting=on",
        ));
    }
    v.extend(words(
        "-fsdev local,id=share,path=/run/coffer/s1/share,security_model=none \
         -device virtio-9p-pci,fsdev=share,mount_tag=coffer",
    ));
    if with_initdata {
        v.extend(words(
            "-drive file=/run/coffer/s1/initdata.img,if=none,id=initdata,format=raw,readonly=on \
             -device virtio-blk-pci,drive=initdata,serial=initdata",
        ));
    }
    v
}

#[test]
fn snp_golden_argv() {
    let plan = LaunchPlan::build(
        &config(),
        Tee::Snp,
        &capable_host(false),
        Some(&digest()),
        &resources(),
    )
    .unwrap();
    let mut expected = words("-nodefaults -no-user-config -display none -no-reboot -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -S -object");
    expected.push(format!(
        "sev-snp-guest,id=snp0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000,host-data={SNP_HOST_DATA_B64}"
    ));
    expected.extend(words(
        "-machine q35,confidential-guest-support=snp0 -accel kvm -cpu EPYC-v4 \
         -bios /usr/share/ovmf/OVMF.amdsev.fd",
    ));
    expected.extend(common_tail("snp", true));
    assert_eq!(plan.program, PathBuf::from("qemu-system-x86_64"));
    assert_eq!(plan.args, expected);
}

#[test]
fn tdx_golden_argv() {
    let plan = LaunchPlan::build(
        &config(),
        Tee::Tdx,
        &capable_host(false),
        Some(&digest()),
        &resources(),
    )
    .unwrap();
    let mut expected = words("-nodefaults -no-user-config -display none -no-reboot -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -S -object");
    expected.push(format!("tdx-guest,id=tdx0,mrconfigid={TDX_MRCONFIGID_B64}"));
    expected.extend(words(
        "-machine q35,kernel-irqchip=split,confidential-guest-support=tdx0 -accel kvm -cpu host \
         -bios /usr/share/ovmf/OVMF.fd",
    ));
    expected.extend(common_tail("tdx", true));
    assert_eq!(plan.args, expected);
}

#[test]
fn tdx_with_a_quote_socket_uses_the_json_object_form() {
    let mut c = config();
    c.tdx.quote_generation_socket_port = Some(4050);
    let plan = LaunchPlan::build(
        &c,
        Tee::Tdx,
        &capable_host(false),
        Some(&digest()),
        &resources(),
    )
    .unwrap();
    let object: serde_json::Value = serde_json::from_str(&plan.args[9]).unwrap();
    assert_eq!(
        object,
        serde_json::json!({
            "qom-type": "tdx-guest",
            "id": "tdx0",
            "mrconfigid": TDX_MRCONFIGID_B64,
            "quote-generation-socket": {"type": "vsock", "cid": "2", "port": "4050"}
        })
    );
}

#[test]
fn none_golden_argv_with_and_without_initdata() {
    let host = capable_host(false);
    let plan =
        LaunchPlan::build(&config(), Tee::None, &host, Some(&digest()), &resources()).unwrap();
    let mut expected = words(
        "-nodefaults -no-user-config -display none -no-reboot -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -S -machine q35 -accel tcg,tb-size=48 -cpu max",
    );
    expected.extend(common_tail("none", true));
    assert_eq!(plan.args, expected);

    let plan = LaunchPlan::build(&config(), Tee::None, &host, None, &resources()).unwrap();
    let mut expected = words(
        "-nodefaults -no-user-config -display none -no-reboot -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -S -machine q35 -accel tcg,tb-size=48 -cpu max",
    );
    expected.extend(common_tail("none", false));
    assert_eq!(plan.args, expected);
}

#[test]
fn the_pods_nic_is_a_virtio_net_on_the_inherited_tap() {
    let host = capable_host(false);
    let mut res = resources();
    res.nic = Some(Nic {
        tap_fd: 17,
        mac: "0a:58:0a:58:00:05".into(),
    });
    let plan = LaunchPlan::build(&config(), Tee::None, &host, None, &res).unwrap();
    let at = plan.args.iter().position(|a| a == "-netdev").unwrap();
    assert_eq!(
        plan.args[at..at + 4],
        [
            "-netdev",
            "tap,id=net0,fd=3",
            "-device",
            "virtio-net-pci,netdev=net0,mac=0a:58:0a:58:00:05,romfile="
        ]
    );
    // The MAC lands in an option list: nothing else may pass.
    res.nic = Some(Nic {
        tap_fd: 17,
        mac: "0a:58:0a:58:00:05,romfile=/x".into(),
    });
    let e = LaunchPlan::build(&config(), Tee::None, &host, None, &res).unwrap_err();
    assert!(matches!(e, Error::BadMac(_)), "{e}");
}

/// The `coffer-qemu` handler's fast boot: an uncompressed kernel started by qboot through the
/// PVH entry point. The firmware is the configured one; without one QEMU uses its own.
#[test]
fn none_boots_through_the_configured_firmware() {
    let mut c = config();
    c.kernel = "/g/vmlinux".into();
    c.firmware = Some(coffer_hypervisor::config::QBOOT_FIRMWARE.into());
    let plan = LaunchPlan::build(&c, Tee::None, &capable_host(false), None, &resources()).unwrap();
    let line = plan.to_string();
    assert!(
        line.contains(
            " -cpu max -bios /usr/share/qemu/qboot.rom -smp 1 -m 512M -kernel /g/vmlinux "
        ),
        "{line}"
    );
    c.firmware = None;
    let plan = LaunchPlan::build(&c, Tee::None, &capable_host(false), None, &resources()).unwrap();
    assert!(!plan.args.iter().any(|a| a == "-bios"), "{plan}");
}

/// A microvm: the same devices on virtio-mmio, no ACPI (so no power button), and a kernel that
/// resets at once when its agent stops it.
#[test]
fn a_microvm_puts_every_device_on_virtio_mmio() {
    let mut c = config();
    c.machine = Machine::Microvm;
    let mut res = resources();
    res.nic = Some(Nic {
        tap_fd: 17,
        mac: "0a:58:0a:58:00:05".into(),
    });
    let host = capable_host(false);
    let plan = LaunchPlan::build(&c, Tee::None, &host, Some(&digest()), &res).unwrap();
    assert!(!plan.power_button);
    let pci = LaunchPlan::build(&config(), Tee::None, &host, Some(&digest()), &res).unwrap();
    assert!(pci.power_button);
    // Word for word the q35 plan, but for the machine, the devices' transport, the NIC's option
    // ROM (a PCI notion) and the reset. The devices go on the transports from the last one down,
    // skipping transport 3, whose interrupt (8) is the RTC's.
    let mut slots = [7, 6, 5, 4, 2].into_iter();
    let expected: Vec<String> = pci
        .args
        .iter()
        .map(|a| {
            if a == "q35" {
                "microvm,acpi=off,rtc=on".to_string()
            } else if a.starts_with("console=") {
                a.replace(
                    " page_reporting.",
                    &format!(
                        " {} page_reporting.",
                        coffer_hypervisor::plan::MICROVM_PARAMS
                    ),
                )
            } else if a.starts_with("virtio-") {
                let bus = format!("-device,bus=virtio-mmio-bus.{},", slots.next().unwrap());
                a.replace("-pci,", &bus).replace(",romfile=", "")
            } else {
                a.clone()
            }
        })
        .collect();
    assert_eq!(slots.next(), None, "five devices: {pci}");
    assert_eq!(plan.args, expected);
    assert!(
        plan.args.contains(
            &"virtio-net-device,bus=virtio-mmio-bus.4,netdev=net0,mac=0a:58:0a:58:00:05"
                .to_string()
        ),
        "{plan}"
    );
    assert!(!plan.to_string().contains("pci,"), "{plan}");

    // TDX and SNP guests run on q35 only.
    for tee in [Tee::Tdx, Tee::Snp] {
        let e = LaunchPlan::build(&c, tee, &host, Some(&digest()), &res).unwrap_err();
        assert!(
            e.to_string().contains("cannot run a") && e.to_string().contains("guests need q35"),
            "{e}"
        );
    }
}

#[test]
fn accel_follows_the_probe_and_the_configuration() {
    let accel_of = |c: &VmConfig, kvm: bool| {
        let plan = LaunchPlan::build(c, Tee::None, &capable_host(kvm), None, &resources()).unwrap();
        let i = plan.args.iter().position(|a| a == "-accel").unwrap();
        (plan.args[i + 1].clone(), plan.args[i + 3].clone())
    };
    let mut c = config();
    assert_eq!(accel_of(&c, true), ("kvm".into(), "host".into()));
    assert_eq!(accel_of(&c, false), ("tcg,tb-size=48".into(), "max".into()));
    c.accel = Accel::Tcg;
    assert_eq!(accel_of(&c, true), ("tcg,tb-size=48".into(), "max".into()));
    c.tcg_cache_mib = 32;
    assert_eq!(accel_of(&c, true), ("tcg,tb-size=32".into(), "max".into()));
    // 0 leaves the cache at QEMU's own default.
    c.tcg_cache_mib = 0;
    assert_eq!(accel_of(&c, true), ("tcg".into(), "max".into()));
    c.accel = Accel::Kvm;
    c.tcg_cache_mib = 32;
    assert_eq!(accel_of(&c, false), ("kvm".into(), "host".into()));
}

#[test]
fn huge_pages_and_fine_reporting_follow_the_accelerator() {
    // (huge pages, the balloon reports 512 KiB blocks)
    let memory = |c: &VmConfig, kvm: bool| {
        let plan = LaunchPlan::build(c, Tee::None, &capable_host(kvm), None, &resources()).unwrap();
        let i = plan.args.iter().position(|a| a == "-append").unwrap();
        let fine = plan.args[i + 1]
            .split(' ')
            .any(|p| p == "page_reporting.page_reporting_order=7");
        (plan.transparent_huge_pages, fine)
    };
    let mut c = config();
    assert_eq!(memory(&c, true), (true, false));
    assert_eq!(memory(&c, false), (false, true));
    c.accel = Accel::Tcg;
    assert_eq!(memory(&c, true), (false, true));
}

#[test]
fn a_tee_the_host_cannot_launch_is_refused_before_anything_starts() {
    let host = HostCapabilities {
        kvm: Support::no("slow"),
        tdx: Support::no("KVM cannot create TDX VMs (KVM_CAP_VM_TYPES is 0x1; TDX would be bit 5); kvm_intel is not loaded"),
        snp: Support::no("kvm_amd is not loaded"),
        snp_cbitpos: None,
    };
    let e =
        LaunchPlan::build(&config(), Tee::Tdx, &host, Some(&digest()), &resources()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "this host cannot launch TDX guests: KVM cannot create TDX VMs (KVM_CAP_VM_TYPES is 0x1; TDX would be bit 5); kvm_intel is not loaded"
    );
    let e = LaunchPlan::build(&config(), Tee::Snp, &host, None, &resources()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "this host cannot launch SNP guests: kvm_amd is not loaded"
    );
}

#[test]
fn confidential_guests_refuse_tcg() {
    let mut c = config();
    c.accel = Accel::Tcg;
    let e = LaunchPlan::build(&c, Tee::Snp, &capable_host(true), None, &resources()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "SNP guests run only on KVM, but the configuration says accel = \"tcg\"; set accel to \"auto\" or \"kvm\""
    );
}

#[test]
fn snp_without_a_cbitpos_says_how_to_set_it() {
    let mut c = config();
    c.snp.cbitpos = None;
    let e = LaunchPlan::build(&c, Tee::Snp, &capable_host(true), None, &resources()).unwrap_err();
    assert!(matches!(e, Error::UnknownCbitpos));
    assert!(e.to_string().contains("set `snp.cbitpos`"), "{e}");

    // The host's CPUID wins over the configuration.
    let mut host = capable_host(true);
    host.snp_cbitpos = Some(47);
    let plan = LaunchPlan::build(&c, Tee::Snp, &host, None, &resources()).unwrap();
    assert_eq!(
        plan.args[9],
        "sev-snp-guest,id=snp0,cbitpos=47,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000"
    );
}

#[test]
fn cloud_hypervisor_snp_takes_host_data_as_hex() {
    let mut c = config();
    c.hypervisor = HypervisorKind::CloudHypervisor;
    c.firmware = Some("/g/coffer.igvm".into());
    let plan = LaunchPlan::build(
        &c,
        Tee::Snp,
        &capable_host(true),
        Some(&digest()),
        &resources(),
    )
    .unwrap();
    assert_eq!(plan.program, PathBuf::from("cloud-hypervisor"));
    let mut expected = words("--platform sev_snp=on --igvm /g/coffer.igvm --host-data");
    expected.push(DIGEST_HEX.into());
    expected.extend(words(
        "--cpus boot=1 --memory size=512M --kernel /g/vmlinuz --initramfs /g/initrd.img --cmdline",
    ));
    expected.push(format!(
        "console=ttyS0 panic=-1 quiet coffer.tee=snp coffer.initdata_digest={DIGEST_HEX}"
    ));
    expected.extend(words(
        "--serial file=/run/coffer/s1/console.log --console off \
         --api-socket path=/run/coffer/s1/qmp.sock \
         --vsock cid=3,socket=/run/coffer/s1/agent.sock \
         --disk path=/run/coffer/s1/initdata.img,readonly=on,serial=initdata",
    ));
    assert_eq!(plan.args, expected);
    assert_eq!(plan.args[5].len(), 64);
}

#[test]
fn cloud_hypervisor_refuses_tdx_and_says_why() {
    let mut c = config();
    c.hypervisor = HypervisorKind::CloudHypervisor;
    let e = LaunchPlan::build(
        &c,
        Tee::Tdx,
        &capable_host(true),
        Some(&digest()),
        &resources(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("no option to set MRCONFIGID"), "{msg}");
    assert!(msg.contains("use hypervisor = \"qemu\" for TDX"), "{msg}");

    let e = LaunchPlan::build(&c, Tee::Snp, &capable_host(true), None, &resources()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "an SEV-SNP guest on Cloud Hypervisor needs an IGVM file; set `firmware` in the [vm] configuration"
    );
}

#[test]
fn paths_are_escaped_and_bounded() {
    let res = VmResources::in_dir("/tmp/a,b");
    let plan = LaunchPlan::build(
        &config(),
        Tee::None,
        &capable_host(false),
        Some(&digest()),
        &res,
    )
    .unwrap();
    assert!(plan.args.contains(
        &"file=/tmp/a,,b/initdata.img,if=none,id=initdata,format=raw,readonly=on".to_string()
    ));
    assert!(plan.args.contains(&"-kernel".to_string()));

    let long = VmResources::in_dir(format!("/run/{}", "x".repeat(100)));
    let e = LaunchPlan::build(&config(), Tee::None, &capable_host(false), None, &long).unwrap_err();
    assert!(e.to_string().starts_with("the agent socket path"), "{e}");
    assert!(
        e.to_string()
            .ends_with("over the 107 a unix socket allows; use a shorter state directory"),
        "{e}"
    );
}

#[test]
fn bound_initdata_needs_its_disk() {
    let mut res = resources();
    res.initdata_image = None;
    let e = LaunchPlan::build(
        &config(),
        Tee::None,
        &capable_host(false),
        Some(&digest()),
        &res,
    )
    .unwrap_err();
    assert!(matches!(e, Error::MissingInitDataImage));
}

#[test]
fn bad_sizes_are_refused() {
    let mut c = config();
    c.vcpus = 0;
    let e = LaunchPlan::build(&c, Tee::None, &capable_host(false), None, &resources()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid VM configuration: vcpus = 0 is out of range; use 1 to 255"
    );
    let mut c = config();
    c.memory_mib = 16;
    let e = LaunchPlan::build(&c, Tee::None, &capable_host(false), None, &resources()).unwrap_err();
    assert!(
        e.to_string().contains("memory_mib = 16 is too small"),
        "{e}"
    );
}

#[test]
fn prints_as_json_and_as_a_shell_line() {
    let plan = LaunchPlan::build(
        &config(),
        Tee::None,
        &capable_host(false),
        None,
        &resources(),
    )
    .unwrap();
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["program"], "qemu-system-x86_64");
    assert_eq!(json["args"].as_array().unwrap().len(), plan.args.len());
    assert_eq!(json["transparent_huge_pages"], false);
    assert_eq!(json["power_button"], true);
    assert_eq!(json.as_object().unwrap().len(), 4);

    let line = plan.to_string();
    assert!(line.starts_with("qemu-system-x86_64 -nodefaults -no-user-config -display none"));
    assert!(
        line.contains(&format!(
            " -append 'console=ttyS0 panic=-1 quiet coffer.tee=none {} {}' ",
            coffer_hypervisor::plan::FAST_BOOT_PARAMS,
            coffer_hypervisor::plan::TCG_REPORTING_PARAMS
        )),
        "{line}"
    );
}

#[test]
fn without_initdata_no_register_is_set_and_no_disk_is_attached() {
    let plan = LaunchPlan::build(
        &config(),
        Tee::Tdx,
        &capable_host(false),
        None,
        &resources(),
    )
    .unwrap();
    assert_eq!(plan.args[9], "tdx-guest,id=tdx0");
    assert!(!plan.args.iter().any(|a| a.contains("initdata")), "{plan}");
    let append = plan.args.iter().position(|a| a == "-append").unwrap();
    assert_eq!(
        plan.args[append + 1],
        "console=ttyS0 panic=-1 quiet coffer.tee=tdx"
    );
}

//! Does KVM really run guest code at hardware speed?
//!
//! Reaching `hlt` proves little: some hosts expose a /dev/kvm that emulates guests (a PVM-based
//! KVM runs a counted loop about a thousand times slower than hardware), and a Linux guest then
//! crawls through its decompressor for minutes. So the probe times a loop.
//!
//! The guest is one page of real-mode code: an outer loop of [`CHUNKS`] rounds, each a counted
//! `dec ecx; jnz` loop of [`CHUNK`] iterations followed by an `out` to a port, then `hlt`. The
//! `out` hands control back to us between rounds, so the probe stops as soon as the time spent
//! exceeds [`USABLE_LIMIT`] (the verdict is known then) and reports the whole loop's time scaled
//! from the part it ran: no signals or threads, and a slow host costs ~50 ms, not seconds.

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

/// Iterations of the inner loop per round.
pub const CHUNK: u32 = 10_000;
/// Rounds: the whole loop is `CHUNK * CHUNKS` iterations.
pub const CHUNKS: u32 = 100;
/// Total iterations of the calibrated loop.
pub const ITERATIONS: u64 = CHUNK as u64 * CHUNKS as u64;
/// Slowest run that still counts as hardware speed. Real KVM runs the loop in about a
/// millisecond; emulation takes a second or more. The margin absorbs a busy host.
pub const USABLE_LIMIT: Duration = Duration::from_millis(50);

/// Guest physical address of the code page.
const GUEST_ADDR: u64 = 0x1000;
/// Port the guest writes to between rounds.
const ROUND_PORT: u16 = 0x10;

/// The guest, at [`GUEST_ADDR`], in 16-bit real mode (`0x66` selects 32-bit operands):
///
/// ```text
/// 0x00  66 b9 imm32   outer: mov ecx, CHUNK
/// 0x06  66 49         inner: dec ecx
/// 0x08  75 fc                jnz inner
/// 0x0a  e6 10                out 0x10, al
/// 0x0c  66 4b                dec ebx          ; ebx = CHUNKS, set by the host
/// 0x0e  75 f0                jnz outer
/// 0x10  f4                   hlt
/// ```
fn guest_code() -> [u8; 17] {
    let c = CHUNK.to_le_bytes();
    [
        0x66, 0xb9, c[0], c[1], c[2], c[3], // mov ecx, CHUNK
        0x66, 0x49, // dec ecx
        0x75, 0xfc, // jnz -4
        0xe6, 0x10, // out 0x10, al
        0x66, 0x4b, // dec ebx
        0x75, 0xf0, // jnz -16
        0xf4, // hlt
    ]
}

/// What one run of the calibrated loop measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopTiming {
    /// Iterations executed before the guest halted or the probe gave up.
    pub iterations: u64,
    /// Wall-clock time from the first `KVM_RUN` to the last exit.
    pub elapsed: Duration,
    /// Whether the guest reached `hlt` (false: the probe stopped once past [`USABLE_LIMIT`]).
    pub completed: bool,
}

impl LoopTiming {
    /// `None` when the loop ran at hardware speed, else why KVM is unusable, in plain words.
    pub fn unusable_reason(&self) -> Option<String> {
        if self.completed && self.elapsed <= USABLE_LIMIT {
            return None;
        }
        let took = if self.completed || self.iterations == 0 {
            format!("took {} (", seconds(self.elapsed))
        } else {
            let whole = self.elapsed.as_secs_f64() * ITERATIONS as f64 / self.iterations as f64;
            format!(
                "would take {} ({} iterations took {}; ",
                seconds(Duration::from_secs_f64(whole)),
                self.iterations,
                seconds(self.elapsed)
            )
        };
        Some(format!(
            "KVM is unusable for guests here: a {ITERATIONS}-iteration loop {took}real KVM needs ~1 ms)"
        ))
    }
}

fn seconds(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// One anonymous, page-aligned mapping that backs the guest's memory.
struct GuestPage {
    ptr: *mut u8,
    len: usize,
}

impl GuestPage {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: an anonymous private mapping touches no existing memory; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "cannot map guest memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(GuestPage {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.len);
        // SAFETY: `ptr` is a live, writable mapping of `len` bytes and `n <= len`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr, n) };
    }
}

impl Drop for GuestPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, after the VM that used it is gone
        // (callers drop the VM first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Runs the calibrated loop once in a fresh VM and times it.
///
/// Errors say why the guest could not run at all (no VM, no vCPU, an unexpected exit).
pub fn measure(kvm: &Kvm) -> Result<LoopTiming, String> {
    let page_size = 4096;
    let mut page = GuestPage::new(page_size)?;
    page.write(&guest_code());

    let vm = kvm
        .create_vm()
        .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: page_size as u64,
        userspace_addr: page.ptr as u64,
        flags: 0,
    };
    // SAFETY: the region is the mapping above, which outlives `vm` (declared before it, so
    // dropped after it).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION failed: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU failed: {e}"))?;

    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS failed: {e}"))?;
    let mut regs = vcpu
        .get_regs()
        .map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
    regs.rip = GUEST_ADDR;
    regs.rbx = u64::from(CHUNKS);
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS failed: {e}"))?;

    let start = Instant::now();
    let mut rounds: u64 = 0;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(ROUND_PORT, _)) => {
                rounds += 1;
                if start.elapsed() > USABLE_LIMIT {
                    return Ok(LoopTiming {
                        iterations: rounds * u64::from(CHUNK),
                        elapsed: start.elapsed(),
                        completed: false,
                    });
                }
            }
            Ok(VcpuExit::Hlt) => {
                let elapsed = start.elapsed();
                return Ok(LoopTiming {
                    iterations: ITERATIONS,
                    elapsed,
                    completed: true,
                });
            }
            Ok(other) => return Err(format!("the test guest stopped with {other:?}")),
            // A signal for this thread interrupted KVM_RUN; the guest resumes where it was.
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(format!("KVM_RUN failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_code_jumps_land_on_instructions() {
        let code = guest_code();
        // jnz inner: rel8 counts from the next instruction (0x0a) back to 0x06.
        assert_eq!(0x0a + i32::from(i8::from_ne_bytes([code[9]])), 0x06);
        // jnz outer: from 0x10 back to 0x00.
        assert_eq!(0x10 + i32::from(i8::from_ne_bytes([code[15]])), 0x00);
        assert_eq!(code[16], 0xf4);
        assert_eq!(
            u32::from_le_bytes([code[2], code[3], code[4], code[5]]),
            CHUNK
        );
    }

    #[test]
    fn judges_by_speed_not_by_reaching_hlt() {
        let fast = LoopTiming {
            iterations: ITERATIONS,
            elapsed: Duration::from_micros(900),
            completed: true,
        };
        assert_eq!(fast.unusable_reason(), None);

        let slow = LoopTiming {
            iterations: ITERATIONS,
            elapsed: Duration::from_millis(1310),
            completed: true,
        };
        assert_eq!(
            slow.unusable_reason().unwrap(),
            "KVM is unusable for guests here: a 1000000-iteration loop took 1.31 s (real KVM needs ~1 ms)"
        );

        let borderline = LoopTiming {
            elapsed: Duration::from_millis(80),
            ..fast
        };
        assert!(borderline
            .unusable_reason()
            .unwrap()
            .contains("loop took 80 ms"));

        let stopped = LoopTiming {
            iterations: 40_000,
            elapsed: Duration::from_millis(52),
            completed: false,
        };
        assert_eq!(
            stopped.unusable_reason().unwrap(),
            "KVM is unusable for guests here: a 1000000-iteration loop would take 1.30 s \
             (40000 iterations took 52 ms; real KVM needs ~1 ms)"
        );
    }
}

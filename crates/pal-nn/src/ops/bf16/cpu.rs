//! Which bf16 product this CPU runs, found once: AMX (`tdpbf16ps` on 16x16 tiles) when the CPU
//! has it and the OS grants this process the tile state, else AVX512-BF16 (`vdpbf16ps`), else
//! AVX2 with FMA (bf16 widened to f32 in registers: no faster than f32 where arithmetic bounds
//! the product, but half the bytes where memory does, as in attention over a long LAL prefix),
//! else none. `PAL_BF16_KERNEL=amx|avx512|avx2|portable` picks a slower one (for tests and `pal
//! selftest`); a faster one than the CPU has is never used.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A bf16 product kernel (in the order of [`Bf16Kernel::ALL`]: its discriminant is its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bf16Kernel {
    /// Widened to f32 and multiplied there (any CPU): the reference the others are checked
    /// against, and the fallback.
    Portable,
    /// AVX2 and FMA (x86-64 CPUs since 2013-2015): bf16 widened to f32 in registers, f32
    /// fused multiply-adds.
    Avx2,
    /// AVX512-BF16 `vdpbf16ps` (Intel Cooper Lake and later, AMD Zen 4 and later).
    Avx512,
    /// AMX `tdpbf16ps` on tiles (Intel Sapphire Rapids and later).
    Amx,
}

impl Bf16Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Self; 4] = [Self::Portable, Self::Avx2, Self::Avx512, Self::Amx];

    /// Its name (`PAL_BF16_KERNEL`, `pal selftest`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512-bf16",
            Self::Amx => "amx",
        }
    }

    /// Whether this CPU (and OS) runs it.
    pub fn available(self) -> bool {
        self <= best()
    }
}

/// The fastest kernel this CPU runs (AMX only once the OS has granted the tile state).
pub fn best() -> Bf16Kernel {
    static BEST: OnceLock<Bf16Kernel> = OnceLock::new();
    *BEST.get_or_init(detect)
}

/// The kernel products use: [`best`], or a slower one named by `PAL_BF16_KERNEL` or set by
/// [`use_kernel`].
pub fn chosen() -> Bf16Kernel {
    match CHOSEN.load(Ordering::Relaxed) {
        UNSET => {
            let asked = std::env::var("PAL_BF16_KERNEL").ok();
            let named = asked.as_deref().and_then(|a| {
                Bf16Kernel::ALL
                    .into_iter()
                    .find(|k| k.name() == a || (a == "avx512" && *k == Bf16Kernel::Avx512))
            });
            let kernel = named.map_or(best(), |k| k.min(best()));
            CHOSEN.store(kernel as u8, Ordering::Relaxed);
            kernel
        }
        k => Bf16Kernel::ALL[k as usize],
    }
}

/// Makes every later product use `kernel` (or the best one this CPU has, when it has not that
/// one): `pal selftest` runs a training step on each kernel in turn.
pub fn use_kernel(kernel: Bf16Kernel) {
    CHOSEN.store(kernel.min(best()) as u8, Ordering::Relaxed);
}

const UNSET: u8 = u8::MAX;
static CHOSEN: AtomicU8 = AtomicU8::new(UNSET);

#[cfg(target_arch = "x86_64")]
fn detect() -> Bf16Kernel {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    let (leaf7, leaf7_1) = (__cpuid_count(7, 0), __cpuid_count(7, 1));
    let avx512_bf16 = (leaf7_1.eax >> 5) & 1 == 1
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw");
    let amx = (leaf7.edx >> 22) & 1 == 1 && (leaf7.edx >> 24) & 1 == 1;
    if amx && avx512_bf16 && grant_tile_state() {
        // The OS now saves the tile state for this process: XCR0 bits 17 (tile config) and 18
        // (tile data).
        // SAFETY: xgetbv with ECX = 0 is available wherever AVX is (checked above via avx512f).
        let xcr0 = unsafe { _xgetbv(0) };
        if xcr0 & (0b11 << 17) == 0b11 << 17 {
            return Bf16Kernel::Amx;
        }
    }
    if avx512_bf16 {
        Bf16Kernel::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        Bf16Kernel::Avx2
    } else {
        Bf16Kernel::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Bf16Kernel {
    Bf16Kernel::Portable
}

/// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); `false` where it is refused (an older kernel, a sandbox), and then
/// AMX is never used.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn grant_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn grant_tile_state() -> bool {
    false
}

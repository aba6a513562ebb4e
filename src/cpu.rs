//! The first thing `main` does: check that the CPU has the instruction-set extensions the
//! binary was compiled for. The workspace builds for x86-64-v3 (`.cargo/config.toml`); on
//! a CPU without AVX2 such a binary would otherwise die of an illegal instruction (signal
//! 4, exit status 132) wherever the compiler first used one, with no word of why.

/// Exits with status 2 and a message naming the missing extensions when the build uses
/// any this CPU lacks.
///
/// Asks CPUID itself: `is_x86_feature_detected!` answers `true` without asking for every
/// feature the build enables. The check must not use what it checks for, and the compiler
/// is free to use AVX anywhere in this crate: a table of the extensions was copied with a
/// 256-bit move, bit tests written inline were merged into vector shifts, and a shift by
/// a bit number became BMI2's `shrx`, each dying under `qemu-x86_64 -cpu Nehalem`. So each
/// extension is one call, with constant arguments, of a function that is never inlined
/// and does one CPUID and one test against a mask.
#[inline(never)]
pub fn exit_unless_supported() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut missing = false;
        // One extension: its `/proc/cpuinfo` name, its Rust target feature, and the CPUID
        // leaf, register and bit that report it (Intel SDM vol. 2A, CPUID).
        macro_rules! check {
            ($name:literal, $feature:literal, $leaf:literal, $register:ident, $bit:literal) => {
                note(
                    $name,
                    cfg!(target_feature = $feature),
                    $leaf,
                    Register::$register,
                    1 << $bit,
                    &mut missing,
                )
            };
        }
        // What x86-64-v2 added, which v3 implies.
        check!("ssse3", "ssse3", 1, Ecx, 9);
        check!("cx16", "cmpxchg16b", 1, Ecx, 13);
        check!("sse4_1", "sse4.1", 1, Ecx, 19);
        check!("sse4_2", "sse4.2", 1, Ecx, 20);
        check!("popcnt", "popcnt", 1, Ecx, 23);
        // v3 itself. AVX also needs the operating system to save its registers (OSXSAVE:
        // a kernel booted with `noxsave`, or a hypervisor, can leave it off on a CPU that
        // has AVX; whether the OS enabled the AVX state in XCR0 takes `_xgetbv`, which is
        // `unsafe`, so OSXSAVE is what is checked).
        check!("avx", "avx", 1, Ecx, 28);
        check!("osxsave", "avx", 1, Ecx, 27);
        check!("fma", "fma", 1, Ecx, 12);
        check!("movbe", "movbe", 1, Ecx, 22);
        check!("f16c", "f16c", 1, Ecx, 29);
        check!("bmi1", "bmi1", 7, Ebx, 3);
        check!("avx2", "avx2", 7, Ebx, 5);
        check!("bmi2", "bmi2", 7, Ebx, 8);
        check!("lzcnt", "lzcnt", 0x8000_0001, Ecx, 5);
        if missing {
            write_stderr(
                "\nrebuild it for this CPU with RUSTFLAGS=\"-C target-cpu=x86-64\" cargo build \
                 --release (slower training; docs/operations.md, \"Deploying\")\n",
            );
            std::process::exit(2);
        }
    }
}

/// The CPUID output register that holds a feature bit.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Register {
    Ebx,
    Ecx,
}

/// Names `extension` on stderr (after the message's start, the first time) when the build
/// uses it and the CPU lacks it.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn note(
    extension: &'static str,
    used: bool,
    leaf: u32,
    register: Register,
    mask: u32,
    missing: &mut bool,
) {
    if used && !present(leaf, register, mask) {
        if !*missing {
            write_stderr(
                "error: this binary was built for x86-64-v3 (.cargo/config.toml) and this CPU lacks:",
            );
        }
        write_stderr(" ");
        write_stderr(extension);
        *missing = true;
    }
}

/// Whether CPUID leaf `leaf` (sub-leaf 0) sets the bit `mask` selects in `register`; false
/// for a leaf past the highest this CPU reports. A mask, not a bit number: a shift by a
/// variable count compiles to BMI2's `shrx` under x86-64-v3.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn present(leaf: u32, register: Register, mask: u32) -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let highest = __cpuid(leaf & 0x8000_0000).eax;
    if leaf > highest {
        return false;
    }
    let r = __cpuid_count(leaf, 0);
    let value = match register {
        Register::Ebx => r.ebx,
        Register::Ecx => r.ecx,
    };
    value & mask != 0
}

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn write_stderr(text: &'static str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn cpuid_bits_agree_with_the_standard_library_on_features_the_build_leaves_off() {
        // `is_x86_feature_detected!` asks the CPU only for features the build does not
        // enable, so compare on some of those (none depends on the OS saving registers).
        use Register::{Ebx, Ecx};
        use std::arch::is_x86_feature_detected as detected;
        let pairs = [
            ("pclmulqdq", 1, Ecx, 1, detected!("pclmulqdq")),
            ("aes", 1, Ecx, 25, detected!("aes")),
            ("rdrand", 1, Ecx, 30, detected!("rdrand")),
            ("sha", 7, Ebx, 29, detected!("sha")),
            ("rdseed", 7, Ebx, 18, detected!("rdseed")),
            ("adx", 7, Ebx, 19, detected!("adx")),
        ];
        for (name, leaf, register, bit, detected) in pairs {
            assert_eq!(present(leaf, register, 1 << bit), detected, "{name}");
        }
    }

    #[test]
    fn a_leaf_past_the_highest_the_cpu_reports_has_no_features() {
        assert!(!present(0x7fff_ffff, Register::Ebx, u32::MAX));
        assert!(!present(0x8fff_ffff, Register::Ecx, u32::MAX));
    }
}

//! The first thing `main` does: check that the CPU has the instruction-set extensions the
//! binary was compiled for. The workspace builds for x86-64-v3 (`.cargo/config.toml`); on
//! a CPU without AVX2 such a binary would otherwise die of an illegal instruction (signal
//! 4, exit status 132) wherever the compiler first used one, with no word of why.

/// Exits with status 2 and a message naming the missing extensions when the build uses
/// any this CPU lacks.
///
/// Asks CPUID itself: `is_x86_feature_detected!` answers `true` without asking for every
/// feature the build enables. Kept to scalar integer code, calls with register arguments
/// and writes of static text, so that the check does not itself use what it checks for
/// (a table of the extensions, copied with a 256-bit move, did: `qemu-x86_64 -cpu
/// Nehalem` stopped on it).
#[inline(never)]
pub fn exit_unless_supported() {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // Leaf 1 ECX, leaf 7 EBX and leaf 0x8000_0001 ECX (Intel SDM vol. 2A, CPUID).
        let max_leaf = __cpuid(0).eax;
        let max_extended = __cpuid(0x8000_0000).eax;
        let leaf1 = __cpuid(1).ecx;
        let leaf7 = if max_leaf >= 7 {
            __cpuid_count(7, 0).ebx
        } else {
            0
        };
        let extended = if max_extended >= 0x8000_0001 {
            __cpuid(0x8000_0001).ecx
        } else {
            0
        };
        let bit = |register: u32, n: u32| (register >> n) & 1 == 1;
        let mut missing = false;
        note(
            "avx",
            cfg!(target_feature = "avx"),
            bit(leaf1, 28),
            &mut missing,
        );
        note(
            "fma",
            cfg!(target_feature = "fma"),
            bit(leaf1, 12),
            &mut missing,
        );
        note(
            "movbe",
            cfg!(target_feature = "movbe"),
            bit(leaf1, 22),
            &mut missing,
        );
        note(
            "f16c",
            cfg!(target_feature = "f16c"),
            bit(leaf1, 29),
            &mut missing,
        );
        note(
            "bmi1",
            cfg!(target_feature = "bmi1"),
            bit(leaf7, 3),
            &mut missing,
        );
        note(
            "avx2",
            cfg!(target_feature = "avx2"),
            bit(leaf7, 5),
            &mut missing,
        );
        note(
            "bmi2",
            cfg!(target_feature = "bmi2"),
            bit(leaf7, 8),
            &mut missing,
        );
        note(
            "lzcnt",
            cfg!(target_feature = "lzcnt"),
            bit(extended, 5),
            &mut missing,
        );
        if missing {
            write_stderr(
                "\nrebuild it for this CPU with RUSTFLAGS=\"-C target-cpu=x86-64\" cargo build \
                 --release (the same results, slower training; docs/operations.md, \"Deploying\")\n",
            );
            std::process::exit(2);
        }
    }
}

/// Names `extension` on stderr (after the message's start, the first time) when the build
/// uses it and the CPU lacks it.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn note(extension: &'static str, used: bool, present: bool, missing: &mut bool) {
    if used && !present {
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

#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn write_stderr(text: &'static str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}
